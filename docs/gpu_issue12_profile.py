"""Where a GPU iteration goes, and the frame-loop kernels' block sizes (docs/benchmarks.md).

For each (frame size, frames) case: simulate on the GPU, hand the frames to a
``Reconstructor`` in 1024-frame chunks, iterate ``WARM`` times, then

* time ``TIMED`` iterations (device-synchronised) with each candidate
  ``cuda_operators.FRAMES_PER_BLOCK`` (the frame-loop kernels' frames per
  thread block);
* count the line-search passes per iteration;
* time the beam-axis check (``_probe_tilt_px``: the probe's far-field disc
  centre) the engine does once per iteration;
* run ``bench_engine.stage_profile``;
* time ``TIMED`` iterations with ``__launch_bounds__(256, B)`` added to the
  frame-loop kernels (``waves``, ``object_gradient``: register-bound at 25 %
  occupancy by ncu) for each B of ``MIN_BLOCKS`` (compiled again each time).

Prints one JSON document (and writes it to ``$OUT/issue12-profile.json`` when
``OUT`` is set). Needs CuPy and a CUDA device; from the repository root::

    PYTHONPATH=. python docs/gpu_issue12_profile.py [SIZE:FRAMES ...]
"""

from __future__ import annotations

import json
import os
import sys
import time

import cupy as cp

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.engine import cuda_operators
from bluesky_ptycho.sim.sample import default_config, simulate_scan
from bluesky_ptycho.tools.bench_engine import stage_profile

WARM, TIMED = 25, 10
BLOCK_SIZES = (4, 8, 16, 32, 64)
MIN_BLOCKS = (3, 4)
FRAME_LOOP_KERNELS = ("waves", "object_gradient")
CASES = ("256:4096", "128:4096", "512:1024")


def seconds_per_iteration(rec: Reconstructor, iterations: int) -> float:
    cp.cuda.Device().synchronize()
    started = time.perf_counter()
    rec.iterate(iterations)
    cp.cuda.Device().synchronize()
    return (time.perf_counter() - started) / iterations


def case(size: int, n_frames: int) -> dict:
    scan = simulate_scan(default_config(size), n_frames=n_frames, xp=cp)
    rec = Reconstructor(scan.config, backend="cupy")
    for start in range(0, n_frames, 1024):
        stop = start + 1024
        rec.add_frames(scan.frames[start:stop], scan.x_motor[start:stop], scan.y_motor[start:stop])
    del scan
    cp.get_default_memory_pool().free_all_blocks()
    rec.iterate(WARM)
    result: dict = {"frame_size": size, "frames": n_frames, "ms_per_iteration": {}}
    default = cuda_operators.FRAMES_PER_BLOCK
    for per_block in BLOCK_SIZES:
        cuda_operators.FRAMES_PER_BLOCK = per_block
        result["ms_per_iteration"][per_block] = 1e3 * seconds_per_iteration(rec, TIMED)
    cuda_operators.FRAMES_PER_BLOCK = default
    passes = []
    ops = rec._stores[0].ops
    sums = ops.line_search_sums

    def counted(*args):
        passes.append(1)
        return sums(*args)

    ops.line_search_sums = counted
    result["ms_default"] = 1e3 * seconds_per_iteration(rec, TIMED)
    del ops.line_search_sums
    result["line_search_passes_per_iteration"] = len(passes) / TIMED
    result["frame_iterations_per_s"] = n_frames / (result["ms_default"] / 1e3)
    cp.cuda.Device().synchronize()
    started = time.perf_counter()
    for _ in range(TIMED):
        rec._probe_tilt_px()
    cp.cuda.Device().synchronize()
    result["ms_beam_axis_check"] = 1e3 * (time.perf_counter() - started) / TIMED
    result["stage_ms"] = stage_profile(rec, 5)
    result["pool_bytes"] = cp.get_default_memory_pool().used_bytes()
    result["ms_with_launch_bounds"] = launch_bounds_sweep(rec)
    return result


def launch_bounds_sweep(rec: Reconstructor) -> dict:
    """ms per iteration with ``__launch_bounds__(THREADS, B)`` on the frame-loop kernels."""
    source = cuda_operators.kernel_source
    timings: dict = {}
    if not MIN_BLOCKS:
        return timings
    try:
        for min_blocks in MIN_BLOCKS:
            text = source()
            for name in FRAME_LOOP_KERNELS:
                bounds = f"__launch_bounds__({cuda_operators.THREADS}, {min_blocks}) "
                text = text.replace(f"__global__ void {name}(", f"__global__ void {bounds}{name}(")
            cuda_operators.kernel_source = lambda _transforms=False, text=text: text
            cuda_operators._module.cache_clear()
            for store in rec._stores:
                store.ops._kernels, _ = cuda_operators._module(
                    store.ops.real_dtype, tuple(cuda_operators.TAP_LANES.items())
                )
            rec.iterate(2)  # compile
            timings[min_blocks] = 1e3 * seconds_per_iteration(rec, TIMED)
    finally:
        cuda_operators.kernel_source = source
        cuda_operators._module.cache_clear()
        for store in rec._stores:
            store.ops._kernels, _ = cuda_operators._module(
                store.ops.real_dtype, tuple(cuda_operators.TAP_LANES.items())
            )
    return timings


def main() -> None:
    results = []
    for spec in sys.argv[1:] or CASES:
        size, frames = (int(part) for part in spec.split(":"))
        results.append(case(size, frames))
        print(json.dumps(results[-1]), flush=True)
        cp.get_default_memory_pool().free_all_blocks()
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "issue12-profile.json"), "w") as f:
            json.dump({"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                       "cases": results}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
