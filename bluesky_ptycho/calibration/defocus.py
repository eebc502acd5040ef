"""Probe defocus search: the propagation distance of the initial probe that fits best.

A zone-plate probe with a central stop, defocused by several depths of focus,
looks nothing like the inverse FFT of the mean pattern (a focused, real
probe): a cold start then stalls in a wrong solution. The data say which
defocus is right: :func:`search_probe_propagation` propagates the initial
probe (cold start, or the configured warm-start probe) by each trial distance,
runs a short trial (:mod:`.trials`) and keeps the distance with the lowest
Poisson NLL, then refines around it.

Most distances of a grid are clearly wrong after a few iterations: every grid
distance runs ``SCREEN_ITERATIONS`` iterations, and only the ``SCREEN_KEEP``
lowest NLLs run on to the full count (measured on three simulated scans with
33-, 43- and 77-pixel trial crops, docs/real-data.md: the distance best after
10 iterations ranked first or second from the second iteration on). The
table keeps the screened rows with the iterations they ran. The trials of a
stage run together on a GPU (:mod:`.batch`): a search waits on a few batched
iterations instead of hundreds of single-trial ones.

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
from .batch import start_trials
from .trials import DEFAULT_TRIAL_FRAMES, BeamEstimate, TrialSet, check_iterations, prepare_trials

#: ML_grad iterations per trial distance
DEFAULT_SEARCH_ITERATIONS = 10
#: spacing of the default grid, in depths of focus
GRID_STEP_DOF = 0.5
#: bounds on the number of default grid points
MIN_STEPS, MAX_STEPS = 9, 41
#: refinement points around the best grid point, in grid steps
REFINE_OFFSETS = (-2 / 3, -1 / 3, 1 / 3, 2 / 3)
#: iterations every grid distance runs before only the best ``SCREEN_KEEP`` continue
SCREEN_ITERATIONS = 3
#: grid distances (per class) that run all iterations
SCREEN_KEEP = 5


class DefocusTrial(NamedTuple):
    """One row of the search table: the NLL per valid pixel after ``iterations``."""

    distance_m: float
    nll_per_pixel: float
    iterations: int


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
    screen_iterations: int | None = SCREEN_ITERATIONS,
    batched: bool | None = None,
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
    screen_iterations : iterations of every grid distance before only the best
        ``SCREEN_KEEP`` continue; None: every distance runs all ``iterations``.
    batched : run each stage's trials together (:func:`.batch.start_trials`;
        None: on CuPy), or each by its own Reconstructor.

    Returns
    -------
    best_distance_m : build the Reconstructor with ``probe_propagation_m=best_distance_m``;
        the lowest NLL among the trials that ran all ``iterations``.
    table : every distance tried, its NLL per valid pixel and the iterations it
        ran, sorted by distance.
    """
    if distances_m is not None:
        distances = np.asarray(distances_m, np.float64).reshape(-1)
        if distances.size == 0 or not np.isfinite(distances).all():
            raise ValueError(f"probe search: distances must be finite metres, got {distances_m!r}")
    trials = prepare_trials(frames, x, y, config, n_frames, crop_px)
    if distances_m is None:
        distances = trial_distances(trials, steps)
    ((best_m, table),) = search_classes(
        trials, distances, [{}], iterations, backend, refine, report, screen_iterations, batched
    )
    return best_m, table


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


