"""Reconstruction quality against a known object, and resolution without one.

``object_nrmse`` judges the image as delivered: it removes only a rigid
(sub-pixel) shift and a global complex factor ``c`` (least squares) and returns

    || c * shift(recon) - truth || / || truth ||   over the covered region.

``remove_ramp=True`` also removes a linear phase ramp (it moves between object
and probe without changing any exit wave); it is a diagnostic - an image
that needs it carries an artificial ramp - never a pass criterion.

``frc`` is the Fourier ring correlation of two independent reconstructions of
the same area (e.g. the even and the odd frames of a scan), the field's
reference-free resolution measure.
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
    recon: np.ndarray,
    truth: np.ndarray,
    region: np.ndarray,
    register: bool = True,
    remove_ramp: bool = False,
) -> float:
    """NRMSE of ``recon`` against ``truth`` (same grid) over boolean ``region``.

    register : remove the best sub-pixel shift first. remove_ramp : also remove
    the best linear phase ramp (diagnostic only, see module docstring). NaN
    pixels of ``recon`` (unreached) are treated as outside the region.
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
    if remove_ramp:
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
    snapshot: Snapshot,
    truth: np.ndarray,
    truth_origin_m: tuple[float, float],
    remove_ramp: bool = False,
) -> float:
    """NRMSE of a snapshot's object as delivered against ``truth``, covered region.

    ``remove_ramp``: diagnostic only (module docstring).
    """
    cropped = crop_truth(
        truth, truth_origin_m, snapshot.object.shape, snapshot.origin_m, snapshot.pixel_m
    )
    region = (snapshot.coverage >= COVERED_RELATIVE) & np.isfinite(cropped)
    return object_nrmse(snapshot.object, np.nan_to_num(cropped), region, remove_ramp=remove_ramp)


#: FRC summary band, fractions of the Nyquist frequency (docs/real-data.md)
FRC_BAND = (0.1, 0.5)


def frc_curve(image_a: np.ndarray, image_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two complex images of one area (same grid).

    Returns ``(frequency, correlation)``: ring radii as fractions of the Nyquist
    frequency (0.5 cycles per pixel along the shorter axis) and
    ``Re sum F_a conj(F_b) / sqrt(sum |F_a|^2 sum |F_b|^2)`` per one-pixel ring.
    """
    if image_a.shape != image_b.shape or image_a.ndim != 2:
        raise ValueError(
            f"frc: two images of one 2-D shape needed, got {image_a.shape} and {image_b.shape}"
        )
    spectrum_a, spectrum_b = np.fft.fft2(image_a), np.fft.fft2(image_b)
    rows, cols = image_a.shape
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.fftfreq(cols)[None, :]
    radius = np.hypot(fy, fx) * min(rows, cols)  # pixels of the shorter axis' spectrum
    ring = np.round(radius).astype(int).ravel()
    n_rings = min(rows, cols) // 2 + 1
    keep = ring < n_rings
    ring = ring[keep]

    def ring_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(ring, values.ravel()[keep], minlength=n_rings)

    cross = ring_sum((spectrum_a * np.conj(spectrum_b)).real)
    power = ring_sum(np.abs(spectrum_a) ** 2) * ring_sum(np.abs(spectrum_b) ** 2)
    correlation = np.where(power > 0, cross / np.sqrt(np.where(power > 0, power, 1)), 0.0)
    return np.arange(n_rings) / (n_rings - 1), correlation


def frc(
    image_a: np.ndarray,
    image_b: np.ndarray,
    region: np.ndarray,
    band: tuple[float, float] = FRC_BAND,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean FRC over ``band`` (fractions of Nyquist) of two reconstructions of one area.

    ``region`` (bool, same grid) is where both are covered. Within its bounding
    box the images are aligned (sub-pixel shift and global complex factor of
    ``image_b`` onto ``image_a``), their means removed and a Hann window
    applied, so the box edges add no correlation. Returns
    ``(mean, frequency, correlation)``.
    """
    if not region.any():
        raise ValueError("frc: the common covered region is empty")
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inside = region[box]
    a = np.where(inside, np.nan_to_num(image_a[box]), 0)
    b = np.where(inside, np.nan_to_num(image_b[box]), 0)
    if min(a.shape) < 8:
        raise ValueError(f"frc: the common covered region {a.shape} is too small (< 8 px)")
    b = np.where(inside, shift_image(b, register_shift(a, b)), 0)
    b = b * np.vdot(b[inside], a[inside]) / np.vdot(b[inside], b[inside])
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1])) * inside
    a = (a - a[inside].mean()) * window
    b = (b - b[inside].mean()) * window
    frequency, correlation = frc_curve(a, b)
    in_band = (frequency >= band[0]) & (frequency <= band[1])
    return float(correlation[in_band].mean()), frequency, correlation


def common_region(
    object_a: np.ndarray,
    coverage_a: np.ndarray,
    origin_a_m: tuple[float, float],
    object_b: np.ndarray,
    coverage_b: np.ndarray,
    origin_b_m: tuple[float, float],
    pixel_m: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two results on the grid of ``a``: ``(object_a, object_b, region)``.

    ``region``: both covered (coverage >= ``COVERED_RELATIVE``) and finite.
    """
    placed_b = crop_truth(object_b, origin_b_m, object_a.shape, origin_a_m, pixel_m)
    placed_cov = crop_truth(
        coverage_b.astype(np.complex128), origin_b_m, object_a.shape, origin_a_m, pixel_m
    ).real
    region = (
        (coverage_a >= COVERED_RELATIVE)
        & (np.nan_to_num(placed_cov) >= COVERED_RELATIVE)
        & np.isfinite(placed_b)
        & np.isfinite(object_a)
    )
    return object_a, placed_b, region
