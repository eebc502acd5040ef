"""The phase-ramp convention's pieces: far-field centres, orientation of points, the prior."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.config import D4_ORIENTATIONS
from bluesky_ptycho.engine import gauge, smoothness
from bluesky_ptycho.engine.orientation import orient_frames, oriented_point
from bluesky_ptycho.sim.sample import default_config, make_probe, simulate_scan


def tilted_farfield(shift_px: float) -> np.ndarray:
    probe = make_probe(default_config(64), central_stop=0.35)
    tilt = np.exp(2j * np.pi * shift_px * np.arange(64)[None, :] / 64)
    return np.abs(np.fft.fft2(probe * tilt)) ** 2


@pytest.mark.parametrize("shift_px", [0.0, 0.25, 1.0, -2.0])
def test_disc_centre_follows_a_tilt(shift_px):
    centre = gauge.disc_centre(np, tilted_farfield(shift_px))
    assert centre[0] == pytest.approx(0.0, abs=1e-6)
    assert centre[1] == pytest.approx(shift_px, abs=0.05 + 0.1 * abs(shift_px))


def test_disc_centre_is_continuous_and_monotonic():
    centres = [gauge.disc_centre(np, tilted_farfield(s))[1] for s in np.linspace(0, 0.1, 6)]
    assert np.all(np.diff(centres) > 0)


def test_disc_centre_ignores_hot_and_masked_pixels():
    pattern = tilted_farfield(0.0)
    spoiled = pattern.copy()
    spoiled[5, 40] = 1e6 * pattern.max()  # hot pixel far from the disc
    spoiled[1, 1] = 0  # one masked pixel inside it
    assert np.allclose(gauge.disc_centre(np, spoiled), gauge.disc_centre(np, pattern), atol=0.01)


@pytest.mark.parametrize("name", D4_ORIENTATIONS)
def test_oriented_point_matches_orient_frames(name):
    frame = np.zeros((8, 8))
    frame[2, 5] = 1
    found = np.argwhere(orient_frames(frame, name) == 1)[0]
    assert np.allclose(oriented_point((2, 5), (8, 8), name), found)


def test_mean_phase_gradient_and_its_removal():
    rows, cols = np.mgrid[:40, :50]
    obj = np.exp(1j * (0.3 * rows - 0.2 * cols)) * (1 + 0.1 * np.sin(rows))
    weight = np.ones(obj.shape)
    assert np.allclose(
        gauge.mean_phase_gradient(np, obj, weight) * 2 * np.pi, [0.3, -0.2], atol=1e-3
    )
    flat = gauge.remove_mean_ramp(np, obj, weight)
    assert np.abs(gauge.mean_phase_gradient(np, flat, weight)).max() < 1e-6


def test_smoothness_gradient_is_the_derivative_of_its_energy():
    rng = np.random.default_rng(0)
    obj = rng.standard_normal((12, 9)) + 1j * rng.standard_normal((12, 9))
    direction = rng.standard_normal((12, 9)) + 1j * rng.standard_normal((12, 9))
    mu, t = 0.7, 1e-6
    # L'(0) = 2 Re <dR/dz*, d>
    forward = smoothness.energy(obj + t * direction, mu)
    backward = smoothness.energy(obj - t * direction, mu)
    numeric = (forward - backward) / (2 * t)
    analytic = 2 * np.vdot(smoothness.gradient(obj, mu), direction).real
    assert numeric == pytest.approx(analytic, rel=1e-6)
    # exactly quadratic: R(O + t d) = R(O) + t R'(0) + t^2 R(d)
    step = 0.3
    expected = (
        smoothness.energy(obj, mu) + step * analytic + step**2 * smoothness.energy(direction, mu)
    )
    assert smoothness.energy(obj + step * direction, mu) == pytest.approx(expected, rel=1e-9)


def test_smoothness_prior_smooths_and_still_converges():
    from bluesky_ptycho import Reconstructor
    from bluesky_ptycho.metrics import snapshot_nrmse

    scan = simulate_scan(default_config(32), n_frames=80, seed=0, photons_per_frame=2e4)
    results = {}
    for weight in (0.0, 0.05):
        config = scan.config.replace(probe=scan.sample.probe, object_smoothness=weight)
        rec = Reconstructor(config, backend="numpy")
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
        nll = [rec.iterate(1) for _ in range(25)]
        snap = rec.snapshot(live=False)
        covered = snap.coverage >= 0.1
        roughness = smoothness.energy(np.where(covered, snap.object, 0), 1.0)
        error = snapshot_nrmse(snap, scan.sample.object, scan.sample.origin_m)
        results[weight] = (roughness, error)
        assert nll[-1] < nll[0]
    assert results[0.05][0] < results[0.0][0]
    assert results[0.05][1] <= 0.2


def test_config_validates_the_new_fields():
    base = default_config(16)
    assert base.replace(beam_center_px=[8, 7.5]).beam_center_px == (8.0, 7.5)
    assert base.replace(beam_center_px="data").beam_center_px == "data"
    for bad in ((8,), (8, 20), ("8", 8), (True, 8), "centre"):
        with pytest.raises(ValueError, match="beam_center_px"):
            base.replace(beam_center_px=bad)
    for bad in (-1.0, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="object_smoothness"):
            base.replace(object_smoothness=bad)
    with pytest.raises(ValueError, match="remove_object_ramp"):
        base.replace(remove_object_ramp=1)
