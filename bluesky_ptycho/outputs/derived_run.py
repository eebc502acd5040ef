"""The derived Bluesky run of one reconstruction, composed with event-model.

Documents, in order (all through ``event_model.compose_run``, validated):

* ``start`` - ``derived_from`` = raw run uid, ``ptycho_reconstruction`` = the
  settings used (JSON-safe), raw ``scan_id`` when present;
* ``progress`` stream - one event per published snapshot (live and final):
  ``iteration``, ``n_frames`` (in the engine), ``frames_received``,
  ``poisson_nll``, ``elapsed_s``, ``final``;
* ``snapshots`` stream - one event per published snapshot, images on a fixed
  128 x 128 grid whatever the canvas size (see
  :func:`~bluesky_ptycho.outputs.previews.fixed_preview`): ``snapshot_amplitude``,
  ``snapshot_phase``, ``snapshot_coverage``, ``probe_amplitude``, ``probe_phase``,
  ``snapshot_origin_m``, ``snapshot_pixel_m``;
* ``primary`` stream - one event with the final result: ``object_amplitude``,
  ``object_phase``, ``coverage`` (H x W float32, finite everywhere),
  ``probe_amplitude``, ``probe_phase`` (M x N float32), ``nll_history``,
  ``origin_m`` and ``pixel_m`` ((y, x) metres), ``iteration``, ``n_frames``,
  the frame counts ``frames_received`` / ``frames_ingested`` /
  ``frames_failed`` / ``frames_unmatched``, ``probe_propagation_m`` (the probe
  defocus used, metres), ``calibration`` (JSON of the first-frames
  calibration summary, "{}" when none ran), and the phase-ramp convention:
  ``beam_center_source``, ``beam_center_offset_px`` (the held far-field centre)
  and ``beam_center_measured_px`` (the data's bright-field disc centre), (row,
  col) pixels from the frame centre;
* ``stop`` - ``exit_status`` "success" or "fail" with the reason.

Full-size live images reach viewers through Tiled live nodes
(:mod:`~bluesky_ptycho.outputs.tiled_nodes`), because the object canvas grows
during a scan and a stream's data shapes are fixed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from event_model import compose_run

from .previews import amplitude_phase, data_keys_of, fixed_preview

if TYPE_CHECKING:
    from ..engine.reconstructor import Snapshot

Emit = Callable[[str, dict], None]


@dataclass(frozen=True)
class Progress:
    """Frame accounting and timing that go with a snapshot."""

    frames_received: int = 0
    frames_ingested: int = 0
    frames_failed: int = 0
    frames_unmatched: int = 0
    elapsed_s: float = 0.0


def _number(value: Any) -> float:
    value = float(value)
    return value if math.isfinite(value) else float("nan")


class DerivedRun:
    """Compose and emit the documents of one derived run (see module docstring)."""

    def __init__(
        self,
        emit: Emit,
        raw_start: Mapping[str, Any],
        settings: Mapping[str, Any],
        uid: str | None = None,
    ) -> None:
        self._emit = emit
        metadata: dict[str, Any] = {
            "derived_from": raw_start["uid"],
            "ptycho_reconstruction": dict(settings),
            "plan_name": "ptycho_reconstruction",
        }
        if "scan_id" in raw_start:
            metadata["raw_scan_id"] = raw_start["scan_id"]
        self._bundle = compose_run(uid=uid, metadata=metadata)
        self.uid: str = self._bundle.start_doc["uid"]
        self._progress: Any = None
        self._primary: Any = None
        self._snapshots: Any = None
        self.stopped = False
        self._emit("start", self._bundle.start_doc)

    def _progress_descriptor(self) -> Any:
        if self._progress is None:
            keys = {
                "iteration": ("integer", "<i8"),
                "n_frames": ("integer", "<i8"),
                "frames_received": ("integer", "<i8"),
                "poisson_nll": ("number", "<f8"),
                "elapsed_s": ("number", "<f8"),
                "final": ("boolean", "|b1"),
            }
            self._progress = self._bundle.compose_descriptor(
                name="progress",
                data_keys={
                    k: {"source": "bluesky_ptycho", "dtype": d, "shape": [], "dtype_numpy": n}
                    for k, (d, n) in keys.items()
                },
            )
            self._emit("descriptor", self._progress.descriptor_doc)
        return self._progress

    def progress(self, snapshot: Snapshot, progress: Progress, final: bool = False) -> None:
        """Emit one ``progress`` event for ``snapshot``."""
        bundle = self._progress_descriptor()
        now = time.time()
        data = {
            "iteration": int(snapshot.iteration),
            "n_frames": int(snapshot.n_frames),
            "frames_received": int(progress.frames_received),
            "poisson_nll": _number(snapshot.metrics.get("poisson_nll", math.nan)),
            "elapsed_s": float(progress.elapsed_s),
            "final": bool(final),
        }
        self._emit(
            "event",
            bundle.compose_event(data=data, timestamps=dict.fromkeys(data, now)),
        )
        images = fixed_preview(snapshot)  # the ``snapshots`` stream (issue 10)
        if self._snapshots is None:
            self._snapshots = self._bundle.compose_descriptor(
                name="snapshots", data_keys=data_keys_of(images)
            )
            self._emit("descriptor", self._snapshots.descriptor_doc)
        self._emit(
            "event",
            self._snapshots.compose_event(data=images, timestamps=dict.fromkeys(images, now)),
        )

    def result(self, snapshot: Snapshot, progress: Progress) -> None:
        """Emit the ``primary`` descriptor and its single event: the final result."""
        amplitude, phase = amplitude_phase(np.asarray(snapshot.object))
        probe = np.asarray(snapshot.probe)
        history = np.array(
            [_number(h.get("poisson_nll", math.nan)) for h in snapshot.metrics.get("history", [])],
            dtype=np.float64,
        )
        arrays: dict[str, np.ndarray] = {
            "object_amplitude": amplitude,
            "object_phase": phase,
            "coverage": np.asarray(snapshot.coverage, dtype=np.float32),
            "probe_amplitude": np.abs(probe).astype(np.float32),
            "probe_phase": np.angle(probe).astype(np.float32),
            "nll_history": history,
            "origin_m": np.asarray(snapshot.origin_m, dtype=np.float64),
            "pixel_m": np.asarray(snapshot.pixel_m, dtype=np.float64),
        }
        scalars = {
            "iteration": int(snapshot.iteration),
            "n_frames": int(snapshot.n_frames),
            "frames_received": int(progress.frames_received),
            "frames_ingested": int(progress.frames_ingested),
            "frames_failed": int(progress.frames_failed),
            "frames_unmatched": int(progress.frames_unmatched),
        }
        data_keys: dict[str, Any] = {
            k: {
                "source": "bluesky_ptycho",
                "dtype": "array",
                "shape": list(v.shape),
                "dtype_numpy": v.dtype.str,
            }
            for k, v in arrays.items()
        }
        data_keys.update(
            {
                k: {
                    "source": "bluesky_ptycho",
                    "dtype": "integer",
                    "shape": [],
                    "dtype_numpy": "<i8",
                }
                for k in scalars
            }
        )
        extra = {
            "probe_propagation_m": float(snapshot.metrics.get("probe_propagation_m", 0.0)),
            "calibration": json.dumps(snapshot.metrics.get("calibration", {}), default=str),
        }
        data_keys["probe_propagation_m"] = {
            "source": "bluesky_ptycho",
            "dtype": "number",
            "shape": [],
            "dtype_numpy": "<f8",
        }
        data_keys["calibration"] = {"source": "bluesky_ptycho", "dtype": "string", "shape": []}
        # the phase-ramp convention (docs/engine.md): where the probe's far field is held
        for key in ("beam_center_offset_px", "beam_center_measured_px"):
            value = snapshot.metrics.get(key)
            extra[key] = [math.nan, math.nan] if value is None else [float(v) for v in value]
            data_keys[key] = {"source": "bluesky_ptycho", "dtype": "array", "shape": [2]}
        extra["beam_center_source"] = str(snapshot.metrics.get("beam_center_source", ""))
        data_keys["beam_center_source"] = {
            "source": "bluesky_ptycho",
            "dtype": "string",
            "shape": [],
        }
        self._primary = self._bundle.compose_descriptor(name="primary", data_keys=data_keys)
        self._emit("descriptor", self._primary.descriptor_doc)
        data: dict[str, Any] = {**arrays, **scalars, **extra}
        now = time.time()
        self._emit(
            "event", self._primary.compose_event(data=data, timestamps=dict.fromkeys(data, now))
        )

    def stop(self, exit_status: str = "success", reason: str = "") -> None:
        """Emit the stop document (once)."""
        if self.stopped:
            return
        self.stopped = True
        self._emit("stop", self._bundle.compose_stop(exit_status=exit_status, reason=reason))
