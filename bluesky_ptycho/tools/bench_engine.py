"""Engine benchmark on a simulated scan: throughput, convergence, stage profile, memory.

Simulates a scan with a known object (frames generated in batches on the
benchmark's own array module, so a GPU run does not wait minutes for NumPy),
starts the engine cold (probe from the data), iterates in blocks and reports
elapsed iteration time, iterations, Poisson NLL and NRMSE against the truth
after each block, then frame-iterations per second::

    frame-iterations/s = frames x iterations / seconds spent inside iterate()

timed with a device synchronisation before and after each block, excluding
simulation, engine construction, ``add_frames`` and the NRMSE evaluations.
On CuPy the results also give the memory pool's bytes after the run (what
the process holds on the device) beside ``Reconstructor.memory_estimate``.
:func:`stage_profile` times each operator stage with device events.

Used by ``bluesky-ptycho bench`` (:mod:`bluesky_ptycho.commands.bench`); needs
only NumPy, h5py, tqdm and optionally CuPy: no Bluesky packages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

#: frames handed to add_frames at a time
ADD_CHUNK_FRAMES = 1024
#: FFT functions :func:`stage_profile` times
FFTS = ("fft2", "ifft2")


def _sync(xp: ModuleType, gpus: Sequence[int] | None = None) -> None:
    """Wait for the current device, or for each of ``gpus``."""
    if xp.__name__ == "cupy":
        for device in gpus or [xp.cuda.Device().id]:
            xp.cuda.Device(device).synchronize()


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
    """$BLUESKY_PTYCHO_COMMIT when set (a copied tree's .git may be stale), else
    ``git describe --always --dirty`` of this checkout."""
    import os
    import subprocess

    fallback = os.environ.get("BLUESKY_PTYCHO_COMMIT", "unknown")
    if "BLUESKY_PTYCHO_COMMIT" in os.environ:
        return fallback

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
    profile_iterations: int = 0,
    gpus: Sequence[int] | None = None,
    frame_storage: str = "farfields",
    line_search_frames: int | None = None,
    transforms: str = "cufft",
    report: Any = print,
) -> dict[str, Any]:
    """Run the benchmark; ``report`` receives each printed line. Returns the results.

    With ``profile_iterations`` > 0, :func:`stage_profile` runs that many more
    iterations after the timed ones (not counted in the throughput). ``gpus``:
    the frames are partitioned over these CUDA devices (``Reconstructor(gpus=...)``).
    ``frame_storage``, ``line_search_frames``: those ``ReconConfig`` fields (None:
    the default). ``transforms``: ``Reconstructor(transforms=...)``.
    """
    import numpy as np

    from .. import Reconstructor
    from ..commands._options import PRECISIONS, default_step_fraction
    from ..engine.backend import get_array_module
    from ..metrics import snapshot_nrmse
    from ..sim.sample import default_config, simulate_scan

    if iterations is None and seconds is None:
        iterations = 50
    limit = iterations if iterations is not None else math.inf
    xp = get_array_module(backend)
    config = default_config(frame_size, dtype=PRECISIONS[precision])
    config = config.replace(frame_storage=frame_storage)
    if line_search_frames is not None:
        config = config.replace(line_search_frames=line_search_frames)

    started = time.perf_counter()
    if step_fraction is None:
        step_fraction = default_step_fraction()
    simulated = simulate_scan(config, n_frames, step_fraction, scan, photons_per_frame, seed, xp=xp)
    sample, frames = simulated.sample, simulated.frames
    x_motor, y_motor = simulated.x_motor, simulated.y_motor
    _sync(xp)
    simulate_s = time.perf_counter() - started

    started = time.perf_counter()
    rec = Reconstructor(config, backend=xp.__name__, transforms=transforms, gpus=gpus)
    for start in range(0, n_frames, ADD_CHUNK_FRAMES):
        stop = min(start + ADD_CHUNK_FRAMES, n_frames)
        rec.add_frames(frames[start:stop], x_motor[start:stop], y_motor[start:stop])
    del frames, simulated
    _sync(xp, gpus)
    setup_s = time.perf_counter() - started
    if xp.__name__ == "cupy":  # the pool's bytes after the run then count the engine's only
        xp.get_default_memory_pool().free_all_blocks()

    device = _device_name(xp)
    report(
        f"bench: {n_frames} frames of {frame_size}x{frame_size}, {scan}, backend {rec.backend} "
        f"on {device}{f' x {len(gpus)} (gpus {list(gpus)})' if gpus else ''}, "
        f"{precision} precision, frame storage {frame_storage}, "
        f"line search on at most {config.line_search_frames or 'all'} frames, "
        f"transforms {transforms}"
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
        _sync(xp, gpus)
        tick = time.perf_counter()
        nll = rec.iterate(count)
        _sync(xp, gpus)
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
    memory = device_memory(xp, rec, n_frames)
    if memory:
        report(
            f"device memory: {memory['device_pool_bytes'] / 1e9:.3f} GB held by the pool, "
            f"estimate {memory['memory_estimate_bytes'] / 1e9:.3f} GB, counts {memory['counts']}"
        )
    stages = stage_profile(rec, profile_iterations) if profile_iterations else {}
    for name, ms in stages.items():
        report(f"stage {name:>22}: {ms:8.3f} ms/iteration")
    command = (
        f"bluesky-ptycho bench --backend {backend} --frame-size {frame_size} --frames {n_frames}"
        + (f" --iterations {iterations}" if iterations is not None else "")
        + (f" --seconds {seconds:g}" if seconds is not None else "")
        + f" --block {block} --photons {photons_per_frame:g} --scan {scan}"
        + f" --step-fraction {step_fraction:g}"
        + f" --precision {precision} --seed {seed}"
        + (f" --gpus {','.join(str(g) for g in gpus)}" if gpus else "")
        + f" --frame-storage {frame_storage}"
        + f" --line-search-frames {config.line_search_frames}"
        + f" --transforms {transforms}"
    )
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": _commit(),
        "backend": rec.backend,
        "device": device,
        "gpus": list(gpus) if gpus else None,
        "array_module_version": getattr(xp, "__version__", "unknown"),
        "numpy_version": np.__version__,
        "frame_size": frame_size,
        "frames": n_frames,
        "precision": precision,
        "frame_storage": frame_storage,
        "line_search_frames": config.line_search_frames,
        "transforms": transforms,
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
        "memory": memory,
        "stages_ms_per_iteration": stages,
    }


def device_memory(xp: ModuleType, rec: Any, n_frames: int) -> dict[str, Any]:
    """CuPy: bytes the default memory pool holds (its peak, as freed blocks stay
    cached) beside ``rec.memory_estimate(n_frames)``; empty on NumPy."""
    if xp.__name__ != "cupy":
        return {}
    return {
        "device_pool_bytes": int(xp.get_default_memory_pool().total_bytes()),
        "memory_estimate_bytes": int(rec.memory_estimate(n_frames)),
        "counts": str(rec._stores[0].counts.dtype),
    }


def stage_profile(rec: Any, iterations: int) -> dict[str, float]:
    """Milliseconds per iteration spent in each operator method and in the FFTs.

    Runs ``iterations`` more iterations with every public operator method and
    the ``fft2``/``ifft2`` of the array module (and of cupyx.scipy.fft) wrapped
    by device events (or host clocks on NumPy) and a synchronisation after each
    call, so the sum is a
    little above the unprofiled time. ``fft`` is also inside the methods that
    transform (the far-field methods); ``iteration`` is the whole step.
    """
    xp = rec.xp
    stores = rec._stores
    totals: dict[str, float] = {}

    def timed(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            elapsed, result = _time_call(xp, function, args, kwargs)
            totals[name] = totals.get(name, 0.0) + elapsed
            return result

        return wrapper

    ops_type = type(stores[0].ops)
    methods = [
        name
        for name in dir(ops_type)
        if not name.startswith("_")
        and callable(getattr(ops_type, name))
        and name not in ("set_geometry", "workspace_bytes")
    ]
    for store in stores:
        for name in methods:
            setattr(store.ops, name, timed(name, getattr(store.ops, name)))
    modules = [xp.fft]
    if xp.__name__ == "cupy":
        import cupyx.scipy.fft

        modules.append(cupyx.scipy.fft)
    ffts = [(module, name, getattr(module, name)) for module in modules for name in FFTS]
    for module, name, function in ffts:
        setattr(module, name, timed("fft", function))
    try:
        elapsed, _ = _time_call(xp, rec.iterate, (iterations,), {})
    finally:
        for store in stores:
            for name in methods:
                delattr(store.ops, name)
        for module, name, function in ffts:
            setattr(module, name, function)
    totals["iteration"] = elapsed
    return {name: 1e3 * seconds / iterations for name, seconds in sorted(totals.items())}


def _time_call(xp: ModuleType, function: Any, args: tuple, kwargs: dict) -> tuple[float, Any]:
    """(seconds, result) of one call, device-synchronised on CuPy."""
    if xp.__name__ != "cupy":
        tick = time.perf_counter()
        result = function(*args, **kwargs)
        return time.perf_counter() - tick, result
    start, stop = xp.cuda.Event(), xp.cuda.Event()
    start.record()
    result = function(*args, **kwargs)
    stop.record()
    stop.synchronize()
    return xp.cuda.get_elapsed_time(start, stop) / 1e3, result
