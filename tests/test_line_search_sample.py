"""The line search on a sample of the frames (``ReconConfig.line_search_frames``)."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.engine import poisson
from bluesky_ptycho.metrics import snapshot_nrmse
from bluesky_ptycho.sim.sample import (
    BEAMLINE_LIKE,
    HOT_PIXEL_COUNTS,
    default_config,
    simulate_scan,
)


@pytest.fixture(scope="module")
def beamline_scan():
    return simulate_scan(default_config(64), n_frames=256, seed=1, **BEAMLINE_LIKE)


def engine(scan, line_search_frames, **changes):
    config = scan.config.replace(line_search_frames=line_search_frames, **changes)
    rec = Reconstructor(config, backend="numpy")
    rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
    return rec


@pytest.mark.parametrize(
    ("n_frames", "limit", "stride"), [(60, 0, 1), (60, 60, 1), (60, 25, 3), (61, 20, 4)]
)
def test_the_sample_is_every_kth_frame_from_a_moving_offset(n_frames, limit, stride):
    scan = simulate_scan(n_frames=n_frames, seed=2)
    rec = engine(scan, limit)
    frame_passes = rec._passes[0]
    offsets = []
    for _ in range(stride + 1):
        rec.iterate(1)
        sample = frame_passes._sample
        assert sample.step == stride and sample.stop == n_frames
        assert len(range(*sample.indices(n_frames))) <= (limit or n_frames)
        offsets.append(sample.start)
    assert offsets == [*range(stride), 0]


def test_sampled_sums_are_the_sampled_frames_sums_scaled_to_all():
    scan = simulate_scan(n_frames=60, seed=3)
    rec = engine(scan, 25, dtype="complex128", frame_storage="counts")  # a made anew
    rec.iterate(4)  # past probe_hold_iterations: a probe direction too
    frame_passes, store = rec._passes[0], rec._stores[0]
    rng = np.random.default_rng(0)
    shape = rec.object.shape
    dobj = 1e-2 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    dprobe = 1e-2 * rec.probe[::-1, ::-1]
    frame_passes.gradient(probe_terms=True)  # as an iteration does: taps of this probe
    frame_passes.set_direction(dprobe, dobj)
    sample = frame_passes._sample
    assert sample.step == 3
    steps = poisson.sample_steps(0.5)
    got = frame_passes.line_search_sums(steps)
    ops = store.ops
    taps = ops.taps(rec.probe)
    linear, quadratic = ops.direction_farfields(taps, ops.taps(dprobe), rec.object, dobj, sample)
    farfield = ops.farfields(taps, rec.object, sample)
    want = ops.line_search_sums(farfield, linear, quadratic, store.counts[:60][sample], steps)
    np.testing.assert_allclose(got, want * 60 / 20, rtol=1e-10)


def test_quality_as_delivered_with_the_line_search_on_a_quarter_of_the_frames(beamline_scan):
    # beamline-like data (phase gradient, stopped defocused probe, spiral, low dose,
    # hot pixels): reading every fourth frame in the line search costs no quality
    scan = beamline_scan
    results = {}
    for limit in (0, 64):
        rec = engine(scan, limit, saturation_counts=HOT_PIXEL_COUNTS)
        rec.iterate(60)
        results[limit] = snapshot_nrmse(rec.snapshot(), scan.sample.object, scan.sample.origin_m)
        assert rec._passes[0]._sample.step == (4 if limit else 1)
    assert results[64] <= 0.04
    assert results[64] <= 1.1 * results[0]
