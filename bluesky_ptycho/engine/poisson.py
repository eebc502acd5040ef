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
:func:`line_search` finds the first minimum of ``L(t)`` from its exact
derivatives at several steps at once (one read of the stacks per pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
#: a pass without a bracket moves this many times beyond the known steps
LINE_SEARCH_REACH = 4.0
#: most passes per line search
LINE_SEARCH_PASSES = 5
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


class StepSearch:
    """The state of one :func:`line_search`: the steps its next pass needs, or its result.

    ``steps()`` lists the next pass's steps; ``update(slopes, curvatures)`` takes
    ``L'`` and ``L''`` there; ``result`` is the step once known (else None). A
    batch of line searches (one per calibration trial) advances several in
    lockstep.
    """

    def __init__(self, slope_at_zero: float, first_step: float = 1.0) -> None:
        self.known = {0.0: (slope_at_zero, math.nan)}
        self.scale = first_step
        self.passes = 0
        self.result: float | None = None if slope_at_zero < 0 else 0.0

    def steps(self) -> list[float]:
        return sample_steps(self.scale)

    def update(self, slopes: Sequence[float], curvatures: Sequence[float]) -> None:
        known = self.known
        for tau, slope, curvature in zip(self.steps(), slopes, curvatures, strict=True):
            finite = math.isfinite(slope) and math.isfinite(curvature)
            known[tau] = (float(slope), float(curvature)) if finite else (math.inf, math.nan)
        self.passes += 1
        ordered = sorted(known)
        for low, high in zip(ordered, ordered[1:], strict=False):
            if known[low][0] < 0 <= known[high][0]:
                break
        else:  # every known slope is negative: the minimum lies beyond
            self.scale = ordered[-1] * LINE_SEARCH_REACH / LINE_SEARCH_SAMPLES[0]
            self._give_up_after_the_last_pass()
            return
        if low > 0 and math.isfinite(known[high][0]):
            self.result = _hermite_root(low, high, *known[low], *known[high])
            return
        # the bracket starts at 0 (no curvature known there) or ends in overflow: look inside
        self.scale = high / LINE_SEARCH_SAMPLES[-1] / (1 + 1 / LINE_SEARCH_REACH)
        self._give_up_after_the_last_pass()

    def _give_up_after_the_last_pass(self) -> None:
        if self.passes >= LINE_SEARCH_PASSES:  # the largest step known to descend
            self.result = max(tau for tau, (slope, _) in self.known.items() if slope < 0)


def sample_steps(scale: float) -> list[float]:
    """The steps of one line-search pass: :data:`LINE_SEARCH_SAMPLES` times ``scale``
    (a line search's first pass: ``scale`` is its ``first_step``)."""
    return [scale * sample for sample in LINE_SEARCH_SAMPLES]


def line_search(
    terms: Callable[[list[float]], tuple[np.ndarray, np.ndarray]],
    slope_at_zero: float,
    first_step: float = 1.0,
) -> float:
    """Step ``t > 0`` at the first minimum of ``L(t)``, or 0 when ``L'(0) >= 0``.

    Each pass evaluates ``L'`` and ``L''`` at :data:`LINE_SEARCH_SAMPLES` times
    a scale (the first pass: ``first_step``, the previous iteration's step) in
    one read of the stacks. The first pair of known steps where ``L'`` turns
    from negative to non-negative brackets the minimum; the root of the cubic
    Hermite interpolant of ``L'`` on that bracket is the step. With no bracket
    the next pass moves :data:`LINE_SEARCH_REACH` times further out (or, when
    the only bracket starts at 0, inside it). ``slope_at_zero`` is ``L'(0) =
    2 Re <dL/dz*, dz>``; ``terms(steps)`` returns (L', L'') at those steps (e.g.
    :func:`line_search_terms` of given stacks, or the fused kernel's sums over
    all partitions). A non-finite value counts as an upper bound.
    :class:`StepSearch` holds the state.
    """
    search = StepSearch(slope_at_zero, first_step)
    while search.result is None:
        search.update(*terms(search.steps()))
    return search.result


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
