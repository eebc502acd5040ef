"""Which position convention fits a warm-start probe: as given, or negated.

Codes disagree on what CXI's ``translation`` holds (the sample's translation
or the probe's position, :mod:`bluesky_ptycho.cxi`). The two readings differ by
negating both position axes - the twin ambiguity - which a cold start cannot
see but a warm-start probe can: with the supplied probe only one reading
explains the data. :func:`check_position_sign` runs two short trials on the
central frames (:mod:`.trials`; together on a GPU) and says whether the
negated reading fits clearly better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ReconConfig
from .batch import run_trials
from .trials import DEFAULT_TRIAL_FRAMES, prepare_trials

#: trial iterations per reading
DEFAULT_SIGN_ITERATIONS = 15
#: the negated reading fits "clearly better" when its NLL excess over the noise
#: floor (0.5 per pixel) is below this fraction of the given reading's
CLEARLY_BETTER = 0.8
#: Poisson NLL per pixel of a fit at the noise level (see .trials)
NOISE_FLOOR = 0.5


@dataclass(frozen=True)
class PositionSignCheck:
    """NLL per valid pixel of the positions as given and negated, and the verdict."""

    nll_as_given: float
    nll_negated: float

    @property
    def negated_fits_better(self) -> bool:
        """True when the negated positions explain the data clearly better."""
        given = self.nll_as_given - NOISE_FLOOR
        return self.nll_negated - NOISE_FLOOR < CLEARLY_BETTER * given

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers and verdict."""
        return {
            "nll_as_given": self.nll_as_given,
            "nll_negated": self.nll_negated,
            "negated_fits_better": self.negated_fits_better,
        }


def check_position_sign(
    frames: Any,
    x: Any,
    y: Any,
    config: ReconConfig,
    n_frames: int = DEFAULT_TRIAL_FRAMES,
    iterations: int = DEFAULT_SIGN_ITERATIONS,
    backend: str = "auto",
) -> PositionSignCheck:
    """Trial NLL of the positions as given and negated, with the configured warm probe.

    Raises ValueError for a cold start (both readings fit equally: the twin).
    """
    if config.probe is None and config.probe_path is None:
        raise ValueError(
            "check_position_sign: needs a warm-start probe (probe or probe_path); from a cold "
            "start the two readings are exact twins"
        )
    trials = prepare_trials(frames, x, y, config, n_frames=n_frames)
    flipped = {"x_direction": -config.x_direction, "y_direction": -config.y_direction}
    given, negated = run_trials(trials, iterations, [{}, flipped], backend)
    return PositionSignCheck(float(given), float(negated))
