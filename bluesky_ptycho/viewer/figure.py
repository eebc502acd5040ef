"""Draw a :class:`~bluesky_ptycho.viewer.state.ViewState` with matplotlib.

Panels: object amplitude and phase (micrometres, global phase removed for
display, uncovered pixels black), probe amplitude, error curve (Poisson NLL
per frame) and frames used. The layout is fixed (:data:`AMPLITUDE_RECT`, in
figure fractions) so that saved PNGs can be compared frame by frame.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .state import ViewState

FIGSIZE_IN = (10.0, 7.5)
DPI = 80
#: [left, bottom, width, height] of the object-amplitude panel, in figure fractions
AMPLITUDE_RECT = (0.05, 0.50, 0.40, 0.42)
PHASE_RECT = (0.55, 0.50, 0.40, 0.42)
PROBE_RECT = (0.05, 0.06, 0.25, 0.33)
ERROR_RECT = (0.40, 0.06, 0.55, 0.33)
UNCOVERED_COLOR = "black"


def new_figure(pyplot: bool = False) -> Any:
    """A figure with the viewer's panels (``pyplot``: managed by pyplot, for a window)."""
    if pyplot:
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=FIGSIZE_IN, dpi=DPI)
    else:
        from matplotlib.figure import Figure

        figure = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    for rect in (AMPLITUDE_RECT, PHASE_RECT, PROBE_RECT, ERROR_RECT):
        figure.add_axes(rect)
    return figure


def draw(figure: Any, state: ViewState) -> None:
    """Redraw every panel of ``figure`` (from :func:`new_figure`) for ``state``."""
    import matplotlib

    amp_ax, phase_ax, probe_ax, error_ax = figure.axes[:4]
    for ax in (amp_ax, phase_ax, probe_ax, error_ax):
        ax.clear()
    amplitude = state.object_amplitude
    phase = state.object_phase
    inside = np.isfinite(phase) & np.isfinite(amplitude)
    if inside.any():  # display only: the global phase is arbitrary
        field = np.where(inside, np.nan_to_num(amplitude) * np.exp(1j * np.nan_to_num(phase)), 0)
        phase = np.where(
            inside, np.angle(field * np.exp(-1j * np.angle(field[inside].sum()))), np.nan
        )
    for ax, image, title, cmap in (
        (amp_ax, amplitude, "object amplitude", "viridis"),
        (phase_ax, phase, "object phase (rad)", "twilight"),
    ):
        colormap = matplotlib.colormaps[cmap].with_extremes(bad=UNCOVERED_COLOR)
        ax.imshow(image, cmap=colormap, extent=state.extent_um, interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("x (µm)")
    probe_ax.imshow(state.probe_amplitude, cmap="magma")
    probe_ax.set_title("probe amplitude")
    probe_ax.set_xticks([])
    probe_ax.set_yticks([])
    if state.history:
        iterations, nll = zip(*state.history, strict=True)
        error_ax.semilogy(iterations, nll)
    error_ax.set_xlabel("iteration")
    error_ax.set_ylabel("Poisson NLL per frame")
    error_ax.set_title(
        f"{state.n_frames} frames used of {state.frames_received} received, "
        f"iteration {state.iteration}, {state.status}"
    )
    figure.suptitle(f"run {state.raw_uid[:8]}")


def png_metadata(state: ViewState) -> dict[str, str]:
    """Text stored in each PNG: the state's numbers and the amplitude panel's extent."""
    return {
        "Description": json.dumps(
            {
                "raw_uid": state.raw_uid,
                "iteration": state.iteration,
                "n_frames": state.n_frames,
                "frames_received": state.frames_received,
                "status": state.status,
                "extent_um": list(state.extent_um),
                "amplitude_rect": list(AMPLITUDE_RECT),
            }
        )
    }


def save_png(state: ViewState, path: Path, figure: Any = None) -> Path:
    """Draw ``state`` and write it to ``path`` (PNG, no window needed)."""
    figure = figure if figure is not None else new_figure()
    draw(figure, state)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, metadata=png_metadata(state))
    return path
