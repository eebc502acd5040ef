"""Frame storage: compact counts with a fallback, reused buffers, and the memory estimate."""

from __future__ import annotations

import tracemalloc

import numpy as np

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.sim.sample import default_config, simulate_scan


def test_counts_stored_compactly_and_widened_when_they_do_not_fit():
    scan = simulate_scan(n_frames=40, seed=1)
    compact = Reconstructor(scan.config, backend="numpy")
    compact.add_frames(scan.frames, scan.x_motor, scan.y_motor)
    assert compact._stores[0].counts.dtype == np.uint16
    wide = Reconstructor(scan.config, backend="numpy")
    wide.add_frames(scan.frames[:20], scan.x_motor[:20], scan.y_motor[:20])
    bright = scan.frames[20:].astype(np.float64)
    bright[:, 0, 0] = 70_000  # above the compact range: the whole store widens
    wide.add_frames(bright, scan.x_motor[20:], scan.y_motor[20:])
    assert wide._stores[0].counts.dtype == np.float32
    stored = compact._stores[0].counts[:20].astype(np.float32)
    np.testing.assert_array_equal(wide._stores[0].counts[:20], stored)
    compact.iterate(3)
    reference = Reconstructor(scan.config, backend="numpy")
    reference.add_frames(scan.frames.astype(np.float64) + 0.0, scan.x_motor, scan.y_motor)
    store = reference._stores[0]
    store.counts = store.counts.astype(np.float32)  # the same data, stored wide
    reference.iterate(3)
    for name in ("object", "probe"):
        np.testing.assert_allclose(getattr(compact, name), getattr(reference, name), rtol=0, atol=0)


def test_memory_estimate_bounds_the_measured_peak():
    scan = simulate_scan(n_frames=120, seed=2)
    rec = Reconstructor(scan.config, backend="numpy")
    tracemalloc.start()
    try:
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
        rec.iterate(4)  # past probe_hold_iterations: the quadratic stack exists too
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = rec.memory_estimate(120)
    assert 0.5 * estimate <= peak <= estimate, (peak, estimate)
    per_frame = (rec.memory_estimate(240) - rec._stores[0].ops.workspace_bytes(240)) - (
        estimate - rec._stores[0].ops.workspace_bytes(120)
    )
    assert per_frame == 120 * 64 * 64 * (2 + 3 * 8)  # uint16 counts, a, b and c


def test_work_buffers_are_reused_between_iterations():
    scan = simulate_scan(n_frames=30, seed=3)
    rec = Reconstructor(scan.config, backend="numpy")
    rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
    rec.iterate(3)
    buffers = {name: id(buffer) for name, buffer in rec._stores[0].work._buffers.items()}
    rec.iterate(2)
    assert set(buffers) == {"linear", "quadratic"}
    assert {name: id(buffer) for name, buffer in rec._stores[0].work._buffers.items()} == buffers


def test_reserve_holds_a_declared_scan_without_regrowing():
    scan = simulate_scan(default_config(32), n_frames=90)
    rec = Reconstructor(scan.config, backend="numpy")
    rec.reserve(90)
    store = rec._stores[0]
    counts_buffer = store.counts
    for start in range(0, 90, 30):
        part = slice(start, start + 30)
        rec.add_frames(scan.frames[part], scan.x_motor[part], scan.y_motor[part])
    assert store.capacity == 90 and store.counts is counts_buffer


def test_callback_gpu_model_covers_the_engine_estimate():
    from bluesky_ptycho.callback.memory import estimate_bytes

    scan = simulate_scan(default_config(64), n_frames=400)
    rec = Reconstructor(scan.config.replace(saturation_counts=None), backend="numpy")
    rec.add_frames(scan.frames.astype(np.float32) + 0.5, scan.x_motor, scan.y_motor)  # wide counts
    assert rec._stores[0].counts.dtype == np.float32
    reserved = estimate_bytes(400, (64, 64), gpu=True, reserved=True)
    assert reserved >= rec.memory_estimate(400)
    fixed = estimate_bytes(0, (64, 64), gpu=True, reserved=True) - 31 * 64 * 64  # one frame
    growing = estimate_bytes(400, (64, 64), gpu=True)
    assert growing - fixed == 2 * (reserved - fixed)  # doubling stacks without num_points
