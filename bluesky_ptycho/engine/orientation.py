"""The eight D4 orientations of a detector frame, applied on the last two axes.

Names follow docs/engine.md: ``rot90_cw`` turns the picture a quarter turn
clockwise as displayed with row 0 at the top; ``transpose`` swaps rows and
columns; ``antitranspose`` mirrors about the other diagonal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import D4_ORIENTATIONS

_INVERSE = {"rot90_cw": "rot90_ccw", "rot90_ccw": "rot90_cw"}

#: each name as (swap rows and columns, then flip rows, flip columns)
_OPERATIONS = {
    "identity": (False, False, False),
    "rot90_cw": (True, False, True),
    "rot90_ccw": (True, True, False),
    "rot180": (False, True, True),
    "fliplr": (False, False, True),
    "flipud": (False, True, False),
    "transpose": (True, False, False),
    "antitranspose": (True, True, True),
}


def _flip_about_centre(frames: Any, axis: int) -> Any:
    """Mirror an axis about its centre pixel ``n // 2`` (index k -> (2 (n // 2) - k) mod n).

    For odd ``n`` that is a plain reversal; for even ``n`` the reversal moves the
    centre pixel by one, so the result is rolled back by one pixel.
    """
    flipped = frames[(Ellipsis, slice(None, None, -1)) if axis == -1 else
                     (Ellipsis, slice(None, None, -1), slice(None))]  # fmt: skip
    if frames.shape[axis] % 2:
        return flipped
    xp = _array_module(frames)
    return xp.roll(flipped, 1, axis=axis)


def _array_module(frames: Any) -> Any:
    if hasattr(frames, "__cuda_array_interface__"):
        import cupy

        return cupy
    return np


def orient_frames(frames: Any, name: str) -> Any:
    """Apply the D4 transform ``name`` to the last two axes of ``frames``.

    The transform is about the zero-frequency pixel ``(M // 2, N // 2)`` of a
    DC-centred frame, which it keeps in place for every name and frame size.
    """
    if name not in D4_ORIENTATIONS:
        raise ValueError(f"dp_orient: expected one of {', '.join(D4_ORIENTATIONS)}, got {name!r}")
    swap, flip_rows, flip_cols = _OPERATIONS[name]
    if swap:
        frames = frames.swapaxes(-1, -2)
    if flip_rows:
        frames = _flip_about_centre(frames, -2)
    if flip_cols:
        frames = _flip_about_centre(frames, -1)
    return frames


def inverse_orientation(name: str) -> str:
    """The D4 name that undoes ``name``."""
    return _INVERSE.get(name, name)


def oriented_point(point: tuple[float, float], shape: tuple[int, int], name: str) -> np.ndarray:
    """(row, col) in the oriented frame of the point ``point`` of a frame as recorded.

    ``shape`` is the recorded frame's shape; the map is the D4 transform about
    the centre pixel ``(M // 2, N // 2)``, exact for fractional points.
    """
    swap, flip_rows, flip_cols = _OPERATIONS[name]
    centre = np.array(shape) // 2
    offset = np.asarray(point, dtype=float) - centre
    if swap:
        offset = offset[::-1]
        centre = centre[::-1]
    return centre + offset * np.array([-1.0 if flip_rows else 1.0, -1.0 if flip_cols else 1.0])
