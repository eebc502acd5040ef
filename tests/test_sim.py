"""The simulation: batched frames, detector orientation, geometry errors."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.engine.orientation import inverse_orientation, orient_frames
from bluesky_ptycho.sim.sample import (
    SimulatedSample,
    default_config,
    make_probe,
    scan_positions,
    simulate_scan,
)


def small_sample(**changes):
    config = default_config(16, **changes)
    x_m, y_m = scan_positions(config, 9)
    extent = 2 * float(max(np.abs(x_m).max(), np.abs(y_m).max()))
    sample = SimulatedSample.create(config, extent, 1e5, seed=3)
    scale = config.position_scale_m
    return sample, x_m / (scale * config.x_direction), y_m / (scale * config.y_direction)


@pytest.mark.parametrize("changes", [{}, {"x_direction": -1, "position_scale_m": 1e-3}])
def test_batched_intensities_match_single_patterns(changes):
    sample, x_motor, y_motor = small_sample(**changes)
    batched = sample.expected_intensities(x_motor, y_motor)
    pairs = zip(x_motor, y_motor, strict=True)
    single = np.stack([sample.expected_intensity(x, y) for x, y in pairs])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-9 * single.max())
    # photons: the unitary FFT keeps the exit-wave power (|O| <= 1 lowers it)
    assert 0.2e5 < batched.sum(axis=(1, 2)).mean() <= 1e5


def test_frames_are_recorded_in_detector_orientation():
    sample, x_motor, y_motor = small_sample()
    plain = sample.frames(x_motor, y_motor, rng=5)
    assert plain.dtype == np.uint32 and plain.shape == (9, 16, 16)
    turned_sample, _, _ = small_sample(dp_orient="rot90_cw")
    turned = turned_sample.frames(x_motor, y_motor, rng=5)
    np.testing.assert_array_equal(turned, orient_frames(plain, inverse_orientation("rot90_cw")))


def test_positions_outside_the_sample_are_an_error():
    sample, x_motor, y_motor = small_sample()
    with pytest.raises(ValueError, match="outside the simulated sample"):
        sample.expected_intensities(x_motor + 1e6, y_motor)


def test_probe_has_the_same_physical_size_at_every_frame_size():
    widths = []
    for size in (64, 128):
        config = default_config(size)
        power = np.abs(make_probe(config)) ** 2
        rows = np.arange(size)[:, None] - size // 2
        rms_px = np.sqrt((power * rows**2).sum() / power.sum())
        widths.append(rms_px * config.object_pixel_m[0])
    assert widths[1] == pytest.approx(widths[0], rel=0.05)


def test_unknown_scan_is_rejected():
    with pytest.raises(ValueError, match="scan"):
        simulate_scan(default_config(16), n_frames=4, scan="zigzag")
