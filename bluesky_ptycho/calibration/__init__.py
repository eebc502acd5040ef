"""Calibration from the data: probe defocus search and detector-orientation detection.

Both run short trial reconstructions on a subset of frames (:mod:`.trials`)
and compare their Poisson NLL:

* :func:`search_probe_propagation` - which propagation distance of the initial
  probe fits best (``ReconConfig.probe_propagation_m``);
* :func:`detect_orientation` - which of the 8 D4 ``dp_orient`` names x 4 motor
  sign pairs fits best, and which candidates the data cannot tell apart.

Everything here runs on NumPy (or CuPy through ``backend``) and imports no
Bluesky package.
"""

from .defocus import (
    DefocusTrial,
    default_defocus_range,
    format_defocus_table,
    search_probe_propagation,
)
from .orientation import Candidate, OrientationResult, detect_orientation, relation
from .trials import BeamEstimate, TrialSet, estimate_beam, prepare_trials, run_trial

__all__ = [
    "BeamEstimate",
    "Candidate",
    "DefocusTrial",
    "OrientationResult",
    "TrialSet",
    "default_defocus_range",
    "detect_orientation",
    "estimate_beam",
    "format_defocus_table",
    "prepare_trials",
    "relation",
    "run_trial",
    "search_probe_propagation",
]
