"""Detector orientation and motor signs from the data: 8 D4 names x 4 sign pairs.

:func:`detect_orientation` runs one short trial (:mod:`.trials`) per candidate
``(dp_orient, x_direction, y_direction)`` and ranks the 32 candidates by
Poisson NLL. Wrong candidates assign each pattern to the wrong place or turn
its speckle against the scan, and fit much worse.

Not every candidate can be told apart, and the ranking says which:

* **Mirror pairs (same image).** Mirroring the patterns about a detector axis
  together with flipping the matching motor sign (``fliplr`` with
  ``x_direction``, ``flipud`` with ``y_direction``, ``rot180`` with both) is
  the same experiment seen in a mirror: the object comes out mirrored on the
  engine's canvas, which is the *same object in motor coordinates*. A probe
  model with that mirror symmetry - every cold start, and any round probe -
  fits the four candidates of such a class equally well. Use any of them; a
  warm-start probe that is not mirror-symmetric picks one.
* **Twins (conjugate phase).** A pattern turned by 180 degrees is the pattern of
  the complex-conjugate exit wave (``I(-q)`` of ``psi`` is ``I(q)`` of
  ``conj(psi)``): the same positions are fit by the conjugate object and probe.
  A real, centro-symmetric probe model (a plain cold start) cannot tell a
  candidate from its twin; the image has the right amplitude and the wrong
  phase sign. A probe of known defocus breaks the tie (cold start propagated
  by a distance of known sign, ``probe_propagation_m``), as does a warm-start
  probe.

Trials are built so that these symmetries hold *exactly*, and ties show up
as equal NLLs rather than as noise: an odd, DC-centred crop (every D4
transform is an exact mirror or rotation about the centre pixel), positions
rounded to whole trial pixels (no sub-pixel interpolation, whose zero-filled
edge is not mirror-symmetric) and double precision (single-precision rounding
lets equivalent trials drift apart by a few per cent in ten iterations).
A warm-start probe is held fixed for the whole trial: the question is how well
*that* probe explains the data in each orientation (left free, it adapts and
the ranking becomes a race).

Candidates within ``tolerance`` (relative NLL) of the best are *tied*; each
row says how it relates to the best, and :attr:`OrientationResult.verdict`
sums it up: ``unique``, ``equivalent`` (only mirror pairs tied: safe), or
``ambiguous`` (a twin or a different orientation tied: more information needed).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import D4_ORIENTATIONS, ReconConfig
from ..engine.orientation import orient_frames
from .advice import Advice, Names, Remedy, render_all
from .batch import run_trials
from .trials import DEFAULT_TRIAL_FRAMES, TrialSet, prepare_trials

#: ML_grad iterations per candidate
DEFAULT_ORIENTATION_ITERATIONS = 10
#: candidates whose NLL is within this fraction of the best are tied. Measured on
#: simulated scans (48 frames, 10 iterations): equivalent candidates agree to
#: < 0.1 %; the nearest inequivalent candidate was 10 % to 3.5x worse (the closest:
#: a twin, with a probe model only 0.4 depths of focus out of focus).
DEFAULT_TOLERANCE = 0.05
#: NLLs that agree to this (relative) are exact ties: listed in a fixed order
EXACT_TIE = 1e-6
#: trials run in this precision so that equivalent candidates tie exactly
TRIAL_DTYPE = "complex128"

SIGN_PAIRS = ((1, 1), (1, -1), (-1, 1), (-1, -1))

SAME = "best"
MIRROR = "mirror"
TWIN = "twin"
OTHER = "different"

RELATION_NOTES = {
    SAME: "best",
    MIRROR: "mirror of rank 1: same object in motor coordinates",
    TWIN: "twin of rank 1: conjugate object and probe (phase sign flipped)",
    OTHER: "",
}


def orientation_matrix(name: str) -> np.ndarray:
    """2x2 integer matrix taking (row, col) offsets from the centre of a frame to
    where :func:`~bluesky_ptycho.engine.orientation.orient_frames` moves them."""
    index = np.arange(9).reshape(3, 3)
    moved = orient_frames(index, name)
    matrix = np.zeros((2, 2), dtype=int)
    for axis, source in enumerate((7, 5)):  # input offsets (+1, 0) and (0, +1)
        row, col = np.argwhere(moved == source)[0]
        matrix[:, axis] = (row - 1, col - 1)
    return matrix


_MATRICES = {name: orientation_matrix(name) for name in D4_ORIENTATIONS}


def compose(outer: str, inner: str) -> str:
    """The D4 name of ``outer`` applied after ``inner``."""
    product = _MATRICES[outer] @ _MATRICES[inner]
    return next(name for name, matrix in _MATRICES.items() if np.array_equal(matrix, product))


def relation(candidate: tuple[str, int, int], reference: tuple[str, int, int]) -> str:
    """How ``candidate`` (dp_orient, x_direction, y_direction) relates to ``reference``.

    ``best`` (the same), ``mirror`` (patterns mirrored with the matching motor
    signs: same image), ``twin`` (a mirror composed with a 180-degree turn of the
    patterns: conjugate solution) or ``different``.
    """
    if candidate == reference:
        return SAME
    turn = _MATRICES[candidate[0]] @ _MATRICES[reference[0]].T
    flips = (candidate[2] * reference[2], candidate[1] * reference[1])  # (row, col) = (y, x)
    if np.array_equal(turn, np.diag(flips)):
        return MIRROR
    if np.array_equal(turn, -np.diag(flips)):
        return TWIN
    return OTHER


@dataclass(frozen=True)
class Candidate:
    """One orientation candidate and its trial result."""

    dp_orient: str
    x_direction: int
    y_direction: int
    nll_per_pixel: float
    relative: float = float("nan")  # nll / best nll
    relation: str = OTHER  # to the best candidate
    tied: bool = False

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.dp_orient, self.x_direction, self.y_direction)

    def flags(self) -> str:
        """Command-line flags of ``reconstruct`` for this candidate."""
        return (
            f"--dp-orient {self.dp_orient} --x-direction {self.x_direction:+d} "
            f"--y-direction {self.y_direction:+d}"
        )

    def config_changes(self) -> dict[str, Any]:
        """ReconConfig fields for this candidate."""
        return {
            "dp_orient": self.dp_orient,
            "x_direction": self.x_direction,
            "y_direction": self.y_direction,
        }


@dataclass(frozen=True)
class OrientationResult:
    """Ranked candidates (best first) and what they mean together.

    verdict : ``unique`` (one candidate clearly best), ``equivalent`` (the tied
        candidates are mirrors of the best: same image, use :attr:`recommended`),
        or ``ambiguous`` (a twin or a different orientation is tied).
    recommended : the candidate to use: the best, or among tied mirrors of the
        best (same image) the caller's current configuration (nothing to
        change) or else the one with both motor directions +1.
    """

    candidates: tuple[Candidate, ...]
    tolerance: float
    recommended: Candidate
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    @property
    def tied(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.tied)

    @property
    def verdict(self) -> str:
        relations = {c.relation for c in self.tied}
        if relations == {SAME}:
            return "unique"
        if relations <= {SAME, MIRROR}:
            return "equivalent"
        return "ambiguous"

    def advice(self) -> tuple[Advice, ...]:
        """What to change when the verdict is not ``unique`` (structured, see :mod:`.advice`)."""
        if self.verdict == "unique":
            return ()
        if self.verdict == "equivalent":
            pick = Remedy("a warm-start probe that is not mirror-symmetric", ("probe",))
            return (Advice("any of them is right; to pick one, give", (pick,)),)
        relations = {c.relation for c in self.tied}
        found = []
        if TWIN in relations:
            found.append(
                Advice(
                    "a twin is tied (conjugate object: right amplitude, phase sign flipped)",
                    (
                        Remedy(
                            "give a probe of known defocus, with the sign the beamline "
                            "geometry dictates",
                            ("probe_propagation_m",),
                        ),
                        Remedy("a warm-start probe", ("probe",)),
                    ),
                )
            )
        if OTHER in relations:
            found.append(
                Advice(
                    "a different orientation is tied",
                    (
                        Remedy(
                            "the probe model may be far off (a defocused probe: search the "
                            "defocus too)",
                            ("defocus_search",),
                        ),
                        Remedy("the trials too small", ("trial_frames", "trial_iterations")),
                    ),
                )
            )
        return tuple(found)

    def explanation(self, names: Names | None = None) -> str:
        """One paragraph on the verdict and what to do.

        names : how the caller spells the options of :meth:`advice` (e.g. as
            command-line flags); default: calibration's own option names.
        """
        tied = len(self.tied)
        if self.verdict == "unique":
            second = self.candidates[1].relative if len(self.candidates) > 1 else float("nan")
            return f"unique: the next candidate's NLL is {second:.2f}x the best."
        advice = render_all(self.advice(), names)
        if self.verdict == "equivalent":
            return (
                f"equivalent: {tied} candidates fit within {self.tolerance:.0%} and are mirrors "
                "of each other (patterns mirrored with the matching motor sign): they give the "
                f"same object in motor coordinates. {advice[0].upper()}{advice[1:]}."
            )
        return f"ambiguous: {tied} candidates fit within {self.tolerance:.0%}; {advice}."

    def format_table(self) -> str:
        """The ranked table: rank, dp_orient, signs, NLL per pixel, ratio to best, note."""
        lines = [
            f"{'rank':>4}  {'dp_orient':<13} {'x_dir':>5} {'y_dir':>5} "
            f"{'nll_per_pixel':>13} {'x_best':>7}  note"
        ]
        for rank, c in enumerate(self.candidates, start=1):
            note = RELATION_NOTES[c.relation] if c.relation != SAME else "best"
            if c.tied and c.relation != SAME:
                note = f"TIED, {note}" if note else "TIED"
            lines.append(
                f"{rank:4d}  {c.dp_orient:<13} {c.x_direction:+5d} {c.y_direction:+5d} "
                f"{c.nll_per_pixel:13.5g} {c.relative:7.3f}  {note}".rstrip()
            )
        return "\n".join(lines)


def candidates() -> list[tuple[str, int, int]]:
    """The 32 (dp_orient, x_direction, y_direction) candidates, in trial order."""
    return [(name, sx, sy) for name, (sx, sy) in itertools.product(D4_ORIENTATIONS, SIGN_PAIRS)]


def rank_candidates(
    results: dict[tuple[str, int, int], float],
    tolerance: float = DEFAULT_TOLERANCE,
    current: tuple[str, int, int] | None = None,
    settings: dict[str, Any] | None = None,
) -> OrientationResult:
    """Rank trial NLLs (lowest first), mark ties and relations to the best.

    Candidates whose NLLs agree to ``EXACT_TIE`` (relative) are listed with
    positive motor directions first, then in :func:`candidates` order. The
    recommendation is the best candidate; when mirrors of it (same image) are
    tied, the caller's ``current`` configuration if it is one of them, else the
    one with both directions +1 (every mirror class has exactly one).
    """
    if not results:
        raise ValueError("orientation: no candidates to rank")
    if not tolerance >= 0:
        raise ValueError(f"orientation: tolerance must be >= 0, got {tolerance!r}")
    canonical = {key: index for index, key in enumerate(candidates())}

    def preference(key: tuple[str, int, int]) -> tuple[bool, int]:
        return (key[1:] != (1, 1), canonical.get(key, len(canonical)))

    by_nll = sorted(results, key=lambda key: results[key])
    groups: dict[tuple[str, int, int], int] = {}
    group, first = 0, results[by_nll[0]]
    for key in by_nll:
        if abs(results[key] - first) > EXACT_TIE * abs(first):
            group, first = group + 1, results[key]
        groups[key] = group
    ranking = sorted(by_nll, key=lambda key: (groups[key], *preference(key)))
    best_key = ranking[0]
    best_nll = results[best_key]
    ranked = []
    for key in ranking:
        nll = results[key]
        relative = nll / best_nll if best_nll > 0 else float("inf")
        ranked.append(
            Candidate(
                *key,
                nll_per_pixel=nll,
                relative=relative,
                relation=relation(key, best_key),
                tied=bool(nll <= best_nll * (1 + tolerance)),
            )
        )
    same_image = [c for c in ranked if c.tied and c.relation in (SAME, MIRROR)]
    recommended = min(same_image, key=lambda c: preference(c.key))
    for c in same_image:
        if c.key == current:
            recommended = c
    return OrientationResult(tuple(ranked), tolerance, recommended, dict(settings or {}))


def detect_orientation(
    frames: Any,
    x: Any,
    y: Any,
    config: ReconConfig,
    n_frames: int = DEFAULT_TRIAL_FRAMES,
    iterations: int = DEFAULT_ORIENTATION_ITERATIONS,
    crop_px: int | None = None,
    backend: str = "auto",
    tolerance: float = DEFAULT_TOLERANCE,
    report: Callable[[str], Any] | None = None,
    batched: bool | None = None,
) -> OrientationResult:
    """Try the 32 orientation and sign candidates on a subset; rank them by NLL.

    Parameters
    ----------
    frames : (n, M, N) counts as recorded (array or h5py dataset); frames must be
        square for the transposing candidates (the trial crop is square).
    x, y : (n,) motor readings.
    config : geometry and probe model. ``dp_orient`` and the directions are
        replaced by each candidate; the probe model (cold start, warm-start
        ``probe``/``probe_path``, ``probe_propagation_m``) is used as given.
    n_frames, iterations, crop_px : trial size (see :mod:`.trials`).
    tolerance : relative NLL within which candidates count as tied.
    report : called with one line per candidate (progress), e.g. ``print``.
    batched : run the 32 trials together (:func:`.batch.start_trials`; None: on
        CuPy), or each by its own Reconstructor.
    """
    trials = prepare_trials(frames, x, y, config, n_frames, crop_px)
    current = (config.dp_orient, config.x_direction, config.y_direction)
    return rank_trials(trials, iterations, backend, tolerance, current, report, batched)


def rank_trials(
    trials: TrialSet,
    iterations: int = DEFAULT_ORIENTATION_ITERATIONS,
    backend: str = "auto",
    tolerance: float = DEFAULT_TOLERANCE,
    current: tuple[str, int, int] | None = None,
    report: Callable[[str], Any] | None = None,
    batched: bool | None = None,
) -> OrientationResult:
    """:func:`detect_orientation` on prepared trials (their config's probe model)."""
    config = trials.config
    warm = config.probe is not None
    hold = iterations if warm else config.probe_hold_iterations
    keys = candidates()
    variants = [{"dp_orient": n, "x_direction": sx, "y_direction": sy} for n, sx, sy in keys]
    nlls = run_trials(
        trials,
        iterations,
        variants,
        backend,
        batched,
        round_positions=True,
        dtype=TRIAL_DTYPE,
        probe_hold_iterations=hold,
    )
    results = {}
    for (name, sx, sy), nll in zip(keys, nlls, strict=True):
        results[(name, sx, sy)] = float(nll) if np.isfinite(nll) else float("inf")
        if report is not None:
            report(f"  {name:<13} x {sx:+d} y {sy:+d}   NLL/pixel {nll:.6g}")
    model = trials.probe_model
    if config.probe_propagation_m:
        model += f", propagated {config.probe_propagation_m * 1e6:+.3f} um"
    settings = {
        "n_frames": int(trials.frames.shape[0]),
        "iterations": iterations,
        "crop_px": trials.crop_px,
        "probe_model": model + (" (held fixed)" if warm else ""),
    }
    return rank_candidates(results, tolerance, current, settings)


def to_motor_frame(snapshot: Any, config: ReconConfig) -> tuple[Any, Any, tuple[float, float]]:
    """A snapshot's object and coverage with axes along the motors instead of the canvas.

    The engine's canvas axis is ``motor x position_scale_m x direction``; where a
    direction is -1 the canvas runs against the motor. Flipping those axes
    gives the image in motor coordinates, the frame in which the mirror
    candidates of :func:`detect_orientation` give the same object (and in which
    other maps of the same scan, e.g. fluorescence, are drawn).

    Returns
    -------
    object, coverage : (H, W) arrays, row 0 at the lowest motor y, column 0 at the lowest x.
    origin_m : (y, x) motor position (x ``position_scale_m``, metres) of pixel [0, 0].
    """
    signs = (config.y_direction, config.x_direction)
    obj = snapshot.object[:: signs[0], :: signs[1]]
    coverage = snapshot.coverage[:: signs[0], :: signs[1]]
    origin = []
    for axis, sign in enumerate(signs):
        start, pixel, size = snapshot.origin_m[axis], snapshot.pixel_m[axis], obj.shape[axis]
        origin.append(float(start if sign == 1 else -(start + (size - 1) * pixel)))
    return obj, coverage, (origin[0], origin[1])
