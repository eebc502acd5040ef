"""Gaussian (squared-gradient) prior on the object, as ptypy's ML engine offers.

    R(O) = mu * sum over neighbour pairs (a, b) inside the canvas of |O_a - O_b|^2

It is exactly quadratic, so along a direction ``d``:
``R(O + t d) = R(O) + 2 t Re <g, d> + t^2 R_mu(d)`` with ``g = dR/dO* = -mu Lap(O)``
(the five-point Laplacian with free edges). The engine adds ``g`` to the object
gradient, ``4 mu`` (the diagonal of R's Hessian) to the object preconditioner and
``2 R_mu(d)`` to the line search's curvature.
"""

from __future__ import annotations

from typing import Any


def gradient(obj: Any, mu: float) -> Any:
    """``dR/dO*`` on the canvas."""
    out = obj * 0
    down = obj[1:, :] - obj[:-1, :]
    out[1:, :] += down
    out[:-1, :] -= down
    right = obj[:, 1:] - obj[:, :-1]
    out[:, 1:] += right
    out[:, :-1] -= right
    return mu * out


def energy(obj: Any, mu: float) -> float:
    """``R(obj)``: ``mu`` times the summed squared neighbour differences."""
    down = obj[1:, :] - obj[:-1, :]
    right = obj[:, 1:] - obj[:, :-1]
    return mu * float((down.real**2 + down.imag**2).sum() + (right.real**2 + right.imag**2).sum())
