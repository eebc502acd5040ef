"""Sub-pixel probe positions: bilinear shift of the probe and its exact adjoint.

A probe at canvas position ``p = R + f`` (integer corner ``R``, fraction
``0 <= f < 1`` per axis) illuminates the window at ``R`` with
``P_j(r) = P(r - f)``, interpolated bilinearly from the four whole-pixel
shifts of ``P`` (zero filled at the edge):

    P_j = sum_k w_jk S_k P,   S_k shifts by (0,0), (0,1), (1,0), (1,1) pixels.

The adjoint of ``P -> {P_j}`` is ``{H_j} -> sum_k S_k^T (sum_j w_jk H_j)``; the
inner sum over frames is one (4, n) x (n, M*N) matrix product.
"""

from __future__ import annotations

from typing import Any

from .backend import array_module_of

#: (row, col) whole-pixel offsets of the four bilinear taps
TAPS = ((0, 0), (0, 1), (1, 0), (1, 1))


def bilinear_weights(fractions: Any) -> Any:
    """(n, 4) weights of the taps for (n, 2) fractional offsets (row, col)."""
    xp = array_module_of(fractions)
    fy, fx = fractions[:, 0], fractions[:, 1]
    return xp.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=1)


def shift_whole(image: Any, dy: int, dx: int) -> Any:
    """``out[r, c] = image[r - dy, c - dx]`` on the last two axes, zero filled."""
    xp = array_module_of(image)
    out = xp.zeros_like(image)
    rows, cols = image.shape[-2:]
    out[..., dy:, dx:] = image[..., : rows - dy, : cols - dx]
    return out


def shift_whole_adjoint(image: Any, dy: int, dx: int) -> Any:
    """Adjoint of :func:`shift_whole`: ``out[r, c] = image[r + dy, c + dx]``."""
    xp = array_module_of(image)
    out = xp.zeros_like(image)
    rows, cols = image.shape[-2:]
    out[..., : rows - dy, : cols - dx] = image[..., dy:, dx:]
    return out


def tap_stack(probe: Any) -> Any:
    """(4, M, N) stack of the probe shifted by each tap."""
    xp = array_module_of(probe)
    return xp.stack([shift_whole(probe, dy, dx) for dy, dx in TAPS])


def shifted_probes(probe: Any, weights: Any) -> Any:
    """(n, M, N) probes ``P_j`` for (n, 4) bilinear ``weights``."""
    xp = array_module_of(probe)
    taps = tap_stack(probe)
    return xp.tensordot(weights.astype(taps.real.dtype), taps, axes=(1, 0))


def shifted_probes_adjoint(stack: Any, weights: Any) -> Any:
    """Adjoint of :func:`shifted_probes`: an (M, N) array from an (n, M, N) stack."""
    xp = array_module_of(stack)
    per_tap = xp.tensordot(weights.T.astype(stack.real.dtype), stack, axes=(1, 0))
    return sum(shift_whole_adjoint(per_tap[k], dy, dx) for k, (dy, dx) in enumerate(TAPS))
