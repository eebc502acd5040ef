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


def orient_frames(frames: Any, name: str) -> Any:
    """Apply the D4 transform ``name`` to the last two axes of ``frames`` (a view)."""
    if name not in D4_ORIENTATIONS:
        raise ValueError(f"dp_orient: expected one of {', '.join(D4_ORIENTATIONS)}, got {name!r}")
    swapped = frames.swapaxes(-1, -2)
    return {
        "identity": frames,
        "rot90_cw": swapped[..., ::-1],
        "rot90_ccw": swapped[..., ::-1, :],
        "rot180": frames[..., ::-1, ::-1],
        "fliplr": frames[..., ::-1],
        "flipud": frames[..., ::-1, :],
        "transpose": swapped,
        "antitranspose": swapped[..., ::-1, ::-1],
    }[name]


def inverse_orientation(name: str) -> str:
    """The D4 name that undoes ``name``."""
    return _INVERSE.get(name, name)


def oriented_point(point: tuple[float, float], shape: tuple[int, int], name: str) -> np.ndarray:
    """(row, col) in the oriented frame of the point ``point`` of a frame as recorded.

    ``shape`` is the recorded frame's shape; fractional points map exactly (the D4
    index maps are affine).
    """
    rows = np.broadcast_to(np.arange(shape[0], dtype=float)[:, None], shape)
    cols = np.broadcast_to(np.arange(shape[1], dtype=float)[None, :], shape)
    # oriented pixel (i, j) shows recorded pixel (src_r[i, j], src_c[i, j]), affine in (i, j)
    src_r, src_c = orient_frames(rows, name), orient_frames(cols, name)
    base = np.array([src_r[0, 0], src_c[0, 0]])
    matrix = np.array(
        [
            [src_r[1, 0] - src_r[0, 0], src_r[0, 1] - src_r[0, 0]],
            [src_c[1, 0] - src_c[0, 0], src_c[0, 1] - src_c[0, 0]],
        ]
    )
    return np.linalg.solve(matrix, np.asarray(point, dtype=float) - base)
