"""One call for a live pipeline: calibrate a configuration on the first frames of a scan.

:func:`calibrate` runs what the configuration leaves open - the orientation
search, the defocus search, or both together - and returns the configuration
to build the reconstructor with, plus a JSON-ready summary for the derived
run's metadata. An ambiguous orientation is never applied silently: the
configuration keeps its orientation and the summary says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import ReconConfig
from .defocus import DEFAULT_SEARCH_ITERATIONS, search_probe_propagation
from .joint import search_orientation_and_defocus
from .orientation import OrientationResult, detect_orientation
from .trials import DEFAULT_TRIAL_FRAMES


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` found.

    config : the input configuration with ``changes`` applied.
    changes : the ReconConfig fields set from the data (may be empty).
    summary : JSON-ready record: ``verdict``, ``orientation`` (ranked rows),
        ``probe_propagation_m``, ``defocus_table`` (rows ``[distance_m,
        nll_per_pixel, iterations]``), ``applied``, ``note`` (text) and ``advice``
        (structured: problem, remedies and the options they name).
    """

    config: ReconConfig
    changes: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)


def _rows(result: OrientationResult) -> list[dict[str, Any]]:
    return [
        {
            "dp_orient": c.dp_orient,
            "x_direction": c.x_direction,
            "y_direction": c.y_direction,
            "nll_per_pixel": c.nll_per_pixel,
            "relation": c.relation,
            "tied": c.tied,
        }
        for c in result.candidates
    ]


def calibrate(
    frames: Any,
    x: Any,
    y: Any,
    config: ReconConfig,
    orientation: bool = True,
    defocus: bool = True,
    defocus_sign: int | None = None,
    n_frames: int = DEFAULT_TRIAL_FRAMES,
    iterations: int = DEFAULT_SEARCH_ITERATIONS,
    backend: str = "auto",
    report: Callable[[str], Any] | None = None,
    names: Mapping[str, str | None] | None = None,
) -> Calibration:
    """Find orientation and/or defocus from ``frames`` and return the configuration to use.

    orientation : rank the 32 orientation candidates (applied unless ambiguous).
    defocus : search ``probe_propagation_m``. With both and a cold start the two
        are searched together (:func:`.search_orientation_and_defocus`); with a
        warm-start probe, orientation first (probe held), then the defocus.
    defocus_sign : +1 (sample downstream of the focus), -1 (upstream) or None.
    names : how the caller spells the options the advice names (:mod:`.advice`):
        ``summary["note"]`` is rendered with them; ``summary["advice"]`` keeps
        the structured advice.
    """
    common = {"n_frames": n_frames, "iterations": iterations, "backend": backend, "report": report}
    changes: dict[str, Any] = {}
    summary: dict[str, Any] = {
        "verdict": "not searched",
        "applied": False,
        "note": "",
        "advice": [],
    }
    cold = config.probe is None and config.probe_path is None
    result = None
    if orientation and defocus and cold:
        joint = search_orientation_and_defocus(
            frames, x, y, config, defocus_sign=defocus_sign, **common
        )
        result = joint.orientation
        summary["defocus_sign_from"] = joint.sign_from
        summary["defocus_tables"] = {
            " ".join(map(str, key)): [list(row) for row in table]
            for key, table in joint.searches.items()
        }
        if result.verdict != "ambiguous" and joint.consistent:
            changes.update(joint.config_changes())
    elif orientation:
        result = detect_orientation(frames, x, y, config, **common)
        if result.verdict != "ambiguous":
            changes.update(result.recommended.config_changes())
    if result is not None:
        summary.update(verdict=result.verdict, orientation=_rows(result))
        summary["note"] = result.explanation(names)
        summary["advice"] = [a.as_dict() for a in result.advice()]
        summary["applied"] = bool(changes)
    if defocus and not (orientation and cold):
        best_m, table = search_probe_propagation(frames, x, y, config.replace(**changes), **common)
        changes["probe_propagation_m"] = best_m
        summary["defocus_table"] = [list(row) for row in table]
    summary["probe_propagation_m"] = changes.get("probe_propagation_m", config.probe_propagation_m)
    summary["changes"] = dict(changes)
    return Calibration(config.replace(**changes), changes, summary)
