"""Calibration from the data: probe defocus search and detector-orientation detection.

Both run short trial reconstructions on a subset of frames (:mod:`.trials`)
and compare their Poisson NLL; on a GPU the trials of a step run together
(:mod:`.batch`):

* :func:`search_probe_propagation` - which propagation distance of the initial
  probe fits best (``ReconConfig.probe_propagation_m``);
* :func:`detect_orientation` - which of the 8 D4 ``dp_orient`` names x 4 motor
  sign pairs fits best, and which candidates the data cannot tell apart;
* :func:`search_orientation_and_defocus` - both at once, for a cold start that
  fits no orientation until the probe is propagated (a defocused probe);
* :func:`calibrate` - whichever of these a configuration leaves open, in one
  call that returns the configuration to use and a JSON-ready summary (for a
  live pipeline calibrating on the first frames of a scan).

Advice (what to change when the data cannot decide) is structured
(:mod:`.advice`): the command line renders it as flags, the callback as
setting names.

Everything here runs on NumPy (or CuPy through ``backend``) and imports no
Bluesky package.
"""

from .advice import Advice, CalibrationError, Remedy
from .auto import Calibration, calibrate
from .defocus import (
    DefocusTrial,
    default_defocus_range,
    format_defocus_table,
    search_probe_propagation,
)
from .joint import JointResult, search_orientation_and_defocus
from .orientation import Candidate, OrientationResult, detect_orientation, relation, to_motor_frame
from .trials import BeamEstimate, TrialSet, estimate_beam, prepare_trials, run_trial

__all__ = [
    "Advice",
    "CalibrationError",
    "Remedy",
    "BeamEstimate",
    "Calibration",
    "Candidate",
    "DefocusTrial",
    "JointResult",
    "OrientationResult",
    "TrialSet",
    "calibrate",
    "default_defocus_range",
    "detect_orientation",
    "estimate_beam",
    "format_defocus_table",
    "prepare_trials",
    "relation",
    "run_trial",
    "search_orientation_and_defocus",
    "search_probe_propagation",
    "to_motor_frame",
]
