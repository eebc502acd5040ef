"""Viewers of a live reconstruction: a matplotlib figure fed by derived documents
(:class:`LiveViewer`, for an IPython profile) or by Tiled live nodes
(:class:`TiledFollower`, behind ``bluesky-ptycho view``).

Needs matplotlib; nothing in the callback package imports this one.
"""

from .follow import TiledFollower
from .live import LiveViewer
from .state import ViewState

__all__ = ["LiveViewer", "TiledFollower", "ViewState"]
