"""Downsampled images of a snapshot, for live outputs (Tiled live nodes, derived documents).

Binning averages ``factor x factor`` blocks of the complex object (NaN pixels,
i.e. unreached ones, are left out of a block's mean; an all-NaN block stays NaN),
so amplitude and phase come from the averaged field. Blocks start at canvas
pixel [0, 0], so a binned image's pixel [0, 0] has the canvas origin
(``origin_m``) and its pixels are ``factor`` times larger.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..engine.reconstructor import Snapshot

#: side, in pixels, of the fixed-size images of the derived run's ``snapshots`` stream
PREVIEW_PX = 128
#: rows of an image one thread converts or bins at a time (NumPy releases the GIL)
ROWS_PER_TASK = 256
#: threads for image conversions: a full-size 5000 x 5000 object takes ~2 s on one core
IMAGE_THREADS = min(8, os.cpu_count() or 1)


def binning_for(shape: tuple[int, ...], max_bytes: int, itemsize: int = 4) -> int:
    """Smallest integer factor that bins a 2-D ``shape`` to at most ``max_bytes``."""
    rows, cols = int(shape[0]), int(shape[1])
    factor = 1
    while math.ceil(rows / factor) * math.ceil(cols / factor) * itemsize > max_bytes:
        factor += 1
    return factor


def bin_image(image: np.ndarray, factor: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Block mean of a 2-D (real or complex) ``image`` over ``factor`` x ``factor`` blocks.

    NaN pixels are left out; padding (to a multiple of ``factor``, or to ``size``
    binned pixels when given) is NaN. Bands of blocks are binned in threads.
    """
    rows, cols = image.shape
    out_rows, out_cols = size or (math.ceil(rows / factor), math.ceil(cols / factor))
    if factor == 1:
        padded = np.full((out_rows, out_cols), np.nan, dtype=image.dtype)
        padded[: min(rows, out_rows), : min(cols, out_cols)] = image[:out_rows, :out_cols]
        return padded
    out = np.full((out_rows, out_cols), np.nan, dtype=image.dtype)

    def band(first: int, stop: int) -> None:
        block = np.full(((stop - first) * factor, out_cols * factor), np.nan, dtype=image.dtype)
        source = image[first * factor : stop * factor, : out_cols * factor]
        block[: source.shape[0], : source.shape[1]] = source
        finite = np.isfinite(block)
        block[~finite] = 0
        shape = (stop - first, factor, out_cols, factor)
        total = block.reshape(shape).sum(axis=3).sum(axis=1)
        count = finite.reshape(shape).sum(axis=3).sum(axis=1)
        np.divide(total, count, out=out[first:stop], where=count > 0)

    bands = max(1, ROWS_PER_TASK // factor)
    _in_threads(band, out_rows, bands)
    return out


def amplitude_phase(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 amplitude and phase of a complex image, 0 where it is not finite
    (computed in bands of rows, in threads)."""
    amplitude = np.empty(field.shape, np.float32)
    phase = np.empty(field.shape, np.float32)

    def band(first: int, stop: int) -> None:
        part = field[first:stop]
        np.abs(part, out=amplitude[first:stop], casting="same_kind")
        np.arctan2(part.imag, part.real, out=phase[first:stop], casting="same_kind")
        for image in (amplitude[first:stop], phase[first:stop]):
            np.nan_to_num(image, copy=False, nan=0.0, posinf=0.0, neginf=0.0)

    _in_threads(band, field.shape[0] if field.ndim else 0, ROWS_PER_TASK)
    return amplitude, phase


def _in_threads(task: Any, n_rows: int, rows_per_task: int) -> None:
    """``task(first, stop)`` over bands of ``n_rows`` rows, in :data:`IMAGE_THREADS` threads."""
    bands = [
        (first, min(first + rows_per_task, n_rows)) for first in range(0, n_rows, rows_per_task)
    ]
    if len(bands) <= 1 or IMAGE_THREADS == 1:
        for first, stop in bands:
            task(first, stop)
        return
    with ThreadPoolExecutor(max_workers=IMAGE_THREADS) as pool:
        for future in [pool.submit(task, first, stop) for first, stop in bands]:
            future.result()


def fixed_preview(snapshot: Snapshot, size_px: int = PREVIEW_PX) -> dict[str, Any]:
    """Images of ``snapshot`` on a ``size_px`` square grid whatever the canvas size.

    The canvas is binned by the smallest factor that fits it in ``size_px`` and
    padded (bottom, right) with uncovered pixels. Returns float32 arrays
    ``snapshot_amplitude``, ``snapshot_phase`` (0 where uncovered),
    ``snapshot_coverage`` (0 where uncovered), ``probe_amplitude``,
    ``probe_phase``, and the grid's ``snapshot_origin_m`` / ``snapshot_pixel_m``
    ((y, x) metres).
    """
    obj = np.asarray(snapshot.object)
    factor = max(1, math.ceil(max(obj.shape) / size_px)) if obj.size else 1
    grid = (size_px, size_px)
    binned = bin_image(obj, factor, grid) if obj.size else np.full(grid, np.nan, np.complex64)
    coverage = np.asarray(snapshot.coverage, dtype=np.float32)
    cov = bin_image(coverage, factor, grid) if coverage.size else np.full(grid, np.nan)
    probe = np.asarray(snapshot.probe)
    amplitude, phase = amplitude_phase(binned)
    return {
        "snapshot_amplitude": amplitude,
        "snapshot_phase": phase,
        "snapshot_coverage": np.nan_to_num(cov).astype(np.float32),
        "probe_amplitude": np.abs(probe).astype(np.float32),
        "probe_phase": np.angle(probe).astype(np.float32),
        "snapshot_origin_m": np.asarray(snapshot.origin_m, dtype=np.float64),
        "snapshot_pixel_m": np.asarray(snapshot.pixel_m, dtype=np.float64) * factor,
    }


def data_keys_of(data: dict[str, Any], source: str = "bluesky_ptycho") -> dict[str, dict]:
    """Event-model data keys describing the arrays of ``data`` (shape, dtype)."""
    return {
        key: {
            "source": source,
            "dtype": "array",
            "shape": list(np.shape(value)),
            "dtype_numpy": np.asarray(value).dtype.str,
        }
        for key, value in data.items()
    }
