"""Frames per thread block of the frame-loop kernels, swept on the GPU (docs/benchmarks.md).

For each case ``SIZE:FRAMES:STORAGE``: simulate on the GPU, add the frames in
1024-frame chunks, iterate 12 times, then time 10 iterations (device-synchronised)
for each pair of ``cuda_operators.FRAMES_PER_BLOCK`` (``waves``, and the object
gradient without the probe's terms) and ``PROBE_FRAMES_PER_BLOCK`` (the object
gradient with them), twice over the grid. Both are read at each launch, so no
kernel is compiled again. Prints per case the six fastest pairs and the default
pair's times, ms an iteration. Needs CuPy, a CUDA device and PyTorch (the
engine is built by ``gpu_timeline.engine``); from the repository root::

    PYTHONPATH=. python docs/gpu_block_sweep.py [SIZE:FRAMES:STORAGE ...]
"""

from __future__ import annotations

import itertools
import sys
import time

import cupy as cp
from gpu_timeline import engine  # (imports PyTorch, as the GPU machine has it)

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.engine import cuda_operators

FRAMES_PER_BLOCK = (8, 16, 32, 64)
PROBE_FRAMES_PER_BLOCK = (32, 64, 128)
WARM, TIMED, ROUNDS = 12, 10, 2
CASES = ("256:4096:stacks", "128:4096:stacks")


def ms_per_iteration(rec: Reconstructor) -> float:
    cp.cuda.Device().synchronize()
    started = time.perf_counter()
    rec.iterate(TIMED)
    cp.cuda.Device().synchronize()
    return 1e3 * (time.perf_counter() - started) / TIMED


def sweep(text: str) -> None:
    size, n_frames, storage = text.split(":")
    rec = engine(int(size), int(n_frames), storage)
    rec.iterate(WARM)
    default = (cuda_operators.FRAMES_PER_BLOCK, cuda_operators.PROBE_FRAMES_PER_BLOCK)
    timings = []
    try:
        for _ in range(ROUNDS):
            for pair in itertools.product(FRAMES_PER_BLOCK, PROBE_FRAMES_PER_BLOCK):
                cuda_operators.FRAMES_PER_BLOCK, cuda_operators.PROBE_FRAMES_PER_BLOCK = pair
                timings.append((*pair, round(ms_per_iteration(rec), 2)))
    finally:
        cuda_operators.FRAMES_PER_BLOCK, cuda_operators.PROBE_FRAMES_PER_BLOCK = default
    fastest = sorted(timings, key=lambda row: row[2])[:6]
    at_default = [row[2] for row in timings if row[:2] == default]
    print(text, "fastest (frames, probe frames, ms):", fastest, "default", default, at_default)


def main() -> None:
    for text in sys.argv[1:] or CASES:
        sweep(text)
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
