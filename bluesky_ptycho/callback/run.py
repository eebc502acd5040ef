"""One raw run's reconstruction, owned by the worker thread.

A fresh :class:`RunReconstruction` (settings, frame assembler, engine) is made for
every ptychography run; nothing carries over from the previous run.

Phases: ``collecting`` (between the start and stop documents: frames join
between iterations, iterating once ``min_frames`` are in; with ``calibrate``
the first ``calibrate_frames`` frames are held back, the orientation and/or
probe defocus are found from them, and the engine starts with the result) ->
``refining``
(after the stop document, once every readable frame is in: up to
``refine_iterations`` more iterations) -> ``done`` (final snapshot published,
derived run ended). Any error ends the run with ``exit_status="fail"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..calibration import calibrate
from ..engine.reconstructor import Reconstructor, Snapshot
from ..outputs import Progress, SnapshotPublisher
from .handlers import Handler
from .settings import RunSettings, merge
from .sources import FrameAssembler

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What became of one raw run (kept by the callback as ``last_result``)."""

    raw_uid: str
    derived_uid: str | None
    exit_status: str
    reason: str
    frames_received: int
    frames_ingested: int
    frames_failed: int
    frames_unmatched: int
    iterations: int
    refine_iterations_done: int
    elapsed_s: float
    snapshot: Snapshot | None = field(default=None, repr=False)


