"""``LiveViewer``: a matplotlib figure that follows a derived run's documents.

Subscribe it where the derived documents go (the callback's ``emit``), the way
the BestEffortCallback follows raw runs::

    viewer = LiveViewer()
    RE.subscribe(PtychoCallback(viewer, ...))   # or call it from your own emit

Documents arrive on the callback's publisher thread, and GUI toolkits must only
be touched from the main thread: the viewer keeps the newest picture and a
figure timer (main thread, every ``interval_s``) redraws it. Without a GUI
backend (Agg) no timer fires: call :meth:`LiveViewer.refresh`, or give
``png_dir`` to write one PNG per picture from the publisher thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .state import DocumentState, ViewState


class LiveViewer:
    """Document callback drawing amplitude, phase, probe, error curve and frames used.

    interval_s : how often the figure timer redraws (GUI backends).
    png_dir : also write ``<raw uid>-<iteration>.png`` there for every new picture.
    window : open a pyplot figure (False: PNGs only, no pyplot).
    """

    def __init__(
        self, interval_s: float = 0.5, png_dir: str | Path | None = None, window: bool = True
    ) -> None:
        from .figure import new_figure

        self._documents = DocumentState()
        self._lock = threading.Lock()
        self._pending: ViewState | None = None
        self.latest: ViewState | None = None
        self.pictures = 0
        self.png_dir = Path(png_dir) if png_dir is not None else None
        self._png_figure = new_figure() if self.png_dir is not None else None
        self.figure = new_figure(pyplot=True) if window else None
        self._timer = None
        if self.figure is not None:
            self._timer = self.figure.canvas.new_timer(interval=int(interval_s * 1000))
            self._timer.add_callback(self.refresh)
            self._timer.start()

    def __call__(self, name: str, doc: dict) -> None:
        """Feed one derived-run document (any thread)."""
        with self._lock:
            state = self._documents(name, doc)
            if state is None:
                return
            self._pending = self.latest = state
            self.pictures += 1
            if self.png_dir is not None:
                from .figure import save_png

                name = f"{state.raw_uid[:8]}-{self.pictures:04d}-it{state.iteration:05d}.png"
                save_png(state, self.png_dir / name, self._png_figure)

    def refresh(self) -> bool:
        """Redraw the window with the newest picture (main thread); False if none was new."""
        from .figure import draw

        with self._lock:
            state, self._pending = self._pending, None
        if state is None or self.figure is None:
            return False
        draw(self.figure, state)
        self.figure.canvas.draw_idle()
        return True

    def close(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self.figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self.figure)
