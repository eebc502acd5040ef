"""Poisson likelihood of far-field models against photon counts.

``counts`` hold photons with DC at the corner; excluded pixels (mask, saturated)
carry a negative value and contribute nothing (counts stored in the compact
uint16 form of :mod:`.counts` are accepted too). For model far field ``a``:

    I = |a|^2 + eps
    L = sum m (I - n - n ln(I / n))      (NLL minus its saturated value, >= 0)
    dL/da* = m (1 - n / I) a

``L`` differs from ``sum m (I - n ln I)`` by a constant, so it has the same
minimiser; it is ~0.5 per pixel at the noise level, which makes it readable.

Along a search direction with far fields ``b`` (linear term) and ``c``
(quadratic term) the model is ``a(t) = a + t b + t^2 c`` exactly;
:func:`line_search` finds the first minimum of ``L(t)`` by safeguarded Newton
steps on its exact derivatives.
"""

from __future__ import annotations

import math
from typing import Any

from . import counts as count_store
from .backend import array_module_of

#: floor added to model intensities (photons) so n ln I stays finite
EPS_PHOTONS = 1e-6
#: most evaluations of (L', L'') per line search
LINE_SEARCH_EVALUATIONS = 6
#: relative change of the step below which the line search stops
LINE_SEARCH_TOLERANCE = 0.01


def _pixel_nll(intensity: Any, counts: Any) -> Any:
    xp = array_module_of(intensity)
    safe_counts = xp.maximum(counts, 1e-30)
    terms = intensity - counts - xp.where(counts > 0, counts * xp.log(intensity / safe_counts), 0)
    return xp.where(counts >= 0, terms, 0)


def negative_log_likelihood(farfield: Any, counts: Any) -> float:
    """Poisson NLL relative to the saturated model, summed over valid pixels."""
    intensity = farfield.real**2 + farfield.imag**2 + EPS_PHOTONS
    counts = count_store.decode(counts, intensity.dtype)
    return float(_pixel_nll(intensity, counts).sum(dtype="float64"))


def farfield_gradient(farfield: Any, counts: Any) -> Any:
    """dL/da*: ``m (1 - n / I) a`` with the mask taken from negative counts."""
    xp = array_module_of(farfield)
    intensity = farfield.real**2 + farfield.imag**2 + EPS_PHOTONS
    counts = count_store.decode(counts, intensity.dtype)
    factor = xp.where(counts >= 0, 1 - counts / intensity, 0).astype(farfield.real.dtype)
    return factor * farfield


def line_search_terms(
    farfield: Any, linear: Any, quadratic: Any | None, counts: Any, tau: float
) -> tuple[float, float]:
    """``L'(t), L''(t)`` at ``t = tau`` for ``a(t) = a + t b + t^2 c``."""
    xp = array_module_of(farfield)
    model = farfield + tau * linear
    slope_field = linear
    if quadratic is not None:
        model += (tau * tau) * quadratic
        slope_field = linear + (2 * tau) * quadratic
    intensity = model.real**2 + model.imag**2 + EPS_PHOTONS
    counts = count_store.decode(counts, intensity.dtype)
    d1 = 2 * (model.real * slope_field.real + model.imag * slope_field.imag)
    d2 = 2 * (slope_field.real**2 + slope_field.imag**2)
    if quadratic is not None:
        d2 += 4 * (model.real * quadratic.real + model.imag * quadratic.imag)
    ratio = xp.where(counts >= 0, counts / intensity, 0)
    weight = xp.where(counts >= 0, 1 - ratio, 0)
    slope = float((weight * d1).sum(dtype="float64"))
    curvature = float((weight * d2 + ratio / intensity * d1 * d1).sum(dtype="float64"))
    return slope, curvature


def line_search(
    farfield: Any,
    linear: Any,
    quadratic: Any | None,
    counts: Any,
    slope_at_zero: float,
    first_step: float = 1.0,
    terms: Any = line_search_terms,
) -> float:
    """Step ``t > 0`` at the first minimum of ``L(t)``, or 0 when ``L'(0) >= 0``.

    Safeguarded Newton on ``L'(t) = 0`` starting at ``first_step``: the sign of
    ``L'`` brackets the minimum, Newton steps that leave the bracket are replaced
    by bisection (or doubling while no upper bound is known). ``slope_at_zero``
    is ``L'(0) = 2 Re <dL/dz*, dz>``, known from the gradient; ``terms``
    evaluates (L', L'') at a step (the fused GPU kernel may be passed).
    """
    if not slope_at_zero < 0:
        return 0.0
    low, high = 0.0, math.inf
    tau = first_step
    for _ in range(LINE_SEARCH_EVALUATIONS):
        slope, curvature = terms(farfield, linear, quadratic, counts, tau)
        if not (math.isfinite(slope) and math.isfinite(curvature)) or slope >= 0:
            high = tau
        else:
            low = tau
        newton = tau - slope / curvature if curvature > 0 else math.nan
        if low < newton < high:
            converged = abs(newton - tau) <= LINE_SEARCH_TOLERANCE * tau
            tau = newton
            if converged:
                break
        else:
            tau = 2 * low if math.isinf(high) else 0.5 * (low + high)
    return tau if tau < high else low
