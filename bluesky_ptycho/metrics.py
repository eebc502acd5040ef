"""Reconstruction quality against a known object.

``object_nrmse`` removes the ambiguities ptychography cannot resolve from the
data - a rigid (sub-pixel) shift, a linear phase ramp (it moves between object
and probe without changing any exit wave but by a constant phase) and a global
complex factor - and returns

    || c * ramp * shift(recon) - truth || / || truth ||   over the covered region,

with ``c`` the least-squares complex factor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .engine.reconstructor import Snapshot

#: coverage (illumination relative to its maximum) that defines the compared region
COVERED_RELATIVE = 0.1


def _dft_upsampled(spectrum: np.ndarray, size: int, factor: int, offset: np.ndarray) -> np.ndarray:
    """Cross-correlation upsampled by ``factor`` on a ``size``-pixel patch around ``offset``."""
    rows, cols = spectrum.shape
    grid = np.arange(size) - size // 2
    kernel_r = np.exp(
        2j
        * np.pi
        / (rows * factor)
        * np.outer(grid + offset[0] * factor, np.fft.fftfreq(rows) * rows)
    )
    kernel_c = np.exp(
        2j
        * np.pi
        / (cols * factor)
        * np.outer(np.fft.fftfreq(cols) * cols, grid + offset[1] * factor)
    )
    return kernel_r @ spectrum @ kernel_c


def upsampled_peak(spectrum: np.ndarray, upsample: int = 20) -> np.ndarray:
    """Sub-pixel (row, col) of the maximum of ``|ifft2(spectrum)|``, wrapped to +-N/2."""
    correlation = np.abs(np.fft.ifft2(spectrum))
    peak = np.array(np.unravel_index(np.argmax(correlation), correlation.shape), dtype=float)
    shape = np.array(correlation.shape)
    peak[peak > shape // 2] -= shape[peak > shape // 2]
    patch = np.abs(_dft_upsampled(spectrum, 3 * upsample, upsample, peak))
    fine = (
        np.array(np.unravel_index(np.argmax(patch), patch.shape), dtype=float) - 3 * upsample // 2
    )
    return peak + fine / upsample


def register_shift(reference: np.ndarray, moving: np.ndarray, upsample: int = 20) -> np.ndarray:
    """(dy, dx) that moves ``moving`` onto ``reference`` (peak of the cross-correlation)."""
    return upsampled_peak(np.fft.fft2(reference) * np.conj(np.fft.fft2(moving)), upsample)


def phase_ramp(recon: np.ndarray, reference: np.ndarray, upsample: int = 100) -> np.ndarray:
    """(row, col) cycles per pixel of the phase ramp of ``recon`` relative to ``reference``."""
    # ifftshift: the DFT sees centred coordinates, so positions do not wrap.
    product = np.fft.ifftshift(reference * np.conj(recon))
    return -upsampled_peak(product, upsample) / np.array(recon.shape)


def remove_phase_ramp(recon: np.ndarray, reference: np.ndarray, upsample: int = 100) -> np.ndarray:
    """``recon`` times the linear phase ramp that best aligns its phase with ``reference``."""
    cycles = -phase_ramp(recon, reference, upsample)
    rows = np.arange(recon.shape[0])[:, None] * cycles[0]
    cols = np.arange(recon.shape[1])[None, :] * cycles[1]
    return recon * np.exp(-2j * np.pi * (rows + cols))


def shift_image(image: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """Fourier shift of ``image`` by (dy, dx) pixels."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    return np.fft.ifft2(
        np.fft.fft2(image) * np.exp(-2j * np.pi * (fy * shift_px[0] + fx * shift_px[1]))
    )


def object_nrmse(
    recon: np.ndarray, truth: np.ndarray, region: np.ndarray, register: bool = True
) -> float:
    """NRMSE of ``recon`` against ``truth`` (same grid) over boolean ``region``.

    NaN pixels of ``recon`` (unreached) are treated as outside the region.
    """
    if recon.shape != truth.shape or region.shape != truth.shape:
        raise ValueError(
            f"object_nrmse: recon {recon.shape}, truth {truth.shape} and region "
            f"{region.shape} must have the same shape"
        )
    region = region & np.isfinite(recon)
    if not region.any():
        raise ValueError("object_nrmse: the compared region is empty")
    recon = np.where(region, np.nan_to_num(recon), 0)
    target = np.where(region, truth, 0)
    if register:
        # Register amplitude-weighted fields with the mean removed so edges don't dominate.
        shift = register_shift(
            target - target[region].mean() * region, recon - recon[region].mean() * region
        )
        recon = shift_image(np.where(region, recon, recon[region].mean()), shift)
        recon = np.where(region, recon, 0)
        recon = remove_phase_ramp(recon, target)
    factor = np.vdot(recon[region], target[region]) / np.vdot(recon[region], recon[region])
    error = factor * recon[region] - target[region]
    return float(np.linalg.norm(error) / np.linalg.norm(target[region]))


def crop_truth(
    truth: np.ndarray,
    truth_origin_m: tuple[float, float],
    canvas_shape: tuple[int, int],
    canvas_origin_m: tuple[float, float],
    pixel_m: tuple[float, float],
) -> np.ndarray:
    """The part of ``truth`` on a reconstruction canvas (NaN where truth has no value)."""
    offset = [
        int(round((c - t) / p))
        for c, t, p in zip(canvas_origin_m, truth_origin_m, pixel_m, strict=True)
    ]
    out = np.full(canvas_shape, np.nan, dtype=np.complex128)
    src_r0, src_c0 = max(offset[0], 0), max(offset[1], 0)
    dst_r0, dst_c0 = max(-offset[0], 0), max(-offset[1], 0)
    rows = min(truth.shape[0] - src_r0, canvas_shape[0] - dst_r0)
    cols = min(truth.shape[1] - src_c0, canvas_shape[1] - dst_c0)
    if rows > 0 and cols > 0:
        out[dst_r0 : dst_r0 + rows, dst_c0 : dst_c0 + cols] = truth[
            src_r0 : src_r0 + rows, src_c0 : src_c0 + cols
        ]
    return out


def snapshot_nrmse(
    snapshot: Snapshot, truth: np.ndarray, truth_origin_m: tuple[float, float]
) -> float:
    """NRMSE of a snapshot's object against ``truth`` over its covered region."""
    cropped = crop_truth(
        truth, truth_origin_m, snapshot.object.shape, snapshot.origin_m, snapshot.pixel_m
    )
    region = (snapshot.coverage >= COVERED_RELATIVE) & np.isfinite(cropped)
    return object_nrmse(snapshot.object, np.nan_to_num(cropped), region)
