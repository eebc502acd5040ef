"""Which CuPy kernels a live scan still compiles after the callback's warm-up.

Diagnostic for docs/benchmarks.md ("Live latency through the callback"): wraps
NVRTC's compile call in ``cupy.cuda.compiler`` (``_NVRTCProgram.compile``, made
on a kernel-cache miss only) to record when each compilation happened, how
long it took and the innermost bluesky_ptycho frame that asked for it, then
runs ``bench_live`` with the options given (``KEY=VALUE`` callback keywords;
numbers are parsed). Prints the bench summary and one line per compilation; writes
``$OUT/live-compiles.json``. Meaningful on a host whose kernel cache is empty.
From the repository root on a GPU machine::

    PYTHONPATH=. python docs/gpu_live_compiles.py refine_iterations=30 snapshot_interval_s=0.5
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import cupy.cuda.compiler as compiler

from bluesky_ptycho.tools.bench_live import bench_live

STARTED = time.perf_counter()
COMPILES: list[dict] = []
_compile = compiler._NVRTCProgram.compile


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "bluesky_ptycho" in frame.filename:
            return f"{frame.filename.split('bluesky_ptycho/')[-1]}:{frame.lineno} {frame.name}"
    return "?"


def logged_compile(*args, **kwargs):
    began = time.perf_counter()
    try:
        return _compile(*args, **kwargs)
    finally:
        COMPILES.append(
            {
                "at_s": began - STARTED,
                "seconds": time.perf_counter() - began,
                "caller": _caller(),
            }
        )


def main() -> None:
    compiler._NVRTCProgram.compile = logged_compile
    options = {}
    for item in sys.argv[1:]:
        key, value = item.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    result = bench_live(backend="cupy", **options)
    print(result.summary())
    for entry in COMPILES:
        print(f"compile at {entry['at_s']:7.2f} s, {entry['seconds']:5.2f} s: {entry['caller']}")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "live-compiles.json"), "w") as handle:
            json.dump({"result": result.as_dict(), "compiles": COMPILES}, handle, indent=1)


if __name__ == "__main__":
    main()
