"""The GPU benchmarks' scan: a beamline-like cold start with a strongly defocused probe.

4,096 frames of 256 x 256 (``sim.sample.BEAMLINE_LIKE``: sample phase gradient,
central stop, stuck pixels) from a 3.5 mrad zone plate defocused by 4 waves
at the pupil edge (90.0 um), 1e6 photons per frame, simulated on the GPU.
Shared by docs/gpu_image_quality_check.py and docs/gpu_cold_start.py.
"""

from __future__ import annotations

import time
from types import ModuleType

from bluesky_ptycho.config import ReconConfig
from bluesky_ptycho.sim.sample import (
    BEAMLINE_LIKE,
    HOT_PIXEL_COUNTS,
    SimulatedScan,
    default_config,
    simulate_scan,
)

SEMIANGLE_RAD = 3.5e-3
#: defocus in waves of path difference at the pupil edge
DEFOCUS_WAVES = 4
PHOTONS_PER_FRAME = 1e6


def synchronize(xp: ModuleType) -> None:
    """Wait for the device (CuPy); nothing on NumPy."""
    if xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()


def cold_start_scan(
    n_frames: int = 4096, frame_size: int = 256, seed: int = 7, xp: ModuleType | None = None
) -> tuple[SimulatedScan, ReconConfig, float]:
    """The scan on ``xp`` (default CuPy), the configuration to reconstruct it with
    (stuck pixels excluded, no defocus given) and the true defocus in metres."""
    if xp is None:
        import cupy as xp
    config = default_config(frame_size)
    defocus_m = 2 * DEFOCUS_WAVES * config.wavelength_m / SEMIANGLE_RAD**2
    options = {**BEAMLINE_LIKE, "defocus_m": defocus_m, "semiangle_rad": SEMIANGLE_RAD}
    options["photons_per_frame"] = PHOTONS_PER_FRAME
    started = time.perf_counter()
    scan = simulate_scan(config, n_frames=n_frames, seed=seed, xp=xp, **options)
    synchronize(xp)
    print(
        f"simulated {n_frames} x {frame_size}x{frame_size} in "
        f"{time.perf_counter() - started:.1f} s; defocus {defocus_m * 1e6:.1f} um"
    )
    return scan, config.replace(saturation_counts=HOT_PIXEL_COUNTS), defocus_m
