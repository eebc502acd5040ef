"""What a viewer shows: :class:`ViewState`, built from derived documents or Tiled live nodes."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: pixels whose coverage is below this are shown as uncovered
COVERED = 0.1
#: reads of a live node's images that look torn (see _consistent_images), and the pause
READ_ATTEMPTS, REREAD_S = 5, 0.1


@dataclass
class ViewState:
    """One picture of a reconstruction.

    object_amplitude, object_phase : (H, W) float, NaN where uncovered.
    origin_m, pixel_m : (y, x) metres of image pixel [0, 0] and the pixel size.
    history : (iteration, Poisson NLL per frame) pairs so far.
    """

    raw_uid: str
    object_amplitude: np.ndarray
    object_phase: np.ndarray
    probe_amplitude: np.ndarray
    origin_m: tuple[float, float]
    pixel_m: tuple[float, float]
    iteration: int = 0
    n_frames: int = 0
    frames_received: int = 0
    status: str = "running"
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def extent_um(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) in micrometres, for ``imshow(extent=...)``."""
        rows, cols = self.object_amplitude.shape
        y0, x0 = (o * 1e6 for o in self.origin_m)
        dy, dx = (p * 1e6 for p in self.pixel_m)
        return (x0, x0 + cols * dx, y0 + rows * dy, y0)


def masked(image: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """``image`` as float with NaN where ``coverage`` < :data:`COVERED` (or NaN)."""
    out = np.asarray(image, dtype=np.float64).copy()
    out[~(np.nan_to_num(np.asarray(coverage, dtype=np.float64)) >= COVERED)] = np.nan
    return out


class DocumentState:
    """Accumulates the derived run's ``progress`` and ``snapshots`` events into a ViewState."""

    def __init__(self) -> None:
        self._reset("")

    def _reset(self, raw_uid: str) -> None:
        self.raw_uid = raw_uid
        self._streams: dict[str, str] = {}
        self._progress: dict[str, Any] = {}
        self.history: list[tuple[int, float]] = []
        self.state: ViewState | None = None

    def __call__(self, name: str, doc: dict) -> ViewState | None:
        """Feed one document; returns the new state when it brought a new picture."""
        if name == "start" and "derived_from" in doc:
            self._reset(doc["derived_from"])
        elif name == "descriptor":
            self._streams[doc["uid"]] = doc["name"]
        elif name == "event":
            stream = self._streams.get(doc["descriptor"])
            data = doc["data"]
            if stream == "progress":
                self._progress = data
                nll, n = data.get("poisson_nll", math.nan), max(int(data.get("n_frames", 1)), 1)
                self.history.append((int(data["iteration"]), float(nll) / n))
            elif stream == "snapshots":
                coverage = np.asarray(data["snapshot_coverage"])
                progress = self._progress
                self.state = ViewState(
                    raw_uid=self.raw_uid,
                    object_amplitude=masked(data["snapshot_amplitude"], coverage),
                    object_phase=masked(data["snapshot_phase"], coverage),
                    probe_amplitude=np.asarray(data["probe_amplitude"]),
                    origin_m=tuple(data["snapshot_origin_m"]),  # type: ignore[arg-type]
                    pixel_m=tuple(data["snapshot_pixel_m"]),  # type: ignore[arg-type]
                    iteration=int(progress.get("iteration", 0)),
                    n_frames=int(progress.get("n_frames", 0)),
                    frames_received=int(progress.get("frames_received", 0)),
                    status="running" if not progress.get("final") else "finishing",
                    history=list(self.history),
                )
                return self.state
        elif name == "stop" and self.state is not None:
            self.state.status = doc.get("exit_status", "success")
            return self.state
        return None


def _consistent_images(live: Any, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, amplitude, phase) of one snapshot, re-read while they look torn.

    The writer replaces an array whose shape changed (a grown canvas) by
    creating it and then writing its data: read in between, it is all zeros.
    Images of different shapes, or a run with frames and nothing covered, are
    read again (up to :data:`READ_ATTEMPTS` times, :data:`REREAD_S` apart).
    """
    for attempt in range(READ_ATTEMPTS):
        coverage = np.asarray(live["coverage"].read())
        amplitude = np.asarray(live["object_amplitude"].read())
        phase = np.asarray(live["object_phase"].read())
        same_shape = coverage.shape == amplitude.shape == phase.shape
        covered = bool((np.nan_to_num(coverage) >= COVERED).any())
        if same_shape and (covered or frames == 0):
            break
        if attempt < READ_ATTEMPTS - 1:
            time.sleep(REREAD_S)
    return coverage, amplitude, phase


def history_rows(array: Any) -> np.ndarray:
    """The rows of a live ``error_history`` array client that its structure promises.

    The writer appends rows while a viewer reads; a plain ``read()`` sends the
    structure's shape as the expected one, and once the array has grown Tiled
    answers 500 and its client retries the same stale request for up to 45 s. The
    rows asked for by slice stay what they were (rows are only ever appended).
    """
    return np.asarray(array[: array.shape[0]])


def state_from_node(node: Any) -> ViewState:
    """The ViewState of a Tiled live-node container ``<path>/<raw_uid>`` (reads its arrays)."""
    md = dict(node.metadata)
    live = node["live"]
    coverage, amplitude, phase = _consistent_images(live, int(md.get("n_frames", 0)))
    pixel = md.get("live_pixel_size_m") or md.get("pixel_size_m") or (1.0, 1.0)
    history: list[tuple[int, float]] = []
    if "error_history" in live:
        rows = history_rows(live["error_history"])
        history = [(int(r[0]), float(r[1]) / max(float(r[2]), 1.0)) for r in rows]
        # read after the metadata: the writer may be ahead; show what the metadata says
        history = [h for h in history if h[0] <= int(md.get("iteration", 0))]
    return ViewState(
        raw_uid=str(md.get("raw_uid", "")),
        object_amplitude=masked(amplitude, coverage),
        object_phase=masked(phase, coverage),
        probe_amplitude=live["probe_amplitude"].read(),
        origin_m=tuple(md.get("origin_m") or (0.0, 0.0)),  # type: ignore[arg-type]
        pixel_m=tuple(pixel),  # type: ignore[arg-type]
        iteration=int(md.get("iteration", 0)),
        n_frames=int(md.get("n_frames", 0)),
        frames_received=int(md.get("frames_received", 0)),
        status=str(md.get("status", "running")),
        history=history,
    )
