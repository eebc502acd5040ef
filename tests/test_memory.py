"""Frame storage: compact counts with a fallback, reused buffers, and the memory estimate."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

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


#: per storage: complex stacks kept per frame, and the work buffers an iteration reuses
#: (``"sampled"``: the far fields of the line-search sample)
STORAGE_CASES = {
    "stacks": (3, {"linear", "quadratic"}),
    "farfields": (0, {"b", "c", "sampled"}),
    "counts": (0, {"a", "b", "c"}),
}


@pytest.mark.parametrize("storage", sorted(STORAGE_CASES))
@pytest.mark.parametrize("line_search_frames", [0, 25])
def test_memory_estimate_bounds_the_measured_peak(storage, line_search_frames):
    scan = simulate_scan(n_frames=120, seed=2)
    config = scan.config.replace(frame_storage=storage, line_search_frames=line_search_frames)
    rec = Reconstructor(config, backend="numpy")
    tracemalloc.start()
    try:
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
        rec.iterate(4)  # past probe_hold_iterations: the quadratic stack exists too
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = rec.memory_estimate(120)
    assert 0.5 * estimate <= peak <= estimate, (peak, estimate)
    store = rec._stores[0]
    stacks, _ = STORAGE_CASES[storage]
    assert store.farfield.shape[0] == (store.capacity if stacks else 0)
    sampled = store.work._buffers.get("sampled")
    if storage == "farfields":  # the sample's far fields only: every 5th frame of 120
        assert sampled.shape[0] == (24 if line_search_frames else store.capacity)
    else:
        assert sampled is None
    per_frame = rec.memory_estimate(20_000) - rec.memory_estimate(10_000)  # chunks are full
    sample_bytes = 8 * 64 * 64 if storage == "farfields" and not line_search_frames else 0
    assert per_frame == 10_000 * (64 * 64 * (2 + stacks * 8) + sample_bytes)


@pytest.mark.parametrize("storage", sorted(STORAGE_CASES))
def test_work_buffers_are_reused_between_iterations(storage):
    scan = simulate_scan(n_frames=30, seed=3)
    rec = Reconstructor(scan.config.replace(frame_storage=storage), backend="numpy")
    rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
    rec.iterate(3)
    buffers = {name: id(buffer) for name, buffer in rec._stores[0].work._buffers.items()}
    rec.iterate(2)
    assert set(buffers) == STORAGE_CASES[storage][1]
    assert {name: id(buffer) for name, buffer in rec._stores[0].work._buffers.items()} == buffers


@pytest.mark.parametrize(("parts", "line_search_frames"), [(1, 0), (3, 0), (1, 25), (3, 13)])
def test_every_storage_reconstructs_the_same(parts, line_search_frames):
    """The storages differ in what they keep, not in what they compute (in double
    precision: in single, rounding moves a conjugate-gradient path within a few
    iterations); also when frames join between iterations, where the stored far
    fields take the last step before new frames grow their stacks (``"stacks"``),
    and with the line search on every k-th frame (views of the stored stacks with
    ``"stacks"``, chunks made of those frames alone otherwise)."""
    scan = simulate_scan(n_frames=60, seed=4)
    config = scan.config.replace(dtype="complex128", line_search_frames=line_search_frames)
    results = {}
    for storage in STORAGE_CASES:
        rec = Reconstructor(config.replace(frame_storage=storage), backend="numpy")
        for part in np.array_split(np.arange(60), parts):
            rec.add_frames(scan.frames[part], scan.x_motor[part], scan.y_motor[part])
            rec.iterate(6 // parts + 1)  # past probe_hold_iterations: probe terms included
        results[storage] = rec.object, rec.probe, [h["step"] for h in rec._history]
    reference_obj, reference_probe, reference_steps = results["stacks"]
    for storage, (obj, probe, steps) in results.items():
        assert np.abs(obj - reference_obj).max() <= 1e-7 * np.abs(reference_obj).max(), storage
        assert np.abs(probe - reference_probe).max() <= 1e-7 * np.abs(reference_probe).max()
        np.testing.assert_allclose(steps, reference_steps, rtol=1e-7, err_msg=storage)
    assert len(set(np.round(reference_steps, 9))) == len(reference_steps)  # steps varied


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


@pytest.mark.parametrize("storage", sorted(STORAGE_CASES))
def test_callback_gpu_model_covers_the_engine_estimate(storage):
    import math

    from bluesky_ptycho.callback import memory

    scan = simulate_scan(default_config(64), n_frames=400)
    config = scan.config.replace(saturation_counts=None, frame_storage=storage)
    rec = Reconstructor(config, backend="numpy")
    rec.add_frames(scan.frames.astype(np.float32) + 0.5, scan.x_motor, scan.y_motor)  # wide counts
    assert rec._stores[0].counts.dtype == np.float32
    model = memory.MemoryModel(gpu=True, reserved=True, storage=storage)
    reserved = model.estimate_bytes(400, (64, 64))
    assert reserved >= rec.memory_estimate(400)
    per_pixel = memory.gpu_bytes_per_pixel("complex64", storage)
    one_frame = math.ceil((1 + memory.GPU_MARGIN) * per_pixel)
    fixed = model.estimate_bytes(0, (64, 64)) - one_frame * 64 * 64
    growing = memory.MemoryModel(gpu=True, storage=storage).estimate_bytes(400, (64, 64))
    assert growing - fixed == 2 * (reserved - fixed)  # doubling stacks without num_points


def test_compact_storage_works_in_smaller_chunks_to_the_same_result(monkeypatch):
    """``"counts"`` chunks hold at most ``passes.CHUNK_PIXELS["counts"]`` pixels (its
    chunk stacks stay that small) and compute what whole-stack chunks compute."""
    from bluesky_ptycho.engine import passes

    scan = simulate_scan(n_frames=40, seed=5)
    config = scan.config.replace(dtype="complex128", frame_storage="counts")
    results = {}
    for frames_a_chunk in (None, 6):
        if frames_a_chunk is not None:
            monkeypatch.setitem(passes.CHUNK_PIXELS, "counts", frames_a_chunk * 64 * 64)
        rec = Reconstructor(config, backend="numpy")
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
        rec.iterate(4)
        results[frames_a_chunk] = rec
    whole, chunked = results[None], results[6]
    assert {b.shape[0] for b in chunked._stores[0].work._buffers.values()} == {6}
    assert {b.shape[0] for b in whole._stores[0].work._buffers.values()} == {40}
    assert np.abs(chunked.object - whole.object).max() <= 1e-9 * np.abs(whole.object).max()
    assert np.abs(chunked.probe - whole.probe).max() <= 1e-9 * np.abs(whole.probe).max()
    chunk_bytes = 3 * 16 * 64 * 64  # the three chunk stacks, complex128
    assert whole.memory_estimate(40) - chunked.memory_estimate(40) >= (40 - 6) * chunk_bytes


def test_frames_added_in_parts_as_in_one_batch(monkeypatch):
    """add_frames preprocesses a large batch in parts of ``ADD_CHUNK_PIXELS``: the
    engine ends up with the same frames, pattern statistics and iterates."""
    from bluesky_ptycho.engine import reconstructor

    scan = simulate_scan(n_frames=50, seed=6, hot_pixels=3)
    config = scan.config.replace(dtype="complex128", saturation_counts=1e5)  # the hot pixels
    results = []
    for part_frames in (None, 7):
        if part_frames is not None:
            monkeypatch.setattr(reconstructor, "ADD_CHUNK_PIXELS", part_frames * 64 * 64)
        rec = Reconstructor(config, backend="numpy")
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
        rec.iterate(3)
        results.append(rec)
    one, parts = results
    store_one, store_parts = one._stores[0], parts._stores[0]
    np.testing.assert_array_equal(store_parts.counts[:50], store_one.counts[:50])
    np.testing.assert_array_equal(store_parts.positions_px[:50], store_one.positions_px[:50])
    assert parts._excluded_pixels == one._excluded_pixels > 0
    np.testing.assert_allclose(parts._photons_per_frame, one._photons_per_frame, rtol=1e-12)
    np.testing.assert_allclose(parts.object, one.object, rtol=1e-9, atol=1e-12)


def test_a_step_left_pending_is_taken_before_a_new_direction():
    """With ``"stacks"`` the stored far fields take the line search's step in the next
    gradient pass; a direction set before that pass takes it first, so they stay
    ``FFT(P_j O_j)`` of the updated object and probe."""
    scan = simulate_scan(n_frames=30, seed=3)
    config = scan.config.replace(frame_storage="stacks", dtype="complex128")
    rec = Reconstructor(config, backend="numpy")
    rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
    rec.iterate(4)
    frame_passes, store = rec._passes[0], rec._stores[0]
    assert frame_passes._pending_step is not None
    frame_passes.set_direction(None, np.zeros_like(rec.object))
    want = store.ops.farfields(store.ops.taps(rec.probe), rec.object, slice(0, store.n))
    assert np.abs(store.farfield[: store.n] - want).max() <= 1e-9 * np.abs(want).max()
