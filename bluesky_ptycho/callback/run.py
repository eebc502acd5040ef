"""One raw run's reconstruction, owned by the worker thread.

A fresh :class:`RunReconstruction` (settings, frame assembler, engine) is made for
every ptychography run; nothing carries over from the previous run.

Phases (:class:`Phase`, changed only by the run's own methods):
``COLLECTING`` (between the start and stop documents: frames join between
iterations, iterating once ``min_frames`` are in; with ``calibrate`` the first
``calibrate_frames`` frames are held back, the orientation and/or probe defocus
are found from them, and the engine starts with the result) -> ``REFINING``
(:meth:`RunReconstruction.ingest` moves there once the stop document is in and
every readable frame has joined: up to ``refine_iterations`` more iterations,
fewer if ``refine_seconds`` after the stop document run out)
-> ``DONE`` (:meth:`RunReconstruction.finish`: final snapshot published, derived
run ended). :meth:`RunReconstruction.fail` records a reason and moves to
``FINISHING`` (the worker then calls ``finish``). Invalid settings fail the run
at once; its derived run still begins and ends, with the reason.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..calibration import CalibrationError, calibrate
from ..engine.reconstructor import Reconstructor, Snapshot
from ..outputs import Progress, SnapshotPublisher
from . import ingest as items
from .handlers import Handler
from .memory import MemoryModel, default_budget_bytes
from .options import CallbackOptions
from .paths import PathPolicy
from .settings import RunSettings, json_safe, merge
from .sources import FrameAssembler

logger = logging.getLogger(__name__)

#: the first reasons of lost frames quoted in a derived run's stop reason
MAX_REASONS_SHOWN = 3
#: divergence: the step after a rollback is this times the last one
ROLLBACK_STEP_SCALE = 0.1
#: divergence: this many rollbacks in a row fail the run
MAX_ROLLBACKS_IN_A_ROW = 3

#: calibration's option names (bluesky_ptycho.calibration.advice) as callback settings
ADVICE_NAMES: dict[str, str | None] = {
    "probe_propagation_m": "probe_propagation_m",
    "probe": "probe_path",
    "defocus_search": 'calibrate="both"',
    "distances_m": 'a known probe_propagation_m with calibrate="orientation"',
    "trial_frames": "calibrate_frames",
    "trial_iterations": None,
    "defocus_sign": "defocus_sign",
}


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
    scan_duty_cycle: float = math.nan  # throttle used while the scan ran (nan: no engine)

    @classmethod
    def failed(cls, raw_uid: str, reason: str, derived_uid: str | None = None) -> RunResult:
        """A run that ended before anything could be counted."""
        return cls(raw_uid, derived_uid, "fail", reason, 0, 0, 0, 0, 0, 0, 0.0)


class Phase(enum.Enum):
    """Where a run is in its lifecycle (see module docstring)."""

    COLLECTING = "collecting"
    REFINING = "refining"
    FINISHING = "finishing"
    DONE = "done"


class RunReconstruction:
    """State and steps of one run's reconstruction (see module docstring).

    raw_start : the raw run's start document.
    defaults : constructor settings; the start document's ``ptycho`` dict wins.
    """

    def __init__(
        self,
        raw_start: Mapping[str, Any],
        defaults: Mapping[str, Any],
        options: CallbackOptions,
        handlers: Mapping[str, Handler],
        publisher: SnapshotPublisher,
    ) -> None:
        self.raw_uid: str = raw_start["uid"]
        self.started = time.monotonic()
        self._phase = Phase.COLLECTING
        self.exit_status = "success"
        self.reason = ""
        self.frames_received = 0
        self.refine_done = 0
        self.stop_seen_at: float | None = None
        self.raw_exit_status = ""  # the raw stop document's, once it arrived
        self.rollbacks = 0  # iterations undone because they diverged (see iterate)
        self._rollbacks_in_a_row = 0
        self._options = options
        self._publisher = publisher
        self._duty = 1.0  # set when the engine starts (options.duty_cycle of its backend)
        self.rest_until = 0.0  # while collecting: no iteration before this (monotonic s)
        self._last_iteration_s = 0.0  # wall time of the last iteration (refine_seconds)
        self._last_publish = 0.0
        self.engine: Reconstructor | None = None
        self.final_snapshot: Snapshot | None = None
        self.calibration: dict[str, Any] | None = None  # summary when calibrate is on
        self._held: list[tuple[Any, Any, Any]] = []  # frames held back for calibration
        self.settings: RunSettings | None = None
        self.assembler: FrameAssembler | None = None
        metadata = raw_start.get("ptycho")
        if not isinstance(metadata, Mapping):
            metadata = {}
        described = {k: json_safe(v) for k, v in {**defaults, **metadata}.items()}
        try:
            self.settings = merge(defaults, metadata)
            described = self.settings.describe()
            s = self.settings
            paths = PathPolicy(options.data_roots, options.root_map)
            self.assembler = FrameAssembler(s.image_key, s.x_key, s.y_key, handlers, paths)
        except Exception as error:  # any bad value: this run fails, the next is unaffected
            self.settings = None
            if not isinstance(error, ValueError):
                logger.exception("ptycho: settings of run %s", self.raw_uid)
            detail = str(error) if isinstance(error, ValueError) else _describe(error)
            self.fail(f"invalid settings: {detail}")
        self._budget_bytes = options.memory_budget_bytes or default_budget_bytes(options.backend)
        points = raw_start.get("num_points")
        self._declared_points = points if isinstance(points, int) and points > 0 else 0
        self._on_gpu = _on_gpu(options.backend)
        self.derived_uid = publisher.begin(self.raw_uid, raw_start, described)

    @property
    def phase(self) -> Phase:
        return self._phase

    # ---------------------------------------------------------------- input
    def handle(self, item: items.Item) -> None:
        """Feed one work item (see :mod:`~bluesky_ptycho.callback.ingest`)."""
        if isinstance(item, items.Fail):
            self.fail(item.reason)
            return
        if isinstance(item, items.Stop):
            self.frames_received = item.frames_received
            self.raw_exit_status = item.exit_status
            if item.exit_status != "success":
                logger.info(
                    "ptycho: raw run %s ended with %s; reconstructing the frames it has",
                    self.raw_uid,
                    item.exit_status,
                )
            self.stop_seen_at = time.monotonic()
            return
        assembler = self.assembler
        if assembler is None or self._phase is Phase.DONE:
            return
        if isinstance(item, items.Descriptor):
            assembler.add_descriptor(item.uid, item.name, item.data_keys)
            if assembler.frame_shape is not None:  # refuse before anything is allocated
                where = f"descriptor {item.name!r} (num_points={self._declared_points or '?'})"
                self._check_memory(self._declared_points, where)
        elif isinstance(item, items.Values):
            assembler.add_values(item.descriptor, item.seq_nums, item.columns)
        elif isinstance(item, items.Resource):
            assembler.add_resource(item.doc)
        elif isinstance(item, items.Datums):
            for datum_id, resource, kwargs in item.datums:
                assembler.add_datum(datum_id, resource, kwargs)
        elif isinstance(item, items.StreamResource):
            assembler.add_stream_resource(item.doc)
        elif isinstance(item, items.StreamDatum):
            assembler.add_stream_datum(item.doc)
        elif isinstance(item, items.Lost):
            assembler.announced += item.frames
            assembler.lose(item.frames, item.reason)
        else:
            raise TypeError(f"not a work item for a run: {item!r}")

    def ingest(self) -> int:
        """Move complete frames into the engine; returns how many joined.

        Once the stop document is in and no file read is pending, the run moves
        from ``COLLECTING`` to ``REFINING`` (after taking the last frames).
        """
        joined = self._ingest()
        if self._phase is Phase.COLLECTING and self.inputs_complete:
            joined += self._ingest()
            self._phase = Phase.REFINING
        return joined

    def _memory_model(self) -> MemoryModel:
        """The engine this run would make, for its memory estimate."""
        recon = self.settings.recon if self.settings is not None else {}
        return MemoryModel(
            dtype=str(recon.get("dtype", "complex64")),
            gpu=self._on_gpu,
            reserved=self._declared_points > 0,
            storage=str(recon.get("frame_storage", MemoryModel.storage)),
            line_search_frames=int(recon.get("line_search_frames", MemoryModel.line_search_frames)),
        )

    def _check_memory(
        self, n_frames: int, where: str, shape: tuple[int, int] | None = None
    ) -> None:
        assert self.settings is not None and self.assembler is not None
        frame_shape = shape or self.settings.recon.get("frame_shape") or self.assembler.frame_shape
        self._memory_model().check(n_frames, tuple(frame_shape), self._budget_bytes, where)

    def _ingest(self) -> int:
        assembler = self.assembler
        if assembler is None or self._phase in (Phase.DONE, Phase.FINISHING):
            return 0
        if self.stop_seen_at is not None and assembler.pending_reads:
            if time.monotonic() - self.stop_seen_at > self._options.file_timeout_s:
                assembler.give_up()
        batch = assembler.collect()
        if assembler.refusal is not None:
            self.fail(f"refused: {assembler.refusal}")
            return 0
        if batch is not None:
            batch = self._within_budget(batch)
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

    def _within_budget(self, batch: tuple[Any, Any, Any]) -> tuple[Any, Any, Any] | None:
        """The batch cut to the frames the memory budget still allows; the rest skipped."""
        assert self.assembler is not None
        shape = self._frame_shape(batch[0])
        if self.engine is None and not self._held:
            self._check_memory(max(self._declared_points, 1), "first frames", shape)
        held = sum(len(frames) for frames, _, _ in self._held)
        have = (self.engine.n_frames if self.engine is not None else 0) + held
        room = self._memory_model().frames_within(self._budget_bytes, shape) - have
        if room >= len(batch[0]):
            return batch
        skipped = len(batch[0]) - max(room, 0)
        self.assembler.skip(
            skipped,
            f"{skipped} frame(s) skipped: the run reached memory_budget_bytes="
            f"{self._budget_bytes} at {have} frames of {shape[0]} x {shape[1]}; raise "
            f"memory_budget_bytes or bin the frames",
        )
        if room <= 0:
            return None
        return tuple(part[:room] for part in batch)  # type: ignore[return-value]

    def _frame_shape(self, frames: Any) -> tuple[int, int]:
        assert self.assembler is not None
        return self.assembler.frame_shape or (int(frames.shape[1]), int(frames.shape[2]))

    def _start_engine(self, config: Any) -> None:
        self.engine = Reconstructor(
            config, backend=self._options.backend, gpus=self._options.gpus
        )
        self._duty = self._options.duty_cycle(self.engine.backend)
        if self._declared_points:  # the whole scan's stacks at once: no doubling
            self.engine.reserve(self._declared_points)

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
                backend=self._options.backend,
                names=ADVICE_NAMES,
            )
            config, self.calibration = found.config, dict(found.summary)
            logger.info("ptycho: run %s calibrated: %s", self.raw_uid, found.changes or "no change")
        except Exception as error:  # never lose the run: reconstruct as configured
            logger.exception("ptycho: calibration of run %s failed", self.raw_uid)
            note = error.render(ADVICE_NAMES) if isinstance(error, CalibrationError) else str(error)
            self.calibration = {"verdict": "failed", "applied": False, "note": note}
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
        """Whether an iteration is due now."""
        if self._phase in (Phase.DONE, Phase.FINISHING):
            return False
        if self.engine is None or self.settings is None:
            return False
        if self._phase is Phase.REFINING:
            wanted = self.settings.refine_iterations
            if self.engine.iteration == 0 or self.refine_done == 0 < wanted:
                return True  # every frame is in at least one iteration
            return self.refine_done < wanted and self._refine_time_left()
        if self.inputs_complete:
            return True
        return self.engine.n_frames >= self.settings.min_frames and self.rest_s() == 0.0

    def _refine_time_left(self) -> bool:
        """Whether one more iteration, as long as the last, ends within ``refine_seconds``."""
        budget_s = self.settings.refine_seconds
        if budget_s is None or self.stop_seen_at is None:
            return True
        return time.monotonic() + self._last_iteration_s <= self.stop_seen_at + budget_s

    def rest_s(self) -> float:
        """Seconds left of the pause that ``scan_duty_cycle`` imposes while collecting."""
        return max(0.0, self.rest_until - time.monotonic())

    def iterate(self) -> None:
        """One engine iteration (then a live snapshot when one is due).

        Divergence: when the iteration leaves a non-finite object or probe, the
        engine goes back to the state kept just before it with a damped step
        (counted in :attr:`rollbacks`, named in the stop reason and the final
        snapshot's metrics); :data:`MAX_ROLLBACKS_IN_A_ROW` in a row fail the run.
        """
        assert self.engine is not None
        started = time.monotonic()
        engine = self.engine
        kept = (engine.object.copy(), None if engine.probe is None else engine.probe.copy())
        engine.iterate(1)
        if not engine.state_is_finite():
            self.rollbacks += 1
            self._rollbacks_in_a_row += 1
            engine.restore(*kept, step_scale=ROLLBACK_STEP_SCALE)
            logger.warning(
                "ptycho: run %s: iteration %d gave a non-finite object or probe; rolled back, "
                "step damped x%g",
                self.raw_uid,
                engine.iteration,
                ROLLBACK_STEP_SCALE,
            )
            if self._rollbacks_in_a_row >= MAX_ROLLBACKS_IN_A_ROW:
                self.fail(
                    f"the reconstruction diverged: {self._rollbacks_in_a_row} iterations in a "
                    f"row gave a non-finite object or probe, each rolled back with a damped "
                    f"step; check the geometry settings (energy_kev, distance_m, "
                    f"detector_pixel_m) and the data"
                )
                return
        else:
            self._rollbacks_in_a_row = 0
        if self._phase is Phase.REFINING:
            self.refine_done += 1
        now = time.monotonic()
        self._last_iteration_s = now - started
        if self._phase is Phase.COLLECTING and self._duty < 1.0:
            self.rest_until = now + (now - started) * (1.0 - self._duty) / self._duty
        if now - self._last_publish >= self._options.snapshot_interval_s:
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
        if self._phase is not Phase.DONE:
            self._phase = Phase.FINISHING

    def finish(self, note: str = "") -> RunResult:
        """Publish the final snapshot, end the derived run; returns the summary.

        The stop document is handed to the publisher whatever happens before it.
        """
        snapshot = None
        reasons: list[str] = []
        try:
            self._close_inputs()
            if self.engine is not None and self.engine.iteration > 0:
                snapshot = self.engine.snapshot(live=False)
                if self.calibration is not None:
                    snapshot.metrics["calibration"] = self.calibration
                snapshot.metrics["rollbacks"] = self.rollbacks
            elif self.exit_status == "success":
                self.exit_status = "fail"
                self.reason = self._no_result_reason()
        except Exception as error:
            logger.exception("ptycho: finishing run %s", self.raw_uid)
            snapshot = None
            self.fail(f"finishing: {_describe(error)}")
        progress = self.progress()
        reasons = [self.reason] if self.reason else []
        if note:
            reasons.append(note)
        if self.rollbacks and self.exit_status == "success":
            reasons.append(
                f"{self.rollbacks} diverging iteration(s) rolled back "
                f"(step damped x{ROLLBACK_STEP_SCALE:g} each)"
            )
        if self.raw_exit_status not in ("", "success"):
            reasons.append(
                f"the raw run ended with exit_status {self.raw_exit_status!r} after "
                f"{progress.frames_received} frame(s)"
            )
        lost = progress.frames_failed + progress.frames_unmatched
        if lost and self.exit_status == "success":
            details = self.assembler.reasons[:MAX_REASONS_SHOWN] if self.assembler else []
            reasons.append(
                f"{progress.frames_failed} frame(s) not reconstructed (unreadable, invalid "
                f"or skipped), {progress.frames_unmatched} without positions"
                + (f" ({'; '.join(details)})" if details else "")
            )
        reason = "; ".join(reasons)
        self._publisher.end(self.raw_uid, snapshot, progress, self.exit_status, reason)
        self._phase = Phase.DONE
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
            scan_duty_cycle=self._duty if self.engine is not None else math.nan,
        )

    def _close_inputs(self) -> None:
        """Count what is left as failed or unmatched; close files."""
        if self.assembler is None:
            return
        self.assembler.give_up()
        try:
            self.assembler.collect()
        except Exception:
            logger.exception("ptycho: collecting the last frames of run %s", self.raw_uid)
        self.assembler.finish()
        for reason in self.assembler.reasons:
            logger.debug("ptycho: run %s: %s", self.raw_uid, reason)

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


def _describe(error: BaseException) -> str:
    """``Type: message`` of an exception, for a derived run's reason."""
    return f"{type(error).__name__}: {error}"


def _on_gpu(backend: str) -> bool:
    """Whether an engine made with ``backend`` runs on CuPy."""
    if backend == "numpy":
        return False
    from ..engine.backend import get_array_module, is_cupy

    return is_cupy(get_array_module(backend))
