"""Live ML_grad ptychography for Bluesky.

The engine (``ReconConfig``, ``Reconstructor``) needs only NumPy (CuPy for the
GPU); the Bluesky callback lives in :mod:`bluesky_ptycho.callback`.
"""

from .config import ReconConfig
from .engine.reconstructor import Reconstructor, Snapshot

__all__ = ["ReconConfig", "Reconstructor", "Snapshot"]
__version__ = "0.1.0"
