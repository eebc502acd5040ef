"""The linear phase-ramp ambiguity between probe and object, and its convention.

Multiplying the probe by ``exp(2 pi i k.r)`` and the object by ``exp(-2 pi i k.r)``
changes every exit wave by a constant phase only, so no measured pattern can
fix ``k``; it only moves the probe's far field by ``k`` detector pixels. The
engine fixes it by the physical convention (docs/engine.md): the probe's far
field is held on the beam axis, which is

* the warm-start probe's own far-field centre (the supplied probe is never
  re-tilted), else
* ``beam_center_px`` when configured (``"data"``: the centre of the
  bright-field disc of the mean measured pattern), else
* the frame centre (frames arrive centred on the direct beam).

The far-field centre of a pattern is the centre of its bright-field disc
(:func:`disc_centre`), not its centroid: a sample's phase gradients move
the centroid of the mean pattern.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import numpy as np

from .backend import is_cupy, to_host

#: the disc is the region above this fraction of the maximum (soft edge +-DISC_EDGE)
DISC_LEVEL = 0.5
DISC_EDGE = 0.1
#: Gaussian blur (pixels) applied first, so the soft mask moves continuously with
#: sub-pixel shifts of a sharp-edged disc
DISC_BLUR_PX = 1.5


#: compare-exchange pairs of a median-of-9 selection network (Paeth): after them,
#: element 4 of the nine holds their median
MEDIAN9_NETWORK = (
    (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
    (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
)  # fmt: skip


@functools.cache
def _median3x3_kernel() -> Any:
    """The 3 x 3 median of each pixel of real (..., rows, cols) images in one launch (CuPy)."""
    import cupy

    reads = "".join(
        f"T p{3 * (dr + 1) + dc + 1} = image[base + ((r + {dr} + rows) % rows) * cols"
        f" + (c + {dc} + cols) % cols];"
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
    )
    network = "".join(f"exchange(p{a}, p{b});" for a, b in MEDIAN9_NETWORK)
    return cupy.ElementwiseKernel(
        "raw T image, int32 rows, int32 cols",
        "T out",
        "const ptrdiff_t c = i % cols, r = (i / cols) % rows, base = i - r * cols - c;"
        f" {reads} {network} out = p4;",
        "ptycho_median3x3",
        preamble="template <typename T> __device__ inline void exchange(T& a, T& b)"
        " { const T low = min(a, b); b = max(a, b); a = low; }",
    )


def median3x3(xp: ModuleType, image: Any) -> Any:
    """3 x 3 median filter with periodic edges (removes isolated hot or dead pixels) of
    a real image, or of each of a (..., rows, cols) stack; on CuPy one kernel
    (:data:`MEDIAN9_NETWORK`), not nine rolled copies and a sort. For finite values
    (the network's min/max pass over a NaN where NumPy's median returns it)."""
    rows, cols = image.shape[-2:]
    if is_cupy(xp):
        image = xp.ascontiguousarray(image)
        return _median3x3_kernel()(image, np.int32(rows), np.int32(cols), xp.empty_like(image))
    shifts = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    return xp.median(xp.stack([xp.roll(image, s, axis=(-2, -1)) for s in shifts]), axis=0)


def blur(xp: ModuleType, image: Any, sigma_px: float = DISC_BLUR_PX) -> Any:
    """Periodic Gaussian blur of a real image, or of each of a (..., rows, cols) stack
    (via its FFT)."""
    fy = xp.fft.fftfreq(image.shape[-2])[:, None]
    fx = xp.fft.fftfreq(image.shape[-1])[None, :]
    kernel = xp.exp(-2 * (np.pi * sigma_px) ** 2 * (fy**2 + fx**2))
    return xp.fft.ifft2(xp.fft.fft2(image) * kernel).real


def disc_centre(xp: ModuleType, pattern: Any) -> np.ndarray:
    """(row, col) centre of the bright-field disc of a DC-at-corner pattern, from DC, in px.

    The centroid of a soft mask of the pixels above ``DISC_LEVEL`` of the
    median-filtered, blurred maximum: insensitive to how intensity is spread
    inside the disc, hot pixels and isolated masked pixels, and continuous in
    sub-pixel shifts. Its numbers are read from the device in one transfer.
    """
    centred = blur(xp, median3x3(xp, xp.fft.fftshift(xp.asarray(pattern, dtype="float64"))))
    peak = centred.max()
    level = (centred / xp.where(peak > 0, peak, 1) - DISC_LEVEL) / (2 * DISC_EDGE) + 0.5
    weight = xp.clip(level, 0, 1)
    rows, cols = centred.shape
    moments = xp.stack(
        [
            peak,
            weight.sum(),
            (weight.sum(axis=1) * xp.arange(rows)).sum(),
            (weight.sum(axis=0) * xp.arange(cols)).sum(),
        ]
    )
    peak, total, row_moment, col_moment = (float(value) for value in to_host(moments))
    if not peak > 0:
        return np.zeros(2)
    return np.array([row_moment / total - rows // 2, col_moment / total - cols // 2])


def ramp(
    xp: ModuleType,
    shape: tuple[int, ...],
    cycles: np.ndarray,
    dtype: str,
    start: tuple[int, int] | np.ndarray = (0, 0),
) -> Any:
    """``exp(2 pi i (cycles_r * row + cycles_c * col))`` on a ``shape`` grid.

    ``start``: (row, col) of the grid's pixel [0, 0] (e.g. a canvas's global origin).
    The row and column factors are made in double precision; their outer product,
    in ``dtype``, is the only grid-sized array (no grid-sized double temporaries).
    """
    rows = (xp.arange(shape[0])[:, None] + int(start[0])) * float(cycles[0])
    cols = (xp.arange(shape[1])[None, :] + int(start[1])) * float(cycles[1])
    return xp.exp(2j * np.pi * rows).astype(dtype) * xp.exp(2j * np.pi * cols).astype(dtype)


def mean_phase_gradient(xp: ModuleType, obj: Any, weight: Any) -> np.ndarray:
    """(row, col) mean phase gradient of ``obj`` in cycles per pixel, ``weight``-ed.

    From the weighted sum of neighbour products ``O[r+1] conj(O[r])`` (no phase
    unwrapping needed).
    """
    obj = xp.where(weight > 0, obj, 0) * weight
    down = complex((obj[1:, :] * xp.conj(obj[:-1, :])).sum())
    right = complex((obj[:, 1:] * xp.conj(obj[:, :-1])).sum())
    return np.array([np.angle(down), np.angle(right)]) / (2 * np.pi)


def remove_mean_ramp(xp: ModuleType, obj: Any, weight: Any) -> Any:
    """``obj`` with its mean phase gradient (over ``weight``) removed."""
    cycles = mean_phase_gradient(xp, obj, weight)
    return obj * ramp(xp, obj.shape, -cycles, str(obj.dtype))
