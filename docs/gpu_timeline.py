"""Kernel timeline of GPU iterations: where the time goes, idle gaps included (docs/benchmarks.md).

For each case ``SIZE:FRAMES:STORAGE``: simulate on the GPU, add the frames in
1024-frame chunks, iterate ``WARM`` times, time ``TIMED`` iterations
device-synchronised without the profiler, then record ``TIMED`` more with
PyTorch's profiler (CUPTI sees every kernel and copy of the process, CuPy's
included). Reports per iteration: wall time, the time the GPU was busy (union of
kernel and copy intervals), the idle time (wall - busy: host work, launches and
synchronisations the GPU waits for), and each kernel name's total, largest
first; the idle gaps over 50 us, summed by the kernel that preceded them. JSON
to ``$OUT/timeline.json``. On a GPU machine with PyTorch::

    PYTHONPATH=. python docs/gpu_timeline.py [SIZE:FRAMES:STORAGE ...]
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

import cupy as cp
import torch  # noqa: F401  (CUPTI through its profiler)
from torch.profiler import ProfilerActivity, profile

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.sim.sample import default_config, simulate_scan

WARM, TIMED = 12, 10
GAP_US = 50.0
CASES = ("256:4096:stacks", "256:4096:farfields")


def engine(size: int, n_frames: int, storage: str) -> Reconstructor:
    scan = simulate_scan(default_config(size), n_frames=n_frames, xp=cp)
    rec = Reconstructor(scan.config.replace(frame_storage=storage), backend="cupy")
    for start in range(0, n_frames, 1024):
        part = slice(start, start + 1024)
        rec.add_frames(scan.frames[part], scan.x_motor[part], scan.y_motor[part])
    del scan
    cp.get_default_memory_pool().free_all_blocks()
    return rec


def device_events(trace_path: str) -> list[tuple[float, float, str]]:
    """(start us, end us, name) of every kernel, copy and memset of a Chrome trace."""
    with open(trace_path) as handle:
        trace = json.load(handle)
    events = [
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)), e.get("name", ""))
        for e in trace.get("traceEvents", [])
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    ]
    return sorted(events)


def busy_and_gaps(events) -> tuple[float, dict[str, float]]:
    busy, reach, gaps, previous = 0.0, None, collections.Counter(), ""
    for start, end, name in events:
        if reach is None or start > reach:
            if reach is not None:
                busy_gap = start - reach
                if busy_gap > GAP_US:
                    gaps[previous[:60]] += busy_gap
            busy += end - start
            reach = end
        elif end > reach:
            busy += end - reach
            reach = end
        previous = name
    return busy, gaps


def case(text: str) -> dict:
    size, n_frames, storage = text.split(":")
    rec = engine(int(size), int(n_frames), storage)
    rec.iterate(WARM)
    cp.cuda.Device().synchronize()
    started = time.perf_counter()
    rec.iterate(TIMED)
    cp.cuda.Device().synchronize()
    unprofiled_s = time.perf_counter() - started
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        rec.iterate(TIMED)
        cp.cuda.Device().synchronize()
        wall_s = time.perf_counter() - started
    trace_path = os.path.join(os.environ.get("OUT", "/tmp"), f"trace-{text.replace(':', '-')}.json")
    prof.export_chrome_trace(trace_path)
    events = device_events(trace_path)
    os.remove(trace_path)
    if not events:
        return {"case": text, "error": "the profiler recorded no device events"}
    busy_us, gaps = busy_and_gaps(events)
    span_us = events[-1][1] - events[0][0]
    kernels = collections.Counter()
    launches = collections.Counter()
    for start, end, name in events:
        kernels[name[:80]] += end - start
        launches[name[:80]] += 1
    per = 1000.0 * TIMED
    row = {
        "case": text,
        "unprofiled_ms_per_iteration": 1000 * unprofiled_s / TIMED,
        "frame_iterations_per_s": int(n_frames) * TIMED / unprofiled_s,
        "wall_ms_per_iteration": 1000 * wall_s / TIMED,
        "device_span_ms": span_us / per,
        "busy_ms": busy_us / per,
        "idle_ms": (span_us - busy_us) / per,
        "launches_per_iteration": sum(launches.values()) / TIMED,
        "kernels_ms": {  # name: [ms, launches] per iteration
            name: [round(us / per, 3), launches[name] / TIMED]
            for name, us in kernels.most_common(25)
        },
        "gaps_after_ms": {name: round(us / per, 3) for name, us in gaps.most_common(15)},
    }
    print(json.dumps(row, indent=1), flush=True)
    return row


def main() -> None:
    rows = []
    for text in sys.argv[1:] or CASES:
        rows.append(case(text))
        cp.get_default_memory_pool().free_all_blocks()
        out = os.environ.get("OUT")
        if out:
            with open(os.path.join(out, "timeline.json"), "w") as handle:
                json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
