"""The Bluesky callback: live reconstruction of ptychography runs.

``RE.subscribe(PtychoCallback(emit, energy_kev=..., ...))`` or, in a profile,
``RE.subscribe(RunRouter([ptycho_factory(emit, ...)]))``. See docs/usage.md.
"""

from .handlers import DEFAULT_HANDLERS, AreaDetectorHDF5Handler, NumpySeqHandler
from .options import CallbackOptions
from .router import PtychoCallback, ptycho_factory
from .run import RunResult

__all__ = [
    "DEFAULT_HANDLERS",
    "AreaDetectorHDF5Handler",
    "CallbackOptions",
    "NumpySeqHandler",
    "PtychoCallback",
    "RunResult",
    "ptycho_factory",
]
