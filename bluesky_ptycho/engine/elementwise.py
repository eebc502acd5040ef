"""Object-sized arithmetic of an iteration without object-sized temporaries.

CuPy's ``vdot`` of two 1-D arrays, ``a / (b + c)`` and ``x += t * d`` each
allocate an object-sized array (at 16,384 frames of 256 x 256 one complex
canvas is 0.37 GB); here each is one fused kernel on CuPy. Numbers computed on
the device (a damping, a conjugate-gradient ``beta``) are taken as device
arrays, so no kernel here waits for a host round trip. On NumPy (host memory)
the plain expressions are kept, so the CPU results stay as they were. The
kernels are compiled on first use.
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
            "T grad, R weight, raw float64 damping",
            "T out",
            "out = grad / (weight + (R)damping[0])",
            "ptycho_preconditioned",
        ),
        "conjugate": cupy.ElementwiseKernel(
            "T step, raw float64 beta",
            "T previous",
            "const double b = beta[0];"
            " previous = b > 0 ? previous * (T::value_type)b - step : -step",
            "ptycho_conjugate",
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
    ``damping`` a number or a 0-d array, on the device: it is not read back)."""
    xp = array_module_of(grad)
    if is_cupy(xp):
        return _kernels()["preconditioned"](grad, weight, _device_number(xp, damping))
    return grad / (weight + damping)


def conjugate(previous: Any, step: Any, beta: Any) -> Any:
    """``previous = beta * previous - step`` in place where ``beta > 0``, else
    ``previous = -step`` (the previous direction's values unused); returns
    ``previous``. ``beta``: a real number or 0-d array (on the device: not read back).
    """
    xp = array_module_of(previous)
    if is_cupy(xp):
        _kernels()["conjugate"](step, _device_number(xp, beta), previous)
    elif beta > 0:
        previous *= float(beta)
        previous -= step
    else:
        xp.negative(step, out=previous)
    return previous


def _device_number(xp: Any, value: Any) -> Any:
    """``value`` (a number or 0-d array) as a one-element float64 device array."""
    return xp.asarray(value, dtype="float64").reshape(1)


def add_scaled(target: Any, scale: float, direction: Any) -> None:
    """``target += scale * direction`` in place (``scale`` real)."""
    xp = array_module_of(target)
    if is_cupy(xp):
        _kernels()["add_scaled"](direction, target.dtype.type(scale), target)
    else:
        target += scale * direction
