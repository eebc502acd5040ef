"""Speed and device memory of each ``ReconConfig.frame_storage`` (docs/benchmarks.md).

For each case (frame size, frames, storages, chunk sizes): simulate the scan
once on the GPU, then for each storage and each ``operators.CHUNK_PIXELS``
build a ``Reconstructor``, hand it the frames in 1024-frame chunks (its stacks
grow 1024 -> 2048 -> 4096 ...), free the memory pool, iterate ``WARM`` times,
time ``TIMED`` iterations (device-synchronised), and record

* frame-iterations/s and ms per iteration;
* the engine's device memory: the pool's bytes in use (live arrays) and held
  (its peak: blocks freed during the iterations stay cached) after the
  iterations, less the bytes in use before the engine was made (the simulated
  scan), per frame, beside ``memory_estimate``;
* the NRMSE as delivered after WARM + TIMED iterations (cases with NRMSE on);
* ``stage_profile`` over ``PROFILED`` more iterations.

Prints one JSON line per run and writes all of them to
``$OUT/frame-storage.json``. From the repository root on a GPU machine::

    PYTHONPATH=. python docs/gpu_frame_storage.py [SIZE:FRAMES:STORAGE,STORAGE[:CHUNK_PIXELS] ...]

(default: the cases of ``CASES``; NRMSE only for scans of up to 4096 frames).
"""

from __future__ import annotations

import json
import os
import sys
import time

import cupy as cp

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.engine import operators
from bluesky_ptycho.metrics import snapshot_nrmse
from bluesky_ptycho.sim.sample import default_config, simulate_scan
from bluesky_ptycho.tools.bench_engine import stage_profile

WARM, TIMED, PROFILED = 5, 20, 3
ADD_CHUNK = 1024
DEFAULT_CHUNK = operators.CHUNK_PIXELS
#: (frame size, frames, storages, chunk pixel counts, NRMSE after the timed iterations)
CASES = (
    (256, 4096, ("stacks", "farfields", "counts"), (DEFAULT_CHUNK,), True),
    (256, 4096, ("farfields", "counts"), (2**22, 2**23, 2**24), False),
    (128, 4096, ("stacks", "farfields"), (DEFAULT_CHUNK,), True),
    (512, 1024, ("stacks", "farfields"), (DEFAULT_CHUNK,), True),
    (256, 16384, ("farfields", "counts"), (DEFAULT_CHUNK,), False),
)


def sync() -> None:
    cp.cuda.Device().synchronize()


def one_run(scan, size, n, storage, chunk, with_nrmse) -> dict:
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    baseline = pool.used_bytes()  # the simulated scan
    operators.CHUNK_PIXELS = chunk
    rec = Reconstructor(scan.config.replace(frame_storage=storage), backend="cupy")
    for start in range(0, n, ADD_CHUNK):
        part = slice(start, min(start + ADD_CHUNK, n))
        rec.add_frames(scan.frames[part], scan.x_motor[part], scan.y_motor[part])
    sync()
    pool.free_all_blocks()
    rec.iterate(WARM)
    sync()
    started = time.perf_counter()
    rec.iterate(TIMED)
    sync()
    seconds = time.perf_counter() - started
    row = {
        "frame_size": size,
        "frames": n,
        "frame_storage": storage,
        "chunk_pixels": chunk,
        "ms_per_iteration": 1e3 * seconds / TIMED,
        "frame_iterations_per_s": n * TIMED / seconds,
        "scan_bytes": int(baseline),
        "engine_used_bytes": int(pool.used_bytes() - baseline),
        "engine_held_bytes": int(pool.total_bytes() - baseline),
        "memory_estimate_bytes": int(rec.memory_estimate(n)),
        "object_shape": list(rec.object.shape),
        "counts_dtype": str(rec._stores[0].counts.dtype),
    }
    row["used_mb_per_frame"] = row["engine_used_bytes"] / n / 1e6
    row["held_mb_per_frame"] = row["engine_held_bytes"] / n / 1e6
    if with_nrmse:
        row["nrmse_as_delivered"] = float(
            snapshot_nrmse(rec.snapshot(live=True), scan.sample.object, scan.sample.origin_m)
        )
        row["iterations"] = rec.iteration
    row["stages_ms"] = stage_profile(rec, PROFILED)
    del rec
    pool.free_all_blocks()
    operators.CHUNK_PIXELS = DEFAULT_CHUNK
    return row


def parse_case(text: str) -> tuple:
    size, n, storages, *chunk = text.split(":")
    chunks = (int(chunk[0]),) if chunk else (DEFAULT_CHUNK,)
    return int(size), int(n), tuple(storages.split(",")), chunks, int(n) <= 4096


def main() -> None:
    rows = []
    cases = [parse_case(text) for text in sys.argv[1:]] or CASES
    for size, n, storages, chunks, with_nrmse in cases:
        started = time.perf_counter()
        scan = simulate_scan(default_config(size), n, xp=cp)
        sync()
        print(f"# simulated {n} x {size}^2 in {time.perf_counter() - started:.1f} s", flush=True)
        for storage in storages:
            for chunk in chunks:
                row = one_run(scan, size, n, storage, chunk, with_nrmse)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "stages_ms"}), flush=True)
                print("#   stages", json.dumps(row["stages_ms"]), flush=True)
        del scan
        cp.get_default_memory_pool().free_all_blocks()
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "frame-storage.json"), "w") as handle:
            json.dump({"commit": os.environ.get("BLUESKY_PTYCHO_COMMIT"), "rows": rows}, handle,
                      indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
