"""Downsampled images of a snapshot, for live outputs (Tiled live nodes, derived documents).

Binning averages ``factor x factor`` blocks of the complex object (NaN pixels,
i.e. unreached ones, are left out of a block's mean; an all-NaN block stays NaN),
so amplitude and phase come from the averaged field. Blocks start at canvas
pixel [0, 0], so a binned image's pixel [0, 0] has the canvas origin
(``origin_m``) and its pixels are ``factor`` times larger.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..engine.reconstructor import Snapshot

#: side, in pixels, of the fixed-size images of the derived run's ``snapshots`` stream
PREVIEW_PX = 128


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
    binned pixels when given) is NaN.
    """
    rows, cols = image.shape
    out_rows, out_cols = size or (math.ceil(rows / factor), math.ceil(cols / factor))
    padded = np.full((out_rows * factor, out_cols * factor), np.nan, dtype=image.dtype)
    padded[: min(rows, out_rows * factor), : min(cols, out_cols * factor)] = image[
        : out_rows * factor, : out_cols * factor
    ]
    if factor == 1:
        return padded
    blocks = padded.reshape(out_rows, factor, out_cols, factor)
    finite = np.isfinite(blocks)
    total = np.where(finite, blocks, 0).sum(axis=(1, 3))
    count = finite.sum(axis=(1, 3))
    out = np.full(total.shape, np.nan, dtype=image.dtype)
    np.divide(total, count, out=out, where=count > 0)
    return out


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
    return {
        "snapshot_amplitude": np.nan_to_num(np.abs(binned)).astype(np.float32),
        "snapshot_phase": np.nan_to_num(np.angle(binned)).astype(np.float32),
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
