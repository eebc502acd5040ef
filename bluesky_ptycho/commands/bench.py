"""``bluesky-ptycho bench``: engine throughput and convergence on a simulated scan.

Simulates a scan with a known object (frames generated in batches on the
benchmark's own array module, so a GPU run does not wait minutes for NumPy),
starts the engine cold (probe from the data), iterates in blocks and prints
elapsed iteration time, iterations, Poisson NLL and NRMSE against the truth
after each block, then frame-iterations per second::

    frame-iterations/s = frames x iterations / seconds spent inside iterate()

timed with a device synchronisation before and after each block, excluding
simulation, engine construction, ``add_frames`` and the NRMSE evaluations.

This module (and the ``bench`` path through :mod:`bluesky_ptycho.cli`) needs
only NumPy, h5py, tqdm and optionally CuPy: no Bluesky packages.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from ._options import PRECISIONS, default_step_fraction, positive_float, positive_int

NAME = "bench"
#: frames handed to add_frames at a time
ADD_CHUNK_FRAMES = 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="benchmark the engine on a simulated scan (frame-iterations/s, NRMSE)",
        description=(
            "Simulate a scan, reconstruct it from a cold start and report, per block of "
            "iterations, the elapsed iteration time, Poisson NLL and NRMSE against the true "
            "object, then frame-iterations per second (frames x iterations / time inside "
            "iterate(), device-synchronised; setup excluded)."
        ),
    )
    parser.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto", help="array module (auto)"
    )
    parser.add_argument(
        "--frame-size", type=positive_int, default=256, help="frame M x M pixels (256)"
    )
    parser.add_argument("--frames", type=positive_int, default=4096, help="scan points (4096)")
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        help="stop after this many iterations (50, or no limit when --seconds is given)",
    )
    parser.add_argument(
        "--seconds",
        type=positive_float,
        default=None,
        help="stop after the first block that brings iteration time to this many seconds",
    )
    parser.add_argument(
        "--block", type=positive_int, default=10, help="iterations per table row (10)"
    )
    parser.add_argument(
        "--photons", type=positive_float, default=1e6, help="mean photons per frame (1e6)"
    )
    parser.add_argument(
        "--scan", choices=("spiral", "raster"), default="spiral", help="scan pattern (spiral)"
    )
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="single",
        help="single (complex64) or double (complex128) (single)",
    )
    parser.add_argument(
        "--step-fraction",
        type=positive_float,
        default=None,
        help=f"scan step as a fraction of the frame width ({default_step_fraction():g})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.set_defaults(run=run)


def _sync(xp: ModuleType) -> None:
    if xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()


def _device_name(xp: ModuleType) -> str:
    import os
    import platform

    if xp.__name__ == "cupy":
        props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def _commit() -> str:
    """``git describe --always --dirty`` of this checkout, else $BLUESKY_PTYCHO_COMMIT."""
    import os
    import subprocess

    fallback = os.environ.get("BLUESKY_PTYCHO_COMMIT", "unknown")

    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--exclude", "*"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return fallback
    return result.stdout.strip() or fallback


def benchmark(
    backend: str = "auto",
    frame_size: int = 256,
    n_frames: int = 4096,
    iterations: int | None = 50,
    seconds: float | None = None,
    block: int = 10,
    photons_per_frame: float = 1e6,
    scan: str = "spiral",
    precision: str = "single",
    seed: int = 0,
    step_fraction: float | None = None,
    report: Any = print,
) -> dict[str, Any]:
    """Run the benchmark; ``report`` receives each printed line. Returns the results."""
    import numpy as np

    from .. import Reconstructor
    from ..engine.backend import get_array_module
    from ..metrics import snapshot_nrmse
    from ..sim.sample import default_config, simulate_scan

    if iterations is None and seconds is None:
        iterations = 50
    limit = iterations if iterations is not None else math.inf
    xp = get_array_module(backend)
    config = default_config(frame_size, dtype=PRECISIONS[precision])

    started = time.perf_counter()
    if step_fraction is None:
        step_fraction = default_step_fraction()
    simulated = simulate_scan(
        config, n_frames, step_fraction, scan, photons_per_frame, seed, xp=xp
    )
    sample, frames = simulated.sample, simulated.frames
    x_motor, y_motor = simulated.x_motor, simulated.y_motor
    _sync(xp)
    simulate_s = time.perf_counter() - started

    started = time.perf_counter()
    rec = Reconstructor(config, backend=xp.__name__)
    for start in range(0, n_frames, ADD_CHUNK_FRAMES):
        stop = min(start + ADD_CHUNK_FRAMES, n_frames)
        rec.add_frames(frames[start:stop], x_motor[start:stop], y_motor[start:stop])
    del frames
    _sync(xp)
    setup_s = time.perf_counter() - started

    device = _device_name(xp)
    report(
        f"bench: {n_frames} frames of {frame_size}x{frame_size}, {scan}, backend {rec.backend} "
        f"on {device}, {precision} precision"
    )
    report(
        f"simulation {simulate_s:.2f} s, setup (engine + add_frames) {setup_s:.2f} s, "
        f"object {rec.object.shape[0]}x{rec.object.shape[1]}"
    )
    header = f"{'elapsed_s':>10} {'iterations':>10} {'poisson_nll':>14} {'nrmse':>8} {'fit/s':>12}"
    report(header)
    rows: list[dict[str, float]] = []
    iterate_s = 0.0
    done = 0
    while done < limit and (seconds is None or iterate_s < seconds):
        count = int(min(block, limit - done))
        _sync(xp)
        tick = time.perf_counter()
        nll = rec.iterate(count)
        _sync(xp)
        block_s = time.perf_counter() - tick
        iterate_s += block_s
        done += count
        nrmse = snapshot_nrmse(rec.snapshot(live=True), sample.object, sample.origin_m)
        row = {
            "elapsed_s": iterate_s,
            "iterations": done,
            "poisson_nll": float(nll),
            "nrmse": float(nrmse),
            "block_s": block_s,
            "frame_iterations_per_s": n_frames * count / block_s,
        }
        rows.append(row)
        report(
            f"{iterate_s:10.3f} {done:10d} {nll:14.7g} {nrmse:8.4f} "
            f"{row['frame_iterations_per_s']:12.4g}"
        )
    rate = n_frames * done / iterate_s
    steady_iterations = done - rows[0]["iterations"]
    steady_s = iterate_s - rows[0]["block_s"]
    steady = n_frames * steady_iterations / steady_s if steady_iterations > 0 else rate
    report(f"frame-iterations/s: {rate:.4g} (after the first block: {steady:.4g})")
    command = (
        f"bluesky-ptycho bench --backend {backend} --frame-size {frame_size} --frames {n_frames}"
        + (f" --iterations {iterations}" if iterations is not None else "")
        + (f" --seconds {seconds:g}" if seconds is not None else "")
        + f" --block {block} --photons {photons_per_frame:g} --scan {scan}"
        + f" --step-fraction {step_fraction:g}"
        + f" --precision {precision} --seed {seed}"
    )
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": _commit(),
        "backend": rec.backend,
        "device": device,
        "array_module_version": getattr(xp, "__version__", "unknown"),
        "numpy_version": np.__version__,
        "frame_size": frame_size,
        "frames": n_frames,
        "precision": precision,
        "scan": scan,
        "step_fraction": step_fraction,
        "photons_per_frame": photons_per_frame,
        "object_shape": list(rec.object.shape),
        "simulate_s": simulate_s,
        "setup_s": setup_s,
        "iterations": done,
        "iterate_s": iterate_s,
        "frame_iterations_per_s": rate,
        "steady_frame_iterations_per_s": steady,
        "final_nrmse": rows[-1]["nrmse"],
        "final_poisson_nll": rows[-1]["poisson_nll"],
        "blocks": rows,
    }


def run(args: argparse.Namespace) -> int:
    results = benchmark(
        backend=args.backend,
        frame_size=args.frame_size,
        n_frames=args.frames,
        iterations=args.iterations,
        seconds=args.seconds,
        block=args.block,
        photons_per_frame=args.photons,
        scan=args.scan,
        precision=args.precision,
        seed=args.seed,
        step_fraction=args.step_fraction,
    )
    if args.json:
        path = Path(args.json)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path}")
    return 0
