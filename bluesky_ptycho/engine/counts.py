"""Compact storage of photon counts: uint16 where the data fit, real otherwise.

The engine works on counts with DC at the corner where a negative value marks
an excluded pixel (mask, saturated, non-finite). Stored on the device that costs
4 bytes a pixel in single precision; integer counts up to ``MAX_COMPACT`` fit in
2 bytes, with ``EXCLUDED`` (65535) as the excluded marker. Data that do not fit
(fractional values, counts above ``MAX_COMPACT``) are stored as the engine's real
type instead; :func:`widen` converts a compact store when later frames do not fit.
Every consumer (the Poisson terms in :mod:`.poisson`, the CUDA kernels) reads
either form.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import array_module_of

COMPACT_DTYPE = np.dtype("uint16")
#: stored value of an excluded pixel in the compact form
EXCLUDED = 65535
#: largest count the compact form holds
MAX_COMPACT = EXCLUDED - 1


def is_compact(stored: Any) -> bool:
    """True when ``stored`` holds counts in the compact uint16 form."""
    return stored.dtype == COMPACT_DTYPE


def fits_compact(counts: Any) -> bool:
    """True when every valid (>= 0) count is an integer <= ``MAX_COMPACT``."""
    if counts.size == 0:
        return True
    xp = array_module_of(counts)
    valid = xp.where(counts >= 0, counts, 0)
    return bool(float(valid.max()) <= MAX_COMPACT and not (valid % 1).any())


def encode(counts: Any, dtype: Any) -> Any:
    """Real counts (negative = excluded) in the storage ``dtype`` (uint16 or real)."""
    if np.dtype(dtype) != COMPACT_DTYPE:
        return counts.astype(dtype, copy=False)
    xp = array_module_of(counts)
    return xp.where(counts >= 0, counts, EXCLUDED).astype(COMPACT_DTYPE)


def decode(stored: Any, real_dtype: Any) -> Any:
    """Stored counts as ``real_dtype`` with -1 at excluded pixels (no copy when real)."""
    if not is_compact(stored):
        return stored.astype(real_dtype, copy=False)
    real = stored.astype(real_dtype)
    real[stored == EXCLUDED] = -1
    return real
