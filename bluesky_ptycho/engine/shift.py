"""Sub-pixel probe positions: interpolated probe shifts and their exact adjoint.

A probe at canvas position ``p = R + f`` (integer corner ``R``, fraction
``0 <= f < 1`` per axis) illuminates the window at ``R`` with
``P_j(r) = P(r - f)``, interpolated from whole-pixel shifts of ``P``
(``S_s P (r) = P(r - s)``, circular: the probe is a periodic band-limited field
on its grid, as the FFT-based forward model and probe propagation treat it):

    P_j = sum_k w_jk S_k P,      w_jk = k(s_k,row - f_row) * k(s_k,col - f_col)

with the separable kernel ``k`` of the interpolation: ``"cubic"`` (Keys,
a = -1/2; shifts -1..2 per axis, 16 taps), ``"linear"`` (shifts 0..1, 4 taps) or
``"nearest"`` (positions rounded to whole pixels: one tap). The adjoint of
``P -> {P_j}`` is ``{H_j} -> sum_k S_k^T (sum_j w_jk H_j)``; the inner sum over
frames is one (K, n) x (n, M*N) matrix product.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import array_module_of


def xp_is_numpy(array: Any) -> bool:
    return isinstance(array, np.ndarray)


#: whole-pixel shifts per axis of each interpolation
SHIFTS = {"nearest": (0,), "linear": (0, 1), "cubic": (-1, 0, 1, 2)}
INTERPOLATIONS = tuple(SHIFTS)
KEYS_A = -0.5


def taps(kind: str) -> list[tuple[int, int]]:
    """(row, col) whole-pixel shifts of the taps of interpolation ``kind``, row-major."""
    return [(dy, dx) for dy in SHIFTS[kind] for dx in SHIFTS[kind]]


def _kernel(distance: Any, kind: str) -> Any:
    xp = array_module_of(distance)
    x = xp.abs(distance)
    if kind == "nearest":
        return xp.ones_like(x)
    if kind == "linear":
        return xp.maximum(1 - x, 0)
    a = KEYS_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return xp.where(x <= 1, near, xp.where(x < 2, far, 0))


def split_positions(top_left: Any, kind: str) -> tuple[Any, Any]:
    """Integer window corners and fractional offsets of (n, 2) exact window positions.

    Rounded corners and zero-weight-free fractions for ``"nearest"``; floors
    (fractions in [0, 1)) otherwise.
    """
    xp = array_module_of(top_left)
    corners = xp.floor(top_left + 0.5) if kind == "nearest" else xp.floor(top_left)
    return corners.astype(xp.int64), top_left - corners


def interpolation_weights(fractions: Any, kind: str) -> Any:
    """(n, K) tap weights for (n, 2) fractional offsets (row, col) in [0, 1)."""
    xp = array_module_of(fractions)
    shifts = xp.asarray(SHIFTS[kind], dtype=fractions.dtype)
    rows = _kernel(shifts[None, :] - fractions[:, :1], kind)  # (n, T)
    cols = _kernel(shifts[None, :] - fractions[:, 1:], kind)
    return (rows[:, :, None] * cols[:, None, :]).reshape(len(fractions), rows.shape[1] ** 2)


def shift_whole(image: Any, dy: int, dx: int) -> Any:
    """``out[r, c] = image[r - dy, c - dx]`` on the last two axes, circular."""
    xp = array_module_of(image)
    return xp.roll(image, (dy, dx), axis=(-2, -1))


def tap_stack(probe: Any, kind: str) -> Any:
    """(K, M, N) stack of the probe shifted by each tap."""
    xp = array_module_of(probe)
    return xp.stack([shift_whole(probe, dy, dx) for dy, dx in taps(kind)])


def weighted_sum(weights: Any, stack: Any) -> Any:
    """``out[a] = sum_b weights[a, b] * stack[b]`` for real (A, B) weights, (B, M, N) stack.

    One real matrix product, also for complex stacks (viewed as interleaved
    real and imaginary parts), so no complex arithmetic is wasted on real weights.
    On NumPy a single-threaded einsum loop does it: a multi-threaded BLAS would
    compete for the cores with the scan when the engine runs in a RunEngine's
    process (measured: a live CPU reconstruction slowed a 2-core scan 2.4x with
    threaded BLAS, 1.3x without).
    """
    stack = stack.reshape(stack.shape[0], -1)
    if not stack.flags.c_contiguous:
        stack = stack.copy()
    real = stack.real.dtype
    flat = stack.view(real) if stack.dtype.kind == "c" else stack
    if xp_is_numpy(flat):
        out = np.einsum("ab,bm->am", weights.astype(real), flat)
    else:
        out = weights.astype(real) @ flat
    if stack.dtype.kind == "c":
        out = out.view(stack.dtype)
    return out.reshape(weights.shape[0], -1)


def shifted_probes(probe: Any, weights: Any, kind: str) -> Any:
    """(n, M, N) probes ``P_j`` for (n, K) tap ``weights``."""
    return weighted_sum(weights, tap_stack(probe, kind)).reshape(-1, *probe.shape)


def tap_sums(stack: Any, weights: Any) -> Any:
    """(K, M, N) inner sums ``sum_j w_jk H_j`` of the adjoint; additive over frame chunks."""
    return weighted_sum(weights.T, stack).reshape(-1, *stack.shape[1:])


def combine_taps(per_tap: Any, kind: str) -> Any:
    """Outer sum ``sum_k S_k^T per_tap[k]`` of the adjoint: an (M, N) array."""
    return sum(shift_whole(per_tap[k], -dy, -dx) for k, (dy, dx) in enumerate(taps(kind)))


def shifted_probes_adjoint(stack: Any, weights: Any, kind: str) -> Any:
    """Adjoint of :func:`shifted_probes`: an (M, N) array from an (n, M, N) stack."""
    return combine_taps(tap_sums(stack, weights), kind)
