"""Object-sized arithmetic of an iteration without object-sized temporaries.

CuPy's ``vdot`` of two 1-D arrays, ``a / (b + c)`` and ``x += t * d`` each
allocate an object-sized array (at 16,384 frames of 256 x 256 one complex
canvas is 0.37 GB); here each is one fused kernel on CuPy. On NumPy (host
memory) the plain expressions are kept, so the CPU results stay as they were.
The kernels are compiled on first use.
"""

from __future__ import annotations

import functools
from typing import Any

from .backend import array_module_of, is_cupy


@functools.cache
def _kernels() -> dict[str, Any]:
    import cupy

    return {
        "real_inner": cupy.ReductionKernel(
            "T a, T b",
            "float64 out",
            "(double)a.real() * (double)b.real() + (double)a.imag() * (double)b.imag()",
            "a + b",
            "out = a",
            "0",
            "ptycho_real_inner",
        ),
        "preconditioned": cupy.ElementwiseKernel(
            "T grad, R weight, R damping",
            "T out",
            "out = grad / (weight + damping)",
            "ptycho_preconditioned",
        ),
        "add_scaled": cupy.ElementwiseKernel(
            "T direction, T scale",
            "T target",
            "target += scale * direction",
            "ptycho_add_scaled",
        ),
    }


def real_inner(a: Any, b: Any) -> Any:
    """``Re <a, b> = Re sum conj(a) b`` of two complex arrays of one shape: a 0-d
    array on their device (float64 sums on CuPy)."""
    xp = array_module_of(a)
    if is_cupy(xp):
        # row sums first: a reduction to one value would run in one thread block
        rows = _kernels()["real_inner"](a, b, axis=a.ndim - 1) if a.ndim > 1 else None
        return rows.sum() if rows is not None else _kernels()["real_inner"](a, b)
    return xp.vdot(a, b).real


def preconditioned(grad: Any, weight: Any, damping: Any) -> Any:
    """``grad / (weight + damping)``: a new complex array (``weight`` real, same shape;
    ``damping`` a number or a 0-d array)."""
    xp = array_module_of(grad)
    if is_cupy(xp):
        return _kernels()["preconditioned"](grad, weight, weight.dtype.type(float(damping)))
    return grad / (weight + damping)


def add_scaled(target: Any, scale: float, direction: Any) -> None:
    """``target += scale * direction`` in place (``scale`` real)."""
    xp = array_module_of(target)
    if is_cupy(xp):
        _kernels()["add_scaled"](direction, target.dtype.type(scale), target)
    else:
        target += scale * direction
