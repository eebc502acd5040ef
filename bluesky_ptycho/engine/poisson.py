"""Poisson likelihood of far-field models against photon counts.

``counts`` hold photons with DC at the corner; excluded pixels (mask, saturated)
carry a negative value and contribute nothing. For model far field ``a``:

    I = |a|^2 + eps
    L = sum m (I - n - n ln(I / n))      (NLL minus its saturated value, >= 0)
    dL/da* = m (1 - n / I) a

``L`` differs from ``sum m (I - n ln I)`` by a constant, so it has the same
minimiser; it is ~0.5 per pixel at the noise level, which makes it readable.

Along a search direction with far fields ``b`` (linear term) and ``c``
(quadratic term) the model is ``a(t) = a + t b + t^2 c`` exactly;
:func:`line_search` minimises ``L(t)`` by safeguarded Newton steps on exact
derivatives.
"""

from __future__ import annotations

import math
from typing import Any

from .backend import array_module_of

#: floor added to model intensities (photons) so n ln I stays finite
EPS_PHOTONS = 1e-6
#: Newton evaluations per line search
LINE_SEARCH_EVALUATIONS = 4


def _pixel_nll(intensity: Any, counts: Any) -> Any:
    xp = array_module_of(intensity)
    safe_counts = xp.maximum(counts, 1e-30)
    terms = intensity - counts - xp.where(counts > 0, counts * xp.log(intensity / safe_counts), 0)
    return xp.where(counts >= 0, terms, 0)


def negative_log_likelihood(farfield: Any, counts: Any) -> float:
    """Poisson NLL relative to the saturated model, summed over valid pixels."""
    intensity = farfield.real**2 + farfield.imag**2 + EPS_PHOTONS
    return float(_pixel_nll(intensity, counts).sum(dtype="float64"))


def farfield_gradient(farfield: Any, counts: Any) -> Any:
    """dL/da*: ``m (1 - n / I) a`` with the mask taken from negative counts."""
    xp = array_module_of(farfield)
    intensity = farfield.real**2 + farfield.imag**2 + EPS_PHOTONS
    factor = xp.where(counts >= 0, 1 - counts / intensity, 0).astype(farfield.real.dtype)
    return factor * farfield


def line_search_terms(
    farfield: Any, linear: Any, quadratic: Any | None, counts: Any, tau: float
) -> tuple[float, float, float]:
    """``L(t), L'(t), L''(t)`` at ``t = tau`` for ``a(t) = a + t b + t^2 c``."""
    xp = array_module_of(farfield)
    model = farfield + tau * linear
    slope_field = linear
    if quadratic is not None:
        model = model + (tau * tau) * quadratic
        slope_field = linear + (2 * tau) * quadratic
    intensity = model.real**2 + model.imag**2 + EPS_PHOTONS
    d1 = 2 * (model.real * slope_field.real + model.imag * slope_field.imag)
    d2 = 2 * (slope_field.real**2 + slope_field.imag**2)
    if quadratic is not None:
        d2 = d2 + 4 * (model.real * quadratic.real + model.imag * quadratic.imag)
    valid = counts >= 0
    ratio = xp.where(valid, counts / intensity, 0)
    weight = xp.where(valid, 1 - ratio, 0)
    value = float(_pixel_nll(intensity, counts).sum(dtype="float64"))
    slope = float((weight * d1).sum(dtype="float64"))
    curvature = float((weight * d2 + ratio / intensity * d1 * d1).sum(dtype="float64"))
    return value, slope, curvature


def line_search(
    farfield: Any,
    linear: Any,
    quadratic: Any | None,
    counts: Any,
    terms: Any = line_search_terms,
) -> float:
    """Step ``t > 0`` that lowers ``L(t)``, or 0 when the direction does not descend.

    Safeguarded Newton: a Newton step from the best point so far when the
    curvature is positive, otherwise doubling; halving after an increase.
    ``terms`` evaluates (L, L', L'') at a step (a fused GPU kernel may be passed).
    """
    best_tau = 0.0
    best_value, slope, curvature = terms(farfield, linear, quadratic, counts, 0.0)
    if not slope < 0:
        return 0.0
    trial = -slope / curvature if curvature > 0 else 1.0
    upper = math.inf  # smallest step known to overshoot
    for _ in range(LINE_SEARCH_EVALUATIONS):
        if not (math.isfinite(trial) and trial > 0):
            break
        value, slope, curvature = terms(farfield, linear, quadratic, counts, trial)
        if value < best_value:
            best_tau, best_value = trial, value
            if slope >= 0:
                upper = min(upper, trial)
            newton = trial - slope / curvature if curvature > 0 else 2 * trial
            trial = newton if newton < upper else 0.5 * (trial + upper)
            if abs(trial - best_tau) < 1e-3 * best_tau:
                break
        else:
            upper = min(upper, trial)
            trial = 0.5 * (best_tau + trial)
    return best_tau
