"""Structured advice: what to change when calibration cannot decide, named by option.

Calibration speaks its own vocabulary (:data:`OPTIONS`); each front end renders
it in its own: the command line as flags (``--probe-propagation-m``), the
callback as setting names (``probe_propagation_m``). So no front end's names
leak into another's output (a derived run never tells a beamline user to pass a
command-line flag).

An :class:`Advice` is a problem and the remedies that solve it; each remedy
names the options that carry it out. ``render(names)`` writes one sentence,
with ``names`` mapping option -> how that front end spells it (an option
mapped to ``None`` is left out of that front end's text).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: options a piece of advice may name, with what each means
OPTIONS: dict[str, str] = {
    "probe_propagation_m": "propagation distance of the initial probe (m)",
    "probe": "a warm-start probe",
    "defocus_search": "search the probe defocus together with the orientation",
    "distances_m": "the probe defocus distances to try",
    "trial_frames": "frames per calibration trial",
    "trial_iterations": "iterations per calibration trial",
    "defocus_sign": "which side of the focus the sample is (+1 downstream, -1 upstream)",
}

Names = Mapping[str, "str | None"]


@dataclass(frozen=True)
class Remedy:
    """One thing to do: ``what`` (a phrase), carried out by setting ``options``."""

    what: str
    options: tuple[str, ...]

    def render(self, names: Names | None = None) -> str:
        names = names or {}
        shown = [names.get(o, o) for o in self.options]
        spelled = [s for s in shown if s]
        return f"{self.what} ({', '.join(spelled)})" if spelled else self.what


@dataclass(frozen=True)
class Advice:
    """A problem and its remedies (any one of them is enough)."""

    problem: str
    remedies: tuple[Remedy, ...]

    def render(self, names: Names | None = None) -> str:
        """``problem: remedy (option) or remedy (option)``."""
        return f"{self.problem}: " + " or ".join(r.render(names) for r in self.remedies)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the problem and, per remedy, what and which options."""
        return {
            "problem": self.problem,
            "remedies": [{"what": r.what, "options": list(r.options)} for r in self.remedies],
        }


def render_all(advice: tuple[Advice, ...], names: Names | None = None) -> str:
    """Several pieces of advice as one text (``; `` between them)."""
    return "; ".join(a.render(names) for a in advice)


class CalibrationError(ValueError):
    """Calibration cannot proceed; ``advice`` says what to give (render it per front end)."""

    def __init__(self, context: str, advice: Advice) -> None:
        self.context = context
        self.advice = advice
        super().__init__(self.render())

    def render(self, names: Names | None = None) -> str:
        return f"{self.context}: {self.advice.render(names)}"
