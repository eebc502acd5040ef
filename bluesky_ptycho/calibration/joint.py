"""Orientation and probe defocus together, when neither is known.

With a strongly defocused probe a plain cold start fits no candidate
orientation (every one of the 32 ties), and the defocus search needs the right
orientation to find the defocus. Searched together the problem is small: a
cold start is mirror-symmetric and is its own twin, so the 32 candidates fall
into four classes of eight that give *exactly* the same trial results, the
twins at the opposite distance (see :mod:`.orientation`):

* ``(o, sx, sy)``, its three mirrors, at distance ``z``;
* their twins (patterns turned by 180 degrees) at ``-z``.

:func:`search_orientation_and_defocus` runs the defocus search for one
representative of each class (:data:`REPRESENTATIVES`), keeps the class and
distance with the lowest NLL, then ranks all 32 candidates with the probe
propagated by that distance - which now tells every class apart except the
mirrors (same image). The one thing the data cannot say is which twin is
real: the sign of the distance. ``defocus_sign`` supplies it from the
beamline geometry: ``+1`` when the sample sits downstream of the focus
(the engine propagates downstream for positive distances), ``-1`` upstream.
Without it the sign the search happened to find is kept and the result says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import ReconConfig
from .defocus import (
    DEFAULT_SEARCH_ITERATIONS,
    SCREEN_ITERATIONS,
    DefocusTrial,
    search_classes,
    trial_distances,
)
from .orientation import (
    DEFAULT_TOLERANCE,
    MIRROR,
    SAME,
    OrientationResult,
    compose,
    rank_trials,
    relation,
)
from .trials import DEFAULT_TRIAL_FRAMES, prepare_trials

#: one candidate of each class of eight equivalent candidates under a cold start
REPRESENTATIVES: tuple[tuple[str, int, int], ...] = (
    ("identity", 1, 1),
    ("identity", 1, -1),
    ("rot90_cw", 1, 1),
    ("rot90_cw", 1, -1),
)


@dataclass(frozen=True)
class JointResult:
    """Outcome of :func:`search_orientation_and_defocus`.

    orientation : the 32 candidates ranked with the probe propagated by ``distance_m``.
    distance_m : probe propagation distance for ``orientation.recommended``.
    searches : the defocus table of each representative class.
    sign_from : ``"defocus_sign"`` when the caller fixed the twin, else ``"data"``
        (the twin with the opposite distance fits exactly as well).
    searched : the candidate whose class the defocus search chose (after ``defocus_sign``).
    """

    orientation: OrientationResult
    distance_m: float
    searches: dict[tuple[str, int, int], list[DefocusTrial]]
    sign_from: str
    searched: tuple[str, int, int]

    @property
    def consistent(self) -> bool:
        """The ranking's recommendation is the searched candidate or one of its mirrors."""
        return relation(self.orientation.recommended.key, self.searched) in (SAME, MIRROR)

    def config_changes(self) -> dict[str, Any]:
        """ReconConfig fields to use: orientation, directions and ``probe_propagation_m``."""
        return {
            **self.orientation.recommended.config_changes(),
            "probe_propagation_m": self.distance_m,
        }

    def flags(self) -> str:
        """``reconstruct`` flags for the result."""
        return f"{self.orientation.recommended.flags()} --probe-propagation-m {self.distance_m:.6g}"


def search_orientation_and_defocus(
    frames: Any,
    x: Any,
    y: Any,
    config: ReconConfig,
    distances_m: Sequence[float] | None = None,
    steps: int | None = None,
    defocus_sign: int | None = None,
    n_frames: int = DEFAULT_TRIAL_FRAMES,
    iterations: int = DEFAULT_SEARCH_ITERATIONS,
    crop_px: int | None = None,
    backend: str = "auto",
    tolerance: float = DEFAULT_TOLERANCE,
    report: Callable[[str], Any] | None = None,
    batched: bool | None = None,
    screen_iterations: int | None = SCREEN_ITERATIONS,
) -> JointResult:
    """Search the defocus for each class of orientations, then rank all 32 candidates.

    Parameters
    ----------
    frames, x, y : the scan, as for :func:`~.orientation.detect_orientation`.
    config : geometry; must be a cold start (a warm-start probe breaks the
        symmetries this search relies on: use ``detect_orientation`` and
        ``search_probe_propagation`` with it).
    distances_m, steps : distances to try (default from the bright-field disc).
    defocus_sign : +1 (sample downstream of the focus), -1 (upstream) or None.
    n_frames, iterations, crop_px, backend, tolerance, report, batched,
    screen_iterations : as for the two searches; the four classes' defocus
        searches run together (each keeps its own best ``SCREEN_KEEP``).
    """
    if config.probe is not None or config.probe_path is not None:
        raise ValueError(
            "joint orientation and defocus search: needs a cold start; with a warm-start probe "
            "run detect_orientation (and search_probe_propagation) directly"
        )
    if defocus_sign not in (None, 1, -1):
        raise ValueError(f"defocus_sign: expected +1, -1 or None, got {defocus_sign!r}")
    trials = prepare_trials(frames, x, y, config, n_frames, crop_px)
    distances = trial_distances(trials, steps) if distances_m is None else distances_m
    if report is not None:
        report("defocus search for each class (dp_orient x_direction y_direction):")
    found = search_classes(
        trials,
        distances,
        [{"dp_orient": o, "x_direction": sx, "y_direction": sy} for o, sx, sy in REPRESENTATIVES],
        iterations,
        backend,
        report=report,
        screen_iterations=screen_iterations,
        batched=batched,
        labels=[f"{o} {sx:+d} {sy:+d}: " for o, sx, sy in REPRESENTATIVES],
    )
    searches: dict[tuple[str, int, int], list[DefocusTrial]] = {}
    best: tuple[float, tuple[str, int, int], float] | None = None
    for key, (distance, table) in zip(REPRESENTATIVES, found, strict=True):
        searches[key] = table
        nll = next(row.nll_per_pixel for row in table if row.distance_m == distance)
        if best is None or nll < best[0]:
            best = (nll, key, distance)
    assert best is not None
    _, key, distance = best
    sign_from = "data"
    if defocus_sign is not None:
        sign_from = "defocus_sign"
        if distance * defocus_sign < 0:  # take the twin: patterns turned, distance negated
            key, distance = (compose("rot180", key[0]), key[1], key[2]), -distance
    if report is not None:
        report(f"ranking the 32 candidates with the probe propagated {distance * 1e6:+.3f} um:")
    propagated = trials.config.replace(probe_propagation_m=distance)
    orientation = rank_trials(
        dataclasses.replace(trials, config=propagated),
        iterations,
        backend,
        tolerance,
        current=(config.dp_orient, config.x_direction, config.y_direction),
        report=report,
        batched=batched,
    )
    return JointResult(orientation, distance, searches, sign_from, key)
