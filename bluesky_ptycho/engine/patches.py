"""Object windows: extract an (n, M, M) stack of views and its exact adjoint.

Frame ``j`` sees object pixels ``[r_j : r_j + M, c_j : c_j + M]`` where
``corners[j] = (r_j, c_j)`` are integer top-left corners on the object canvas.
``scatter_add`` is the adjoint of ``extract``: <extract(O), V> = <O, scatter_add(V)>.
Both work on NumPy and CuPy arrays (bincount scatters, so overlaps add up).
"""

from __future__ import annotations

from typing import Any

from .backend import array_module_of


def window_flat_indices(corners: Any, frame_shape: tuple[int, int], object_cols: int) -> Any:
    """Flat object indices (n, M, N) of every window pixel; corners (n, 2) int."""
    xp = array_module_of(corners)
    rows = corners[:, 0, None, None] + xp.arange(frame_shape[0])[None, :, None]
    cols = corners[:, 1, None, None] + xp.arange(frame_shape[1])[None, None, :]
    return rows * object_cols + cols


def extract(obj: Any, flat_indices: Any) -> Any:
    """Views ``obj.ravel()[flat_indices]`` as an (n, M, N) stack."""
    return obj.ravel()[flat_indices]


def scatter_add(values: Any, flat_indices: Any, object_shape: tuple[int, int]) -> Any:
    """Sum (n, M, N) ``values`` into an object-shaped array (adjoint of extract)."""
    xp = array_module_of(values)
    size = object_shape[0] * object_shape[1]
    flat = flat_indices.ravel()
    if xp.iscomplexobj(values):
        real = xp.bincount(flat, weights=values.real.ravel(), minlength=size)
        imag = xp.bincount(flat, weights=values.imag.ravel(), minlength=size)
        out = (real + 1j * imag).astype(values.dtype)
    else:
        out = xp.bincount(flat, weights=values.ravel(), minlength=size).astype(values.dtype)
    return out.reshape(object_shape)
