"""Poisson likelihood of far-field models against photon counts, and the amplitude model.

``counts`` hold photons with DC at the corner; excluded pixels (mask, saturated)
carry a negative value and contribute nothing (counts stored in the compact
uint16 form of :mod:`.counts` are accepted too). For model far field ``a``:

    I = |a|^2 + eps
    L = sum m (I - n - n ln(I / n))      (NLL minus its saturated value, >= 0)
    dL/da* = m (1 - n / I) a

``L`` differs from ``sum m (I - n ln I)`` by a constant, so it has the same
minimiser; it is ~0.5 per pixel at the noise level, which makes it readable.

The ``"amplitude"`` model fits amplitudes instead (Gaussian noise on ``sqrt(n)``,
the variance-stabilised form of Poisson noise):

    L_A = sum m (sqrt(I) - sqrt(n))^2
    dL_A/da* = m (1 - sqrt(n / I)) a

Far from the solution (model intensities far below the counts, as in the dark
field of a first object guess) its weights grow like ``sqrt(n / I)`` where the
Poisson ones grow like ``n / I``, so it is better conditioned there: the engine
fits it for its first ``ReconConfig.amplitude_iterations`` iterations.

Along a search direction with far fields ``b`` (linear term) and ``c``
(quadratic term) the model is ``a(t) = a + t b + t^2 c`` exactly;
:func:`line_search_step` takes the step to the first minimum of ``L(t)`` from
its exact derivatives at several steps at once (one read of the stacks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import counts as count_store
from .backend import array_module_of

#: noise models of :func:`farfield_gradient` and :func:`line_search_terms`
NOISE_MODELS = ("poisson", "amplitude")
#: floor added to model intensities (photons) so n ln I stays finite
EPS_PHOTONS = 1e-6
#: steps of one line-search pass, as multiples of the pass's scale (first pass: the
#: previous step; the step ratio between iterations spans ~0.06-14 at 5-95 %)
LINE_SEARCH_SAMPLES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
#: with every sampled slope negative the step goes at most this many times beyond
#: the largest sample (the next line search samples around it)
LINE_SEARCH_EXTRAPOLATION = 2.0
#: bisections of the Hermite interpolant (the step to 2^-30 of the bracket)
HERMITE_BISECTIONS = 30


def _pixel_nll(intensity: Any, counts: Any) -> Any:
    xp = array_module_of(intensity)
    safe_counts = xp.maximum(counts, 1e-30)
    terms = intensity - counts - xp.where(counts > 0, counts * xp.log(intensity / safe_counts), 0)
    return xp.where(counts >= 0, terms, 0)


def negative_log_likelihood(farfield: Any, counts: Any, noise_model: str = "poisson") -> float:
    """Poisson NLL relative to the saturated model (or, with ``noise_model="amplitude"``,
    ``L_A``), summed over valid pixels."""
    intensity = farfield.real**2 + farfield.imag**2 + EPS_PHOTONS
    counts = count_store.decode(counts, intensity.dtype)
    if _check_model(noise_model) == "amplitude":
        xp = array_module_of(intensity)
        misfit = (xp.sqrt(intensity) - xp.sqrt(xp.maximum(counts, 0))) ** 2
        return float(xp.where(counts >= 0, misfit, 0).sum(dtype="float64"))
    return float(_pixel_nll(intensity, counts).sum(dtype="float64"))


def farfield_gradient(farfield: Any, counts: Any, noise_model: str = "poisson") -> Any:
    """dL/da*: ``m (1 - n / I) a`` (``m (1 - sqrt(n / I)) a`` for the amplitude model)
    with the mask taken from negative counts."""
    xp = array_module_of(farfield)
    intensity = farfield.real**2 + farfield.imag**2 + EPS_PHOTONS
    counts = count_store.decode(counts, intensity.dtype)
    ratio = counts / intensity
    if _check_model(noise_model) == "amplitude":
        ratio = xp.sqrt(xp.maximum(ratio, 0))
    factor = xp.where(counts >= 0, 1 - ratio, 0).astype(farfield.real.dtype)
    return factor * farfield


def line_search_terms(
    farfield: Any,
    linear: Any,
    quadratic: Any | None,
    counts: Any,
    steps: Sequence[float],
    noise_model: str = "poisson",
) -> tuple[np.ndarray, np.ndarray]:
    """``L'(t), L''(t)`` at each ``t`` in ``steps`` for ``a(t) = a + t b + t^2 c``.

    With ``I' = 2 Re(a* a')`` and ``I'' = 2 |a'|^2 + 4 Re(a* c)``:
    Poisson ``L' = sum w I'``, ``L'' = sum w I'' + n / I^2 I'^2`` with ``w = 1 - n / I``;
    amplitude the same with ``w = 1 - sqrt(n / I)`` and ``sqrt(n) / (2 I^1.5)`` for
    ``n / I^2``. Returns two float64 NumPy arrays of ``len(steps)`` values (one
    read of the stacks in the fused kernel; here one vectorised pass per step).
    """
    xp = array_module_of(farfield)
    counts = count_store.decode(counts, farfield.real.dtype)
    valid = counts >= 0
    numerator = ratio_numerator(counts, noise_model)
    slopes, curvatures = np.zeros(len(steps)), np.zeros(len(steps))
    for index, tau in enumerate(steps):
        model_field = farfield + tau * linear
        slope_field = linear
        if quadratic is not None:
            model_field += (tau * tau) * quadratic
            slope_field = linear + (2 * tau) * quadratic
        intensity = model_field.real**2 + model_field.imag**2 + EPS_PHOTONS
        d1 = 2 * (model_field.real * slope_field.real + model_field.imag * slope_field.imag)
        d2 = 2 * (slope_field.real**2 + slope_field.imag**2)
        if quadratic is not None:
            d2 += 4 * (model_field.real * quadratic.real + model_field.imag * quadratic.imag)
        ratio = weight_ratio(numerator, intensity, noise_model)
        weight = xp.where(valid, 1 - ratio, 0)
        slopes[index] = float((weight * d1).sum(dtype="float64"))
        curvatures[index] = float((weight * d2 + ratio / intensity * d1 * d1).sum(dtype="float64"))
    return slopes, curvatures


def ratio_numerator(counts: Any, noise_model: str) -> Any:
    """The numerator of :func:`weight_ratio`: ``n`` (Poisson) or ``sqrt(n)`` (amplitude)
    at valid pixels, 0 at excluded ones (real ``counts``, negative where excluded)."""
    xp = array_module_of(counts)
    numerator = xp.where(counts >= 0, counts, 0)
    return xp.sqrt(numerator) if _check_model(noise_model) == "amplitude" else numerator


def weight_ratio(numerator: Any, intensity: Any, noise_model: str) -> Any:
    """``n / I`` (Poisson) or ``sqrt(n / I)`` (amplitude): the line search's weight is
    ``1 - ratio``. ``intensity`` is scaled in place so that ``ratio / intensity`` is
    the curvature's coefficient (``n / I^2``; ``sqrt(n) / (2 I^1.5)``)."""
    if _check_model(noise_model) == "amplitude":
        ratio = numerator / array_module_of(intensity).sqrt(intensity)
        intensity *= 2
        return ratio
    return numerator / intensity


