"""Object-sized arithmetic of an iteration without object-sized temporaries.

CuPy's ``vdot`` of two 1-D arrays, ``a / (b + c)`` and ``x += t * d`` each
allocate an object-sized array (at 16,384 frames of 256 x 256 one complex
canvas is 0.37 GB); here each is one fused kernel on CuPy. Numbers computed on
the device (a damping, a conjugate-gradient ``beta``) are taken as device
arrays, so no kernel here waits for a host round trip, and the scalar
arithmetic between them is one launch (:func:`polak_ribiere`), not one per
operation: each launch costs the host more than the GPU's work in it. On NumPy
(host memory) the plain expressions are kept, so the CPU results stay as they
were. The kernels are compiled on first use.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import poisson
from .backend import array_module_of, is_cupy

#: Re <a, b_k> of one array with up to MAX_INNERS others in one read of ``a``: per
#: thread sums in double, then per block, then one atomicAdd per block and value
_REAL_INNERS_SOURCE = r"""
#include <cupy/complex.cuh>

template <typename R>
__global__ void real_inners(const complex<R>* a, const complex<R>* b0, const complex<R>* b1,
                            const complex<R>* b2, int count, long long size, double* out) {
  double sums[3] = {0, 0, 0};
  const complex<R>* others[3] = {b0, b1, b2};
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
       i += (long long)blockDim.x * gridDim.x) {
    const complex<R> x = a[i];
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      if (k < count) {
        const complex<R> y = others[k][i];
        sums[k] += (double)x.real() * y.real() + (double)x.imag() * y.imag();
      }
    }
  }
  __shared__ double partial[3][32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    for (int offset = 16; offset > 0; offset /= 2)
      sums[k] += __shfl_down_sync(0xffffffff, sums[k], offset);
    if (lane == 0) partial[k][warp] = sums[k];
  }
  __syncthreads();
  if (warp == 0) {
    for (int k = 0; k < count; ++k) {
      double value = lane < (blockDim.x + 31) / 32 ? partial[k][lane] : 0.0;
      for (int offset = 16; offset > 0; offset /= 2)
        value += __shfl_down_sync(0xffffffff, value, offset);
      if (lane == 0) atomicAdd(out + k, value);
    }
  }
}
"""
MAX_INNERS = 3
_THREADS = 256
_MAX_BLOCKS = 1024


@functools.cache
def _kernels() -> dict[str, Any]:
    import cupy

    inners = cupy.RawModule(
        code=_REAL_INNERS_SOURCE,
        options=("-std=c++17",),
        name_expressions=["real_inners<float>", "real_inners<double>"],
    )
    return {
        "real_inners": {
            "float32": inners.get_function("real_inners<float>"),
            "float64": inners.get_function("real_inners<double>"),
        },
        "polak_ribiere": cupy.ElementwiseKernel(
            "float64 g_dot_s, float64 g_dot_previous_s, float64 g_dot_previous_d,"
            " float64 previous_g_dot_s, float64 previous_step",
            "float64 beta, float64 slope",
            "const bool descended = previous_g_dot_s > 0 && previous_step > 0;"
            " const double b = max((g_dot_s - g_dot_previous_s)"
            " / (descended ? previous_g_dot_s : 1.0), 0.0);"
            " const double conjugate_slope = 2 * (b * g_dot_previous_d - g_dot_s);"
            " const bool kept = descended && b > 0 && conjugate_slope < 0;"
            " beta = kept ? b : 0.0;"
            " slope = kept ? conjugate_slope : -2 * g_dot_s",
            "ptycho_polak_ribiere",
        ),
        "preconditioned": cupy.ElementwiseKernel(
            "T grad, R weight, raw D damping, float64 scale",
            "T out",
            "out = grad / (weight + (R)(scale * (double)damping[0]))",
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
            "T direction, raw float64 scale",
            "T target",
            "target += (T::value_type)scale[0] * direction",
            "ptycho_add_scaled",
        ),
        "line_search_step": cupy.RawKernel(
            _line_search_step_source(), "line_search_step", options=("--fmad=false",)
        ),
    }


def _line_search_step_source() -> str:
    """:func:`.poisson.line_search_step` as a one-thread kernel (no fused multiply-adds,
    so its arithmetic is the host's)."""
    samples = ", ".join(repr(float(sample)) for sample in poisson.LINE_SEARCH_SAMPLES)
    return (
        f"#define SAMPLES {len(poisson.LINE_SEARCH_SAMPLES)}\n"
        f"#define EXTRAPOLATION {float(poisson.LINE_SEARCH_EXTRAPOLATION)!r}\n"
        f"#define BISECTIONS {poisson.HERMITE_BISECTIONS}\n"
        f"__constant__ double samples[SAMPLES] = {{{samples}}};\n"
        + _LINE_SEARCH_STEP_SOURCE
    )


#: state = [step, scale, steps...] of :func:`line_search_step`; ``sums`` = (L', L'')
#: at the steps, interleaved
_LINE_SEARCH_STEP_SOURCE = r"""
#define INFINITE_SLOPE __longlong_as_double(0x7ff0000000000000LL)
#define UNKNOWN __longlong_as_double(0x7ff8000000000000LL)

__device__ double hermite_root(double low, double high, double slope_low, double curvature_low,
                               double slope_high, double curvature_high) {
  const double width = high - low;
  const double c1 = width * curvature_low;
  const double c2 = 3 * (slope_high - slope_low) - width * (2 * curvature_low + curvature_high);
  const double c3 = 2 * (slope_low - slope_high) + width * (curvature_low + curvature_high);
  double below = 0, above = 1;
  for (int i = 0; i < BISECTIONS; ++i) {
    const double middle = 0.5 * (below + above);
    if (slope_low + middle * (c1 + middle * (c2 + middle * c3)) < 0) below = middle;
    else above = middle;
  }
  return low + 0.5 * (below + above) * width;
}

extern "C" __global__ void line_search_step(const double* slope_at_zero, const double* sums,
                                            const double* state, double* out) {
  const double scale = state[1];
  double step = 0, next = scale;
  if (slope_at_zero[0] < 0) {
    double low = 0, slope_low = slope_at_zero[0], curvature_low = UNKNOWN;
    bool bracketed = false;
    for (int s = 0; s < SAMPLES && !bracketed; ++s) {
      const double high = scale * samples[s];
      double slope = sums[2 * s], curvature = sums[2 * s + 1];
      if (!(isfinite(slope) && isfinite(curvature))) slope = INFINITE_SLOPE, curvature = UNKNOWN;
      if (slope < 0) {
        low = high, slope_low = slope, curvature_low = curvature;
        continue;
      }
      bracketed = true;
      if (isinf(slope)) {  // the bracket ends in overflow
        step = low;
        next = low > 0 ? low : high * samples[0];
      } else if (low == 0) {  // the secant's root
        step = high * slope_low / (slope_low - slope);
        next = fmax(step, high * samples[0]);
      } else {
        step = next = hermite_root(low, high, slope_low, curvature_low, slope, curvature);
      }
    }
    if (!bracketed) {
      step = low * EXTRAPOLATION;
      if (curvature_low > 0) step = fmin(step, low - slope_low / curvature_low);
      next = step;
    }
  }
  out[0] = step;
  out[1] = next;
  for (int s = 0; s < SAMPLES; ++s) out[2 + s] = next * samples[s];
}
"""


def line_search_state(xp: Any, scale: float) -> Any:
    """A line search's state on the device: ``[step, scale, steps...]``, float64, with
    ``step`` 0 and the next pass at ``poisson.sample_steps(scale)``."""
    return xp.asarray([0.0, scale, *poisson.sample_steps(scale)], dtype="float64")


def line_search_step(slope_at_zero: Any, sums: Any, state: Any) -> Any:
    """The state after this pass (:func:`line_search_state`; ``step`` = ``state[:1]``):
    :func:`.poisson.line_search_step` of ``L'(0)`` (a 0-d array), ``sums`` ((S, 2)
    float64: ``L'``, ``L''`` at ``state[2:]``) and ``state``'s scale, computed where
    they are (one launch on CuPy, nothing read back)."""
    xp = array_module_of(sums)
    if is_cupy(xp):
        out = xp.empty_like(state)
        _kernels()["line_search_step"]((1,), (1,), (slope_at_zero, sums, state, out))
        return out
    sums = np.asarray(sums, dtype=np.float64)
    step, scale = poisson.line_search_step(
        float(slope_at_zero), sums[:, 0], sums[:, 1], float(state[1])
    )
    out = line_search_state(np, scale)
    out[0] = step
    return out


def real_inners(a: Any, others: list[Any], total: Any = None) -> Any:
    """``Re <a, b> = Re sum conj(a) b`` for each ``b`` of ``others`` (complex arrays of
    ``a``'s shape and type): a float64 array of len(others) on their device, added to
    ``total`` when given (and returned). On CuPy: float64 sums, one read of ``a`` for
    up to :data:`MAX_INNERS` of them."""
    xp = array_module_of(a)
    total = xp.zeros(len(others), "float64") if total is None else total
    if not is_cupy(xp):
        total += [xp.vdot(a, b).real for b in others]
        return total
    kernel = _kernels()["real_inners"][np.finfo(a.dtype).dtype.name]
    blocks = max(1, min(-(-a.size // _THREADS), _MAX_BLOCKS))
    for first in range(0, len(others), MAX_INNERS):
        group = [xp.ascontiguousarray(b) for b in others[first : first + MAX_INNERS]]
        pointers = group + [group[0]] * (MAX_INNERS - len(group))  # unread
        kernel(
            (blocks,),
            (_THREADS,),
            (
                xp.ascontiguousarray(a),
                *pointers,
                np.int32(len(group)),
                np.int64(a.size),
                total[first:],
            ),
        )
    return total


def polak_ribiere(dots: Any, previous_g_dot_s: Any, previous_step: Any) -> tuple[Any, Any]:
    """Polak-Ribiere ``beta`` and the slope ``L'(0)`` along the conjugate direction
    ``d = beta d_prev - s``, from ``dots = [Re <g, s>, Re <g, s_prev>, Re <g, d_prev>]``
    and the previous ``Re <g, s>`` (``g`` the gradient dL/dz*, ``s`` its preconditioned
    step) and line-search step (0-d arrays). The direction is restarted (``beta`` 0,
    slope ``-2 Re <g, s>``) unless the previous direction descended, its step was not
    0, ``beta > 0`` and the conjugate slope is negative. Two 0-d float64 arrays on the
    device of ``dots`` (one launch on CuPy)."""
    xp = array_module_of(dots)
    if is_cupy(xp):
        return _kernels()["polak_ribiere"](
            dots[0], dots[1], dots[2], previous_g_dot_s, previous_step
        )
    g_dot_s, g_dot_previous_s, g_dot_previous_d = (float(v) for v in dots[:3])
    previous = float(previous_g_dot_s)
    descended = previous > 0 and float(previous_step) > 0
    beta = max((g_dot_s - g_dot_previous_s) / (previous if descended else 1.0), 0.0)
    conjugate_slope = 2 * (beta * g_dot_previous_d - g_dot_s)
    kept = descended and beta > 0 and conjugate_slope < 0
    return (
        np.asarray(beta if kept else 0.0),
        np.asarray(conjugate_slope if kept else -2 * g_dot_s),
    )


def preconditioned(grad: Any, weight: Any, damping: Any, scale: float = 1.0) -> Any:
    """``grad / (weight + scale * damping)``: a new complex array (``weight`` real, same
    shape; ``damping`` a number or a 0-d array, on the device: it is not read back)."""
    xp = array_module_of(grad)
    if is_cupy(xp):
        damping = xp.asarray(damping).reshape(1)  # a device value stays as it is
        return _kernels()["preconditioned"](grad, weight, damping, float(scale))
    return grad / (weight + scale * damping)


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


def add_scaled(target: Any, scale: Any, direction: Any) -> None:
    """``target += scale * direction`` in place (``scale`` real: a number or a 0-d or
    one-element array, on the device: not read back)."""
    xp = array_module_of(target)
    if is_cupy(xp):
        _kernels()["add_scaled"](direction, _device_number(xp, scale), target)
    else:
        target += float(np.asarray(scale).reshape(-1)[0]) * direction