def search_classes(
    trials: TrialSet,
    distances: np.ndarray,
    classes: Sequence[dict[str, Any]],
    iterations: int = DEFAULT_SEARCH_ITERATIONS,
    backend: str = "auto",
    refine: bool = True,
    report: Callable[[str], Any] | None = None,
    screen_iterations: int | None = SCREEN_ITERATIONS,
    batched: bool | None = None,
    labels: Sequence[str] | None = None,
) -> list[tuple[float, list[DefocusTrial]]]:
    """One defocus search per class of ``changes`` (e.g. orientations), run together.

    Each stage - the screened grid, then the refinement - starts the trials of
    every class at once (:func:`.batch.start_trials`). Returns per class the best
    distance (lowest NLL among the trials that ran all ``iterations``) and the
    table of every distance tried, sorted by distance.
    labels : per class, a prefix of its ``report`` lines.
    """
    check_iterations(iterations)
    if screen_iterations is not None and (
        not isinstance(screen_iterations, int) or screen_iterations < 1
    ):
        raise ValueError(
            f"probe search: screen_iterations must be an integer >= 1 or None, "
            f"got {screen_iterations!r}"
        )
    grid = np.unique(np.asarray(distances, np.float64))
    results: list[dict[float, DefocusTrial]] = [{} for _ in classes]
    labels = labels if labels is not None else [""] * len(classes)

    def record(owner: tuple[int, float], nll: float, done: int) -> None:
        index, distance = owner
        nll = float(nll) if math.isfinite(nll) else math.inf
        results[index][distance] = DefocusTrial(distance, nll, done)
        if report is not None:
            early = "" if done == iterations else f" after {done} iterations (screened out)"
            report(f"  {labels[index]}z = {distance * 1e6:+10.3f} um   NLL/pixel {nll:.5g}{early}")

    def run(candidates: list[np.ndarray], screen: int | None) -> None:
        owners = [(c, float(z)) for c, zs in enumerate(candidates) for z in zs]
        if not owners:
            return
        variants = [{**classes[c], "probe_propagation_m": z} for c, z in owners]
        runner = start_trials(trials, variants, backend, batched)
        done = 0
        if screen is not None and screen < iterations and max(map(len, candidates)) > SCREEN_KEEP:
            runner.iterate(screen)
            done = screen
            nll = np.nan_to_num(runner.nll_per_pixel(), nan=math.inf)
            kept = []
            for c in range(len(classes)):
                mine = [i for i, owner in enumerate(owners) if owner[0] == c]
                ranked = sorted(mine, key=lambda i: nll[i])
                kept += ranked[:SCREEN_KEEP]
                for i in ranked[SCREEN_KEEP:]:
                    record(owners[i], nll[i], screen)
            kept.sort()
            runner.keep(np.array(kept))
            owners = [owners[i] for i in kept]
        runner.iterate(iterations - done)
        for owner, nll in zip(owners, runner.nll_per_pixel(), strict=True):
            record(owner, nll, iterations)

    run([grid for _ in classes], screen_iterations)
    if refine and grid.size >= 2:
        run([refinements(grid, best_row(rows).distance_m, rows) for rows in results], None)
    tables = [[rows[d] for d in sorted(rows)] for rows in results]
    return [(best_row(rows).distance_m, table) for rows, table in zip(results, tables, strict=True)]


def best_row(rows: dict[float, DefocusTrial]) -> DefocusTrial:
    """The lowest NLL among the rows that ran the most iterations (screened rows stopped early)."""
    most = max(row.iterations for row in rows.values())
    return min(
        (row for row in rows.values() if row.iterations == most), key=lambda row: row.nll_per_pixel
    )


def refinements(grid: np.ndarray, best_m: float, tried: dict[float, Any]) -> np.ndarray:
    """``REFINE_OFFSETS`` grid steps around ``best_m`` inside the grid, not tried yet."""
    position = int(np.searchsorted(grid, best_m))
    neighbours = grid[max(position - 1, 0) : position + 2]
    step = float(np.diff(neighbours).min())
    candidates = [best_m + offset * step for offset in REFINE_OFFSETS]
    return np.array([z for z in candidates if grid[0] <= z <= grid[-1] and z not in tried])


def format_defocus_table(table: Sequence[DefocusTrial], best_m: float) -> str:
    """The search table as text: distance (um), NLL per pixel, ratio to the best,
    iterations run (fewer: screened out), marker."""
    best_nll = min(row.nll_per_pixel for row in table)
    lines = [f"{'distance_um':>12} {'nll_per_pixel':>14} {'x_best':>8} {'iterations':>10}"]
    for row in table:
        mark = "  <- best" if row.distance_m == best_m else ""
        lines.append(
            f"{row.distance_m * 1e6:12.3f} {row.nll_per_pixel:14.5g} "
            f"{row.nll_per_pixel / best_nll:8.3f} {row.iterations:10d}{mark}"
        )
    return "\n".join(lines)
