"""Where the engine's device memory peaks during an iteration (docs/benchmarks.md).

For each case ``SIZE:FRAMES:STORAGE``: simulate the scan on the GPU, add it in
1024-frame chunks, free the memory pool, then run ``ITERATIONS`` iterations and
a live snapshot under a counting allocator (CuPy's pool, wrapped): it records
the bytes in use at every allocation and, at each new maximum, the
``bluesky_ptycho`` lines that asked for it. A second pass stops at that maximum
and lists the arrays alive there (object-sized ones by shape). Printed per
case, as MB a frame less the simulated scan: in use after the iterations, the
true peak in use, what the pool holds (the figure of ``gpu_frame_storage.py``),
and the peak's place. JSON to ``$OUT/memory-peak.json``. On a GPU machine::

    PYTHONPATH=. python docs/gpu_memory_peak.py [SIZE:FRAMES:STORAGE ...]
"""

from __future__ import annotations

import collections
import gc
import json
import os
import sys
import traceback

import cupy as cp

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.sim.sample import default_config, simulate_scan

ITERATIONS = 4
ADD_CHUNK = 1024
CASES = ("256:4096:counts", "256:16384:counts", "256:4096:farfields")


class CountingAllocator:
    """The default pool's ``malloc``, recording the peak in use and who asked for it."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.pool = cp.get_default_memory_pool()
        self.peak = 0
        self.where: list[str] = []
        self.sites: dict[str, int] = {}  # the innermost engine line -> most bytes in use there
        self.stop_at = stop_at
        self.alive_at_peak: list[dict] | None = None

    def __call__(self, size: int):
        memory = self.pool.malloc(size)
        used = self.pool.used_bytes()
        if used > 0.8 * self.peak:
            where = [
                f"{f.filename.split('bluesky_ptycho/')[-1]}:{f.lineno} {f.name}: {f.line}"
                for f in traceback.extract_stack()[:-1]
                if "bluesky_ptycho" in f.filename
            ][-4:]
            site = where[-1] if where else "-"
            self.sites[site] = max(self.sites.get(site, 0), used)
            if used > self.peak:
                self.peak, self.where = used, where
        if self.stop_at is not None and self.alive_at_peak is None and used >= self.stop_at:
            self.alive_at_peak = alive_arrays()
        return memory


def alive_arrays() -> list[dict]:
    """CuPy arrays owning their memory, grouped by (shape, dtype), largest first."""
    groups: dict[tuple, list[int]] = collections.defaultdict(list)
    seen = set()
    for item in gc.get_objects():
        if not isinstance(item, cp.ndarray) or item.base is not None or item.size == 0:
            continue
        if getattr(item, "data", None) is None:  # an array being made in this malloc
            continue
        if item.data.ptr not in seen:
            seen.add(item.data.ptr)
            groups[(tuple(item.shape), str(item.dtype))].append(item.nbytes)
    rows = [
        {"shape": list(shape), "dtype": dtype, "count": len(sizes), "MB": sum(sizes) / 1e6}
        for (shape, dtype), sizes in groups.items()
    ]
    return sorted(rows, key=lambda row: -row["MB"])[:14]


def engine(scan, storage: str, n: int) -> Reconstructor:
    rec = Reconstructor(scan.config.replace(frame_storage=storage), backend="cupy")
    for start in range(0, n, ADD_CHUNK):
        part = slice(start, min(start + ADD_CHUNK, n))
        rec.add_frames(scan.frames[part], scan.x_motor[part], scan.y_motor[part])
    rec.iterate(1)  # kernels compiled, probe made, plans cached
    cp.cuda.Device().synchronize()
    return rec


def measure(scan, storage: str, n: int, stop_at: int | None) -> tuple[CountingAllocator, dict]:
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    baseline = pool.used_bytes()
    rec = engine(scan, storage, n)
    pool.free_all_blocks()
    counter = CountingAllocator(None if stop_at is None else baseline + stop_at)
    counter.peak = pool.used_bytes()
    cp.cuda.set_allocator(counter)
    try:
        rec.iterate(ITERATIONS)
        rec.snapshot(live=True)
        cp.cuda.Device().synchronize()
    finally:
        cp.cuda.set_allocator(pool.malloc)
    mb = 1e6 * n
    row = {
        "frames": n,
        "frame_storage": storage,
        "canvas": list(rec.object.shape),
        "in_use_MB_per_frame": (pool.used_bytes() - baseline) / mb,
        "peak_in_use_MB_per_frame": (counter.peak - baseline) / mb,
        "pool_held_MB_per_frame": (pool.total_bytes() - baseline) / mb,
        "peak_at": counter.where,
        "sites_MB_per_frame": {
            site: (used - baseline) / mb
            for site, used in sorted(counter.sites.items(), key=lambda kv: -kv[1])[:8]
        },
        "object_array_MB": rec.object.nbytes / 1e6,
    }
    counter.peak -= baseline
    del rec
    return counter, row


def main() -> None:
    rows = []
    for case in sys.argv[1:] or CASES:
        size, n, storage = case.split(":")
        n = int(n)
        scan = simulate_scan(default_config(int(size)), n, xp=cp)
        counter, row = measure(scan, storage, n, None)
        second, _ = measure(scan, storage, n, int(0.999 * counter.peak))
        row["alive_at_peak"] = second.alive_at_peak
        rows.append(row)
        print(json.dumps(row), flush=True)
        out = os.environ.get("OUT")
        if out:
            with open(os.path.join(out, "memory-peak.json"), "w") as handle:
                json.dump(rows, handle, indent=1)
        del scan
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
