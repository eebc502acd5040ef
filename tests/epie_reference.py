"""A plain ePIE (Maiden & Rodenburg 2009), the independent reference the tests compare with.

Deliberately simple and separate from the engine: integer-pixel positions
(rounded), amplitude replacement with the measured sqrt(counts) on valid
pixels, object and probe updated frame by frame in a random order each sweep,
steps ``alpha`` / ``beta`` relative to the maximum of |P|^2 and |O|^2. Same
geometry as the engine (DC-centred frames, unitary FFT, probe centred on the
position), so results share the engine's canvas and can be compared with
``bluesky_ptycho.metrics``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bluesky_ptycho.config import ReconConfig
from bluesky_ptycho.engine.orientation import orient_frames


@dataclass
class EpieResult:
    object: np.ndarray
    probe: np.ndarray
    coverage: np.ndarray
    origin_m: tuple[float, float]
    pixel_m: tuple[float, float]
    sweeps: int
    seconds: float


def epie(
    frames: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    config: ReconConfig,
    probe: np.ndarray,
    seconds: float | None = None,
    sweeps: int = 50,
    alpha: float = 1.0,
    beta: float = 1.0,
    seed: int = 0,
) -> EpieResult:
    """Run ePIE for ``sweeps`` sweeps, or until ``seconds`` have passed when given."""
    rows, cols = config.frame_shape
    dy, dx = config.object_pixel_m
    centres = np.stack(
        [
            y * config.position_scale_m * config.y_direction / dy,
            x * config.position_scale_m * config.x_direction / dx,
        ],
        axis=1,
    )
    corners = np.round(centres - np.array([rows // 2, cols // 2])).astype(int)
    low = corners.min(axis=0) - 4
    corners -= low
    shape = tuple(corners.max(axis=0) + np.array([rows, cols]) + 4)
    obj = np.ones(shape, np.complex128)
    counts = np.fft.ifftshift(
        orient_frames(frames.astype(np.float64), config.dp_orient), axes=(-2, -1)
    )
    valid = np.isfinite(counts) & (counts >= 0)
    if config.saturation_counts is not None:
        valid &= counts < config.saturation_counts
    if config.mask is not None:
        valid &= np.fft.ifftshift(orient_frames(np.asarray(config.mask) != 0, config.dp_orient))
    amplitude = np.sqrt(np.where(valid, counts, 0))
    probe = np.asarray(probe, np.complex128).copy()
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    done = 0
    while (seconds is None and done < sweeps) or (
        seconds is not None and time.perf_counter() - started < seconds
    ):
        for j in rng.permutation(len(corners)):
            r, c = corners[j]
            view = obj[r : r + rows, c : c + cols]
            exit_wave = probe * view
            farfield = np.fft.fft2(exit_wave, norm="ortho")
            replaced = np.where(
                valid[j], amplitude[j] * np.exp(1j * np.angle(farfield)), farfield
            )
            delta = np.fft.ifft2(replaced, norm="ortho") - exit_wave
            probe_step = alpha / (np.abs(probe) ** 2).max()
            object_step = beta / (np.abs(view) ** 2).max()
            new_view = view + probe_step * np.conj(probe) * delta
            probe += object_step * np.conj(view) * delta
            obj[r : r + rows, c : c + cols] = new_view
        done += 1
    illumination = np.zeros(shape)
    for r, c in corners:
        illumination[r : r + rows, c : c + cols] += np.abs(probe) ** 2
    return EpieResult(
        object=obj,
        probe=probe,
        coverage=illumination / illumination.max(),
        origin_m=(low[0] * dy, low[1] * dx),
        pixel_m=(dy, dx),
        sweeps=done,
        seconds=time.perf_counter() - started,
    )
