"""The engine's reductions taken per trial: the array pieces of :mod:`.batch`.

Each function here is the batched twin of an engine function, with a leading
trial axis and one sum per trial where the engine sums everything (the tests
compare every one against its engine twin, trial by trial):

* :func:`nll_and_gradient` - :func:`~bluesky_ptycho.engine.poisson.negative_log_likelihood`
  and :func:`~bluesky_ptycho.engine.poisson.farfield_gradient`;
* :func:`line_search_terms` and :func:`line_search` - the engine's line search
  (:func:`~bluesky_ptycho.engine.poisson.line_search_step`), every trial at its
  own steps;
* :func:`disc_centres` - :func:`~bluesky_ptycho.engine.gauge.disc_centre`;
* :func:`ramps` - :func:`~bluesky_ptycho.engine.gauge.ramp`;
* :func:`batched_weighted_sum` - :func:`~bluesky_ptycho.engine.shift.weighted_sum`.

Arrays are NumPy or CuPy; per-trial results come back to the host as (K,) arrays
(one transfer per call).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..engine import gauge, poisson
from ..engine.backend import array_module_of, to_host


def per_trial_sum(values: Any) -> Any:
    """(K,) float64 sums over all but the leading axis (on the device)."""
    return values.reshape(values.shape[0], -1).sum(axis=1, dtype="float64")


def power(stack: Any) -> Any:
    """``|stack|^2`` (real)."""
    return stack.real**2 + stack.imag**2


def batched_weighted_sum(weights: Any, stack: Any) -> Any:
    """``out[k, a] = sum_b weights[k, a, b] * stack[k, b]``: (K, A, P) from (K, A, B), (K, B, ...).

    Real weights, complex stack viewed as interleaved real and imaginary parts
    (as :func:`~bluesky_ptycho.engine.shift.weighted_sum`); NumPy uses a
    single-threaded einsum loop for the same reason.
    """
    flat = stack.reshape(*stack.shape[:2], -1)
    if not flat.flags.c_contiguous:
        flat = flat.copy()
    real = flat.real.dtype
    view = flat.view(real) if flat.dtype.kind == "c" else flat
    w = weights.astype(real)
    out = np.einsum("kab,kbp->kap", w, view) if isinstance(view, np.ndarray) else w @ view
    return out.view(flat.dtype) if flat.dtype.kind == "c" else out


def nll_and_gradient(
    farfield: Any, counts: Any, noise_model: str = "poisson"
) -> tuple[Any, Any]:
    """(K,) Poisson NLL per trial (on the device) and ``dL/da*`` of (K, n, M, N) far fields
    (``L`` of the ``noise_model``).

    ``counts`` : (K or 1, n, M, N) real, negative where excluded.
    """
    xp = array_module_of(farfield)
    intensity = power(farfield) + poisson.EPS_PHOTONS
    safe = xp.maximum(counts, 1e-30)
    pixel = intensity - counts - xp.where(counts > 0, counts * xp.log(intensity / safe), 0)
    nll = per_trial_sum(xp.where(counts >= 0, pixel, 0))
    return nll, poisson.farfield_gradient(farfield, counts, noise_model)


def line_search_terms(
    farfield: Any,
    linear: Any,
    quadratic: Any | None,
    counts: Any,
    steps: np.ndarray,
    noise_model: str = "poisson",
) -> tuple[np.ndarray, np.ndarray]:
    """(K, S) ``L'(t), L''(t)`` of the ``noise_model`` per trial at its own steps
    ``t = steps[k, s]``, along ``a + t b + t^2 c`` (one transfer to the host)."""
    xp = array_module_of(farfield)
    real = farfield.real.dtype
    numerator = poisson.ratio_numerator(counts, noise_model)
    sums = []
    for tau in np.asarray(steps, np.float64).T:  # one step of every trial at a time

        def scalars(values: np.ndarray) -> Any:
            return xp.asarray(values, real)[:, None, None, None]

        model = farfield + scalars(tau) * linear
        slope_field = linear
        if quadratic is not None:
            model += scalars(tau * tau) * quadratic
            slope_field = linear + scalars(2 * tau) * quadratic
        intensity = power(model) + poisson.EPS_PHOTONS
        d1 = 2 * (model.real * slope_field.real + model.imag * slope_field.imag)
        d2 = 2 * power(slope_field)
        if quadratic is not None:
            d2 += 4 * (model.real * quadratic.real + model.imag * quadratic.imag)
        ratio = poisson.weight_ratio(numerator, intensity, noise_model)
        weight = xp.where(counts >= 0, 1 - ratio, 0)
        sums += [per_trial_sum(weight * d1), per_trial_sum(weight * d2 + ratio / intensity * d1**2)]
    slope_curvature = to_host(xp.stack(sums, axis=1)).reshape(len(steps), -1, 2)
    return slope_curvature[..., 0], slope_curvature[..., 1]


def line_search(
    farfield: Any,
    linear: Any,
    quadratic: Any | None,
    counts: Any,
    slope_at_zero: np.ndarray,
    scale: np.ndarray,
    prior: tuple[np.ndarray, np.ndarray] | None = None,
    noise_model: str = "poisson",
) -> tuple[np.ndarray, np.ndarray]:
    """(K,) steps and next scales of :func:`~bluesky_ptycho.engine.poisson.line_search_step`,
    one per trial, from one pass at every trial's own ``sample_steps(scale)``.
    ``prior``: the smoothness prior's ``(R'(0), R'')`` per trial, added as the
    engine adds it.
    """
    steps = np.array([poisson.sample_steps(float(value)) for value in scale])
    slope, curvature = line_search_terms(farfield, linear, quadratic, counts, steps, noise_model)
    if prior is not None:
        slope = slope + prior[0][:, None] + steps * prior[1][:, None]
        curvature = curvature + prior[1][:, None]
    results = [
        poisson.line_search_step(float(slope_at_zero[k]), slope[k], curvature[k], float(scale[k]))
        for k in range(len(scale))
    ]
    return np.array(results, np.float64).reshape(-1, 2).T.copy()


def disc_centres(xp: ModuleType, patterns: Any) -> np.ndarray:
    """(K, 2) :func:`~bluesky_ptycho.engine.gauge.disc_centre` of (K, M, N) patterns (DC at 0)."""
    centred = xp.fft.fftshift(xp.asarray(patterns, dtype="float64"), axes=(-2, -1))
    centred = gauge.blur(xp, gauge.median3x3(xp, centred))
    rows, cols = centred.shape[-2:]
    peak = centred.max(axis=(-2, -1), keepdims=True)
    lit = peak > 0
    level = centred / xp.where(lit, peak, 1)
    weight = xp.clip((level - gauge.DISC_LEVEL) / (2 * gauge.DISC_EDGE) + 0.5, 0, 1)
    lit = lit[..., 0]
    total = xp.where(lit[..., 0], weight.sum(axis=(-2, -1)), 1)[..., None]
    centre = xp.stack(
        [
            (weight.sum(axis=-1) * xp.arange(rows)).sum(axis=-1),
            (weight.sum(axis=-2) * xp.arange(cols)).sum(axis=-1),
        ],
        axis=-1,
    )
    offset = xp.asarray([rows // 2, cols // 2], dtype=centre.dtype)
    return to_host(xp.where(lit, centre / total - offset, 0))  # an empty pattern: 0


def ramps(
    xp: ModuleType, shape: tuple[int, int], cycles: np.ndarray, dtype: str, starts: np.ndarray
) -> Any:
    """(K, H, W) :func:`~bluesky_ptycho.engine.gauge.ramp` for (K, 2) ``cycles`` and ``starts``."""
    start = xp.asarray(np.asarray(starts, np.int64))
    cycle = xp.asarray(np.asarray(cycles, np.float64))
    rows = (xp.arange(shape[0])[None, :, None] + start[:, 0, None, None]) * cycle[:, 0, None, None]
    cols = (xp.arange(shape[1])[None, None, :] + start[:, 1, None, None]) * cycle[:, 1, None, None]
    return xp.exp(2j * np.pi * rows).astype(dtype) * xp.exp(2j * np.pi * cols).astype(dtype)
