"""Compile the GPU kernels before a scan needs them.

CuPy compiles every element-wise, reduction and raw kernel the first time a
process uses it with given types: about 15 s in all for the engine on a fresh
H200 host (measured while a live 10,000-frame scan streamed: its first
iteration came after the scan had ended), cached on disk afterwards
(``~/.cupy/kernel_cache``, or ``CUPY_CACHE_DIR``). :func:`warm_up` runs a
small reconstruction on synthetic counts of each common detector type through
the same paths a scan takes (frames in two batches, a canvas that grows, the
probe hold, a far-field refresh, the callback's finiteness check, snapshots), so a live scan's first
iterations do not pay for compilation.
"""

from __future__ import annotations

import time

import numpy as np

from ..config import ReconConfig
from .reconstructor import REFRESH_EVERY, Reconstructor

#: detector types warmed up: the counts' conversion kernels depend on them
DETECTOR_DTYPES = ("uint16", "uint32", "int32", "float32")
#: frame count of the synthetic scan, and its frame side on CuPy: CuPy's reductions
#: compile other variants for large arrays, so the stacks are of a real scan's size
WARM_UP_FRAMES, WARM_UP_FRAME_PX = 24, 256
#: frame side on NumPy (nothing to compile: the paths are only exercised)
HOST_WARM_UP_FRAME_PX = 32


def warm_up(backend: str = "cupy", dtype: str = "complex64") -> float:
    """Run a tiny reconstruction per detector type; returns the seconds it took."""
    started = time.perf_counter()
    side = HOST_WARM_UP_FRAME_PX if backend == "numpy" else WARM_UP_FRAME_PX
    config = ReconConfig(
        energy_kev=9.0,
        distance_m=1.0,
        detector_pixel_m=75e-6,
        frame_shape=(side, side),
        dtype=dtype,
        saturation_counts=60000.0,
    )
    rng = np.random.default_rng(0)
    radius = np.hypot(*np.meshgrid(np.arange(side) - side // 2, np.arange(side) - side // 2))
    disc = 200.0 * (radius < side / 6)
    step = 0.25 * side * config.object_pixel_m[0] / config.position_scale_m  # motor units
    index = np.arange(WARM_UP_FRAMES)
    x, y = (index % 6) * step, (index // 6) * step  # a raster: the canvas grows
    half = WARM_UP_FRAMES // 2
    for detector_dtype in DETECTOR_DTYPES:
        frames = rng.poisson(disc + 1.0, (WARM_UP_FRAMES, side, side)).astype(detector_dtype)
        rec = Reconstructor(config, backend=backend)
        for part in (slice(0, half), slice(half, None)):
            rec.add_frames(frames[part], x[part], y[part])
            rec.iterate(REFRESH_EVERY // 2 + 1)
            rec.state_is_finite()  # the callback's check after each iteration
        rec.snapshot(live=True)
        rec.snapshot(live=False)
    return time.perf_counter() - started
