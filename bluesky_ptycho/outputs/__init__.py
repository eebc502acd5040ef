"""Outputs of a reconstruction: derived Bluesky runs (and, later, Tiled live nodes).

Outputs read :class:`~bluesky_ptycho.engine.reconstructor.Snapshot` objects; they
know nothing of the engine's internals or of the callback.
"""

from .derived_run import DerivedRun, Progress
from .publisher import SnapshotPublisher

__all__ = ["DerivedRun", "Progress", "SnapshotPublisher"]
