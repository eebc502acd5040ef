"""Probe defocus search: the propagation distance of the initial probe that fits best.

A zone-plate probe with a central stop, defocused by several depths of focus,
looks nothing like the inverse FFT of the mean pattern (a focused, real
probe): a cold start then stalls in a wrong solution. The data say which
defocus is right: :func:`search_probe_propagation` propagates the initial
probe (cold start, or the configured warm-start probe) by each trial distance,
runs a short trial (:mod:`.trials`) and keeps the distance with the lowest
Poisson NLL, then refines around it.

The default distances come from the data (:func:`default_defocus_range`): a
symmetric range up to the defocus at which the geometric probe fills
``PROBE_FILL`` of the field of view, spaced half a depth of focus.

The sign of the distance is defined relative to ``dp_orient`` and the motor
signs: with the orientation turned by 180 degrees the twin solution (complex
conjugate probe and object) fits equally well with the opposite sign, so run
the search with the orientation you trust (see :mod:`.orientation`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..config import ReconConfig
from .advice import Advice, CalibrationError, Remedy
from .trials import DEFAULT_TRIAL_FRAMES, BeamEstimate, TrialSet, prepare_trials, run_trial

#: ML_grad iterations per trial distance
DEFAULT_SEARCH_ITERATIONS = 10
#: spacing of the default grid, in depths of focus
GRID_STEP_DOF = 0.5
#: bounds on the number of default grid points
MIN_STEPS, MAX_STEPS = 9, 41
#: refinement points around the best grid point, in grid steps
REFINE_OFFSETS = (-2 / 3, -1 / 3, 1 / 3, 2 / 3)


class DefocusTrial(NamedTuple):
    """One row of the search table."""

    distance_m: float
    nll_per_pixel: float


def default_defocus_range(beam: BeamEstimate, steps: int | None = None) -> np.ndarray:
    """Symmetric distances ``-max_defocus_m .. +max_defocus_m`` (odd count: 0 included).

    steps : number of distances; default: spaced ``GRID_STEP_DOF`` depths of focus,
        between ``MIN_STEPS`` and ``MAX_STEPS``.
    """
    if steps is None:
        steps = math.ceil(2 * beam.max_defocus_m / (GRID_STEP_DOF * beam.depth_of_focus_m)) + 1
        steps = min(max(steps, MIN_STEPS), MAX_STEPS)
        steps += 1 - steps % 2
    return defocus_grid(-beam.max_defocus_m, beam.max_defocus_m, steps)


def defocus_grid(minimum_m: float, maximum_m: float, steps: int) -> np.ndarray:
    """``steps`` evenly spaced distances from ``minimum_m`` to ``maximum_m`` (validated)."""
    if not (math.isfinite(minimum_m) and math.isfinite(maximum_m)) or maximum_m < minimum_m:
        raise ValueError(
            "probe search range: expected finite MIN <= MAX in metres, "
            f"got {minimum_m}, {maximum_m}"
        )
    if not isinstance(steps, int) or steps < 1 or (steps == 1 and maximum_m != minimum_m):
        raise ValueError(f"probe search steps: expected an integer >= 2, got {steps!r}")
    return np.linspace(minimum_m, maximum_m, steps)


def search_probe_propagation(
    frames: Any,
    x: Any,
    y: Any,
    config: ReconConfig,
    distances_m: Sequence[float] | None = None,
    steps: int | None = None,
    n_frames: int = DEFAULT_TRIAL_FRAMES,
    iterations: int = DEFAULT_SEARCH_ITERATIONS,
    crop_px: int | None = None,
    backend: str = "auto",
    refine: bool = True,
    report: Callable[[str], Any] | None = None,
) -> tuple[float, list[DefocusTrial]]:
    """Try probe propagation distances on a subset of frames; keep the lowest NLL.

    Parameters
    ----------
    frames : (n, M, N) counts as recorded (array or h5py dataset).
    x, y : (n,) motor readings.
    config : the reconstruction's configuration (orientation, signs, warm-start
        probe...). Its ``probe_propagation_m`` is replaced by each distance.
    distances_m : distances to try, metres (default :func:`default_defocus_range`).
    steps : number of default distances (ignored with ``distances_m``).
    n_frames, iterations, crop_px : trial size (see :mod:`.trials`).
    refine : after the grid, also try ``REFINE_OFFSETS`` grid steps around the best.
    report : called with one line per trial (progress), e.g. ``print``.

    Returns
    -------
    best_distance_m : build the Reconstructor with ``probe_propagation_m=best_distance_m``.
    table : every distance tried and its NLL per valid pixel, sorted by distance.
    """
    if distances_m is not None:
        distances = np.asarray(distances_m, np.float64).reshape(-1)
        if distances.size == 0 or not np.isfinite(distances).all():
            raise ValueError(f"probe search: distances must be finite metres, got {distances_m!r}")
    trials = prepare_trials(frames, x, y, config, n_frames, crop_px)
    if distances_m is None:
        distances = trial_distances(trials, steps)
    return search_trials(trials, distances, iterations, backend, refine, report)


def trial_distances(trials: TrialSet, steps: int | None = None) -> np.ndarray:
    """:func:`default_defocus_range` of the beam seen in ``trials`` (ValueError if none)."""
    if trials.beam is None:
        raise CalibrationError(
            "probe search",
            Advice(
                "no bright-field disc found in the mean pattern",
                (Remedy("give the distances to try", ("distances_m",)),),
            ),
        )
    return default_defocus_range(trials.beam, steps)


def search_trials(
    trials: TrialSet,
    distances: np.ndarray,
    iterations: int = DEFAULT_SEARCH_ITERATIONS,
    backend: str = "auto",
    refine: bool = True,
    report: Callable[[str], Any] | None = None,
    **changes: Any,
) -> tuple[float, list[DefocusTrial]]:
    """:func:`search_probe_propagation` on prepared trials; ``changes`` go to every trial."""
    results: dict[float, float] = {}

    def evaluate(distance: float) -> None:
        distance = float(distance)
        if distance in results:
            return
        nll = run_trial(trials, iterations, backend, probe_propagation_m=distance, **changes)
        results[distance] = nll if math.isfinite(nll) else math.inf
        if report is not None:
            report(f"  z = {distance * 1e6:+10.3f} um   NLL/pixel {nll:.5g}")

    for distance in distances:
        evaluate(distance)
    grid = np.unique(distances)
    if refine and grid.size >= 2:
        best = min(results, key=results.__getitem__)
        position = int(np.searchsorted(grid, best))
        neighbours = grid[max(position - 1, 0) : position + 2]
        step = float(np.diff(neighbours).min())
        for offset in REFINE_OFFSETS:
            candidate = best + offset * step
            if grid[0] <= candidate <= grid[-1]:
                evaluate(candidate)
    table = [DefocusTrial(d, results[d]) for d in sorted(results)]
    best_row = min(table, key=lambda row: row.nll_per_pixel)
    return best_row.distance_m, table


def format_defocus_table(table: Sequence[DefocusTrial], best_m: float) -> str:
    """The search table as text: distance (um), NLL per pixel, ratio to the best, marker."""
    best_nll = min(row.nll_per_pixel for row in table)
    lines = [f"{'distance_um':>12} {'nll_per_pixel':>14} {'x_best':>8}"]
    for row in table:
        mark = "  <- best" if row.distance_m == best_m else ""
        lines.append(
            f"{row.distance_m * 1e6:12.3f} {row.nll_per_pixel:14.5g} "
            f"{row.nll_per_pixel / best_nll:8.3f}{mark}"
        )
    return "\n".join(lines)
