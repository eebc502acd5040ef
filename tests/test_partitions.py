"""Frames partitioned by position stripes, with sums and copies across partitions.

On NumPy the partitions live on the host and the collectives are copies (the
stand-in for NCCL in CI); the GPU tests run the same algorithm over CuPy
devices (one GPU named twice: copies; distinct GPUs: NCCL).
"""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.engine import collectives, frames
from bluesky_ptycho.engine.backend import cupy_device_available
from bluesky_ptycho.engine.reconstructor import REBALANCE_RATIO
from bluesky_ptycho.metrics import snapshot_nrmse
from bluesky_ptycho.sim.sample import BEAMLINE_LIKE, HOT_PIXEL_COUNTS, default_config, simulate_scan

#: iterations compared with the single partition: the engine amplifies rounding
#: (~10x an iteration), so the comparison stops before that reaches its tolerance
ITERATIONS = 6


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(default_config(32), n_frames=120, seed=3, **BEAMLINE_LIKE)


def config_of(scan, dtype="complex128", frame_storage="farfields"):
    return scan.config.replace(
        saturation_counts=HOT_PIXEL_COUNTS, probe_propagation_m=BEAMLINE_LIKE["defocus_m"],
        dtype=dtype, frame_storage=frame_storage,
    )  # fmt: skip


def reconstruct(scan, batches=1, iterations=ITERATIONS, **options):
    config = config_of(
        scan, options.pop("dtype", "complex128"), options.pop("frame_storage", "farfields")
    )
    rec = Reconstructor(config, **options)
    for part in np.array_split(np.arange(len(scan.frames)), batches):
        rec.add_frames(scan.frames[part], scan.x_motor[part], scan.y_motor[part])
        rec.iterate(iterations // batches)
    return rec


def relative_difference(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("storage", ["farfields", "counts", "stacks"])
@pytest.mark.parametrize("batches", [1, 3])
def test_partitions_give_the_single_partition_result(scan, batches, storage):
    single = reconstruct(scan, batches, backend="numpy", frame_storage=storage)
    single = single.snapshot(live=False)
    split = reconstruct(scan, batches, backend="numpy", partitions=3, frame_storage=storage)
    assert [store.n for store in split._stores] != [len(scan.frames), 0, 0]
    assert all(store.n > 0 for store in split._stores)
    snap = split.snapshot(live=False)
    # only the order of floating-point sums differs (complex128), amplified ~10x an
    # iteration: 1.5e-10 after 6 iterations (farfields, counts). With stacks a line-search
    # sample's slope at the 5th iteration lies within rounding of zero, so the two runs
    # bracket the minimum differently and the Hermite roots differ by 1e-9: 1.35e-9 after
    # 6. A partitioning error (a frame counted twice) gives 0.19.
    assert relative_difference(snap.object, single.object) < 1e-8
    assert relative_difference(snap.probe, single.probe) < 1e-8
    assert snap.metrics["poisson_nll"] == pytest.approx(single.metrics["poisson_nll"], rel=1e-10)


def test_each_partition_holds_a_compact_stripe_of_a_balanced_share(scan):
    # a spiral handed over in three parts grows past the stripes the first part drew
    rec = reconstruct(scan, batches=3, iterations=0, backend="numpy", partitions=3)
    rows = [store.positions_px[: store.n, 0] for store in rec._stores]
    loads = [len(r) for r in rows]
    assert sum(loads) == len(scan.frames)
    assert max(loads) <= REBALANCE_RATIO * len(scan.frames) / 3
    edges = rec._stripe_edges
    assert len(edges) == 2
    for index, stripe in enumerate(rows):
        low = -np.inf if index == 0 else edges[index - 1]
        high = np.inf if index == len(rows) - 1 else edges[index]
        assert ((stripe >= low) & (stripe < high)).all()


def test_a_partition_without_frames_contributes_nothing(scan):
    # two frames over four partitions: two partitions stay empty while they iterate
    recs = [Reconstructor(config_of(scan), backend="numpy", partitions=k) for k in (4, 1)]
    empty = []
    for rec in recs:
        for part in (slice(0, 2), slice(2, 40)):
            rec.add_frames(scan.frames[part], scan.x_motor[part], scan.y_motor[part])
            empty.append(min(store.n for store in rec._stores))
            rec.iterate(ITERATIONS // 2)
    assert empty[0] == 0 and empty[1] > 0  # and then frames are spread over all four
    assert relative_difference(recs[0].object, recs[1].object) < 1e-9


def test_quality_as_delivered_with_partitions(scan):
    rec = reconstruct(scan, iterations=60, backend="numpy", partitions=2, dtype="complex64")
    truth = (scan.sample.object, scan.sample.origin_m)
    assert snapshot_nrmse(rec.snapshot(), *truth) <= 0.10


def test_stripes_and_routing():
    rows = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0])
    edges = frames.stripe_edges(rows, 3)
    parts = frames.route(rows, edges)
    assert np.bincount(parts).tolist() == [2, 2, 2]
    assert (np.sort(rows[parts == 0]) == [1.0, 2.0]).all()
    assert frames.stripe_edges(rows, 1).size == 0


def test_bad_partition_settings_are_refused(scan):
    with pytest.raises(ValueError, match="partitions must be an integer >= 1"):
        Reconstructor(config_of(scan), backend="numpy", partitions=0)
    with pytest.raises(ValueError, match="gpus=\\[...\\] needs backend='cupy'"):
        Reconstructor(config_of(scan), backend="numpy", gpus=[0])
    with pytest.raises(ValueError, match="collectives: expected one of"):
        Reconstructor(config_of(scan), backend="numpy", partitions=2, collectives="mpi")


def test_nccl_keeps_nvlink_multicast_off():
    assert collectives.NCCL_ENVIRONMENT == {"NCCL_NVLS_ENABLE": "0"}


# ----------------------------------------------------------------------- GPU
gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cupy_device_available(), reason="needs CuPy and a CUDA device"),
]