def _check_model(noise_model: str) -> str:
    if noise_model not in NOISE_MODELS:
        raise ValueError(f"noise model: expected one of {NOISE_MODELS}, got {noise_model!r}")
    return noise_model


def line_search_step(
    slope_at_zero: float, slopes: Sequence[float], curvatures: Sequence[float], scale: float
) -> tuple[float, float]:
    """(step, next scale) from one pass at ``sample_steps(scale)``: no second pass.

    ``slopes`` and ``curvatures`` are ``L'`` and ``L''`` at those steps (a
    non-finite value counts as an upper bound). The step is 0 when ``L'(0) >= 0``.
    Otherwise the first pair of known steps (0 included) where ``L'`` turns from
    negative to non-negative brackets the minimum: the root of the cubic Hermite
    interpolant of ``L'`` there is the step. On ``[0, t_1]``, where ``L''(0)`` is
    not known, it is the secant's root (short of the minimiser where ``L'`` is
    convex, as it grows with the intensities' squares: still a descent), and the
    next line search starts from ``t_1 / 8`` at least; a bracket closed by an
    overflow gives its lower end. With every slope negative the step is Newton's
    from the largest sample, at most :data:`LINE_SEARCH_EXTRAPOLATION` times it.
    The next line search's scale is the step (unchanged after a step of 0, 1/8 of
    the smallest sample after an overflow there). The rule of
    :func:`~.elementwise.line_search_step`'s kernel.
    """
    steps = sample_steps(scale)
    known = [(0.0, float(slope_at_zero), math.nan)]
    for tau, slope, curvature in zip(steps, slopes, curvatures, strict=True):
        finite = math.isfinite(slope) and math.isfinite(curvature)
        known.append((tau, float(slope), float(curvature)) if finite else (tau, math.inf, math.nan))
    if not known[0][1] < 0:
        return 0.0, scale
    for (low, slope_low, curvature_low), (high, slope_high, curvature_high) in zip(
        known, known[1:], strict=False
    ):
        if slope_high < 0:
            continue
        if math.isinf(slope_high):  # the bracket ends in overflow
            return (low, low) if low > 0 else (0.0, high * LINE_SEARCH_SAMPLES[0])
        if low == 0:  # the secant's root
            tau = high * slope_low / (slope_low - slope_high)
            return tau, max(tau, high * LINE_SEARCH_SAMPLES[0])
        tau = _hermite_root(low, high, slope_low, curvature_low, slope_high, curvature_high)
        return tau, tau
    last, slope_last, curvature_last = known[-1]
    tau = last * LINE_SEARCH_EXTRAPOLATION
    if curvature_last > 0:
        tau = min(tau, last - slope_last / curvature_last)
    return tau, tau


def sample_steps(scale: float) -> list[float]:
    """The steps of one line-search pass: :data:`LINE_SEARCH_SAMPLES` times ``scale``."""
    return [scale * sample for sample in LINE_SEARCH_SAMPLES]


def _hermite_root(
    low: float, high: float, slope_low: float, curvature_low: float, slope_high: float,
    curvature_high: float,
) -> float:
    """Root in [low, high] of the cubic Hermite interpolant of L' (L'(low) < 0 <= L'(high))."""
    width = high - low
    coefficients = (  # L'(low + s width) in powers of s, s in [0, 1]
        slope_low,
        width * curvature_low,
        3 * (slope_high - slope_low) - width * (2 * curvature_low + curvature_high),
        2 * (slope_low - slope_high) + width * (curvature_low + curvature_high),
    )

    def value(s: float) -> float:
        return coefficients[0] + s * (coefficients[1] + s * (coefficients[2] + s * coefficients[3]))

    below, above = 0.0, 1.0
    for _ in range(HERMITE_BISECTIONS):
        middle = 0.5 * (below + above)
        if value(middle) < 0:
            below = middle
        else:
            above = middle
    return low + 0.5 * (below + above) * width