class RunReconstruction:
    """State and steps of one run's reconstruction (see module docstring).

    raw_start : the raw run's start document.
    defaults : constructor settings; the start document's ``ptycho`` dict wins.
    """

    def __init__(
        self,
        raw_start: Mapping[str, Any],
        defaults: Mapping[str, Any],
        handlers: Mapping[str, Handler],
        root_map: Mapping[str, str] | None,
        backend: str,
        publisher: SnapshotPublisher,
        snapshot_interval_s: float,
        file_timeout_s: float,
        scan_duty_cycle: float = 1.0,
    ) -> None:
        self.raw_uid: str = raw_start["uid"]
        self.started = time.monotonic()
        self.phase = "collecting"
        self.exit_status = "success"
        self.reason = ""
        self.frames_received = 0
        self.refine_done = 0
        self.stop_seen_at: float | None = None
        self._backend = backend
        self._publisher = publisher
        self._snapshot_interval_s = snapshot_interval_s
        self._file_timeout_s = file_timeout_s
        self._duty = scan_duty_cycle
        self.rest_until = 0.0  # while collecting: no iteration before this (monotonic s)
        self._last_publish = 0.0
        self.engine: Reconstructor | None = None
        self.final_snapshot: Snapshot | None = None
        self.calibration: dict[str, Any] | None = None  # summary when calibrate is on
        self._held: list[tuple[Any, Any, Any]] = []  # frames held back for calibration
        metadata = raw_start.get("ptycho")
        if not isinstance(metadata, Mapping):
            metadata = {}
        described: dict[str, Any] = {**defaults, **metadata}
        try:
            self.settings: RunSettings | None = merge(defaults, metadata)
            described = self.settings.describe()
        except ValueError as error:
            self.settings = None
            self.fail(f"invalid settings: {error}")
            described = {k: str(v) for k, v in described.items()}
        self.derived_uid = publisher.begin(self.raw_uid, raw_start, described)
        self.assembler: FrameAssembler | None = None
        if self.settings is not None:
            s = self.settings
            self.assembler = FrameAssembler(s.image_key, s.x_key, s.y_key, handlers, root_map)

    # ---------------------------------------------------------------- input
    def handle(self, kind: str, payload: Any) -> None:
        """Feed one item's payload (see :mod:`~bluesky_ptycho.callback.router`)."""
        if kind == "fail":
            self.fail(str(payload))
            return
        if kind == "stop":
            self.frames_received = int(payload["frames_received"])
            if payload.get("exit_status", "success") != "success":
                logger.info(
                    "ptycho: raw run %s ended with %s; reconstructing the frames it has",
                    self.raw_uid,
                    payload.get("exit_status"),
                )
            self.stop_seen_at = time.monotonic()
            return
        assembler = self.assembler
        if assembler is None or self.phase == "done":
            return
        if kind == "descriptor":
            assembler.add_descriptor(payload["uid"], payload["name"], payload["data_keys"])
        elif kind == "values":
            assembler.add_values(*payload)
        elif kind == "resource":
            assembler.add_resource(payload)
        elif kind == "datum":
            for datum_id, resource, kwargs in payload:
                assembler.add_datum(datum_id, resource, kwargs)
        elif kind == "stream_resource":
            assembler.add_stream_resource(payload)
        elif kind == "stream_datum":
            assembler.add_stream_datum(payload)

    def ingest(self) -> int:
        """Move complete frames into the engine; returns how many joined."""
        assembler = self.assembler
        if assembler is None or self.phase == "done":
            return 0
        if self.stop_seen_at is not None and assembler.pending_reads:
            if time.monotonic() - self.stop_seen_at > self._file_timeout_s:
                assembler.give_up()
        batch = assembler.collect()
        if batch is not None and self.engine is None:
            assert self.settings is not None
            if self.settings.calibrate != "off":
                self._held.append(batch)
                batch = self._calibrated_start()
            else:
                self._start_engine(self.settings.config(self._frame_shape(batch[0])))
        elif batch is None and self._held and self.inputs_complete:
            batch = self._calibrated_start()  # the scan ended before calibrate_frames
        if batch is None:
            return 0
        frames, x, y = batch
        assert self.engine is not None
        self.engine.add_frames(frames, x, y)
        return len(frames)

    def _frame_shape(self, frames: Any) -> tuple[int, int]:
        assert self.assembler is not None
        return self.assembler.frame_shape or (int(frames.shape[1]), int(frames.shape[2]))

    def _start_engine(self, config: Any) -> None:
        self.engine = Reconstructor(config, backend=self._backend)

    def _calibrated_start(self) -> tuple[Any, Any, Any] | None:
        """Once enough frames are held: calibrate, start the engine, release them."""
        assert self.settings is not None
        held = sum(len(frames) for frames, _, _ in self._held)
        if held < self.settings.calibrate_frames and not self.inputs_complete:
            return None
        frames, x, y = (np.concatenate(parts) for parts in zip(*self._held, strict=True))
        self._held = []
        config = self.settings.config(self._frame_shape(frames))
        mode = self.settings.calibrate
        try:
            found = calibrate(
                frames,
                x,
                y,
                config,
                orientation=mode in ("orientation", "both"),
                defocus=mode in ("defocus", "both"),
                defocus_sign=self.settings.defocus_sign,
                backend=self._backend,
            )
            config, self.calibration = found.config, dict(found.summary)
            logger.info("ptycho: run %s calibrated: %s", self.raw_uid, found.changes or "no change")
        except Exception as error:  # never lose the run: reconstruct as configured
            logger.exception("ptycho: calibration of run %s failed", self.raw_uid)
            self.calibration = {"verdict": "failed", "applied": False, "note": str(error)}
        self._start_engine(config)
        return frames, x, y

    # ------------------------------------------------------------ iterating
    @property
    def inputs_complete(self) -> bool:
        """Stop document seen and no file read still pending."""
        return (
            self.stop_seen_at is not None
            and self.assembler is not None
            and self.assembler.pending_reads == 0
        )

    def can_iterate(self) -> bool:
        if self.phase == "done" or self.engine is None or self.settings is None:
            return False
        if self.phase == "refining":
            return self.refine_done < self.settings.refine_iterations or self.engine.iteration == 0
        if self.inputs_complete:
            return True
        return self.engine.n_frames >= self.settings.min_frames and self.rest_s() == 0.0

    def rest_s(self) -> float:
        """Seconds left of the pause that ``scan_duty_cycle`` imposes while collecting."""
        return max(0.0, self.rest_until - time.monotonic())

    def iterate(self) -> None:
        """One engine iteration (then a live snapshot when one is due)."""
        assert self.engine is not None
        started = time.monotonic()
        self.engine.iterate(1)
        if self.phase == "refining":
            self.refine_done += 1
        now = time.monotonic()
        if self.phase == "collecting" and self._duty < 1.0:
            self.rest_until = now + (now - started) * (1.0 - self._duty) / self._duty
        if now - self._last_publish >= self._snapshot_interval_s:
            self._last_publish = now
            self._publisher.offer(self.raw_uid, self.engine.snapshot(live=True), self.progress())

    def progress(self) -> Progress:
        a = self.assembler
        return Progress(
            frames_received=max(self.frames_received, a.announced if a else 0),
            frames_ingested=a.ingested if a else 0,
            frames_failed=a.failed if a else 0,
            frames_unmatched=a.unmatched if a else 0,
            elapsed_s=time.monotonic() - self.started,
        )

    # ------------------------------------------------------------- the end
    def fail(self, reason: str) -> None:
        """Record a failure; the run ends at the next :meth:`finish`."""
        if self.exit_status != "fail":
            logger.error("ptycho: reconstruction of run %s failed: %s", self.raw_uid, reason)
            self.exit_status, self.reason = "fail", reason
        self.phase = "finishing"

    def finish(self, note: str = "") -> RunResult:
        """Publish the final snapshot, end the derived run; returns the summary."""
        if self.assembler is not None:
            self.assembler.give_up()
            try:
                self.assembler.collect()  # count what is left as failed
            except Exception:
                logger.exception("ptycho: collecting the last frames of run %s", self.raw_uid)
            self.assembler.finish()
            for reason in self.assembler.reasons:
                logger.debug("ptycho: run %s: %s", self.raw_uid, reason)
        progress = self.progress()
        snapshot = None
        if self.engine is not None and self.engine.iteration > 0:
            snapshot = self.engine.snapshot(live=False)
            if self.calibration is not None:
                snapshot.metrics["calibration"] = self.calibration
        elif self.exit_status == "success":
            self.exit_status = "fail"
            self.reason = self._no_result_reason()
        reasons = [self.reason] if self.reason else []
        if note:
            reasons.append(note)
        lost = progress.frames_failed + progress.frames_unmatched
        if lost and self.exit_status == "success":
            reasons.append(
                f"{progress.frames_failed} frame(s) unreadable, "
                f"{progress.frames_unmatched} without positions"
            )
        reason = "; ".join(reasons)
        self._publisher.end(self.raw_uid, snapshot, progress, self.exit_status, reason)
        self.phase = "done"
        self.final_snapshot = snapshot
        return RunResult(
            raw_uid=self.raw_uid,
            derived_uid=self.derived_uid,
            exit_status=self.exit_status,
            reason=reason,
            frames_received=progress.frames_received,
            frames_ingested=progress.frames_ingested,
            frames_failed=progress.frames_failed,
            frames_unmatched=progress.frames_unmatched,
            iterations=self.engine.iteration if self.engine else 0,
            refine_iterations_done=self.refine_done,
            elapsed_s=progress.elapsed_s,
            snapshot=snapshot,
        )

    def _no_result_reason(self) -> str:
        a = self.assembler
        if a is None or a.announced == 0:
            key = self.settings.image_key if self.settings else "?"
            return f"no frames: no data key {key!r} arrived in this run"
        details = "; ".join(a.reasons[:3])
        return (
            f"no frame could be reconstructed ({a.failed} failed, "
            f"{a.unmatched} unmatched): {details}"
        )