def device_count() -> int:
    import cupy

    return cupy.cuda.runtime.getDeviceCount()


@pytest.mark.parametrize(
    "gpus",
    [
        pytest.param([0], marks=gpu),
        pytest.param([0, 0], marks=gpu),
        pytest.param(
            [0, 1],
            marks=[
                *gpu,
                pytest.mark.skipif(
                    not cupy_device_available() or device_count() < 2, reason="needs 2 GPUs"
                ),
            ],
        ),
    ],
)
def test_gpus_give_the_single_gpu_result(scan, gpus):
    single = reconstruct(scan, 1, 2, backend="cupy", dtype="complex64").snapshot(live=False)
    split = reconstruct(scan, 1, 2, backend="cupy", gpus=gpus, dtype="complex64")
    kinds = {"[0]": "CopyCollectives", "[0, 0]": "CopyCollectives", "[0, 1]": "NcclCollectives"}
    assert type(split._collectives).__name__ == kinds[str(gpus)]
    snap = split.snapshot(live=False)
    # float32: sums in another order (the 2-iteration NumPy/CuPy check allows 1e-3)
    assert relative_difference(snap.object, single.object) < 1e-3
    assert relative_difference(snap.probe, single.probe) < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_device_available(), reason="needs CuPy and a CUDA device")
def test_nccl_on_one_gpu_matches_copies(scan):
    nccl = reconstruct(scan, 1, 2, backend="cupy", gpus=[0], collectives="nccl", dtype="complex64")
    copies = reconstruct(scan, 1, 2, backend="cupy", gpus=[0], dtype="complex64")
    assert type(nccl._collectives).__name__ == "NcclCollectives"
    got, want = (rec.snapshot(live=False).object for rec in (nccl, copies))
    # a one-GPU reduce adds nothing, but the scatter's float atomics make no two GPU
    # runs bitwise equal: the same tolerance as for other float32 paths
    assert relative_difference(got, want) < 1e-3
