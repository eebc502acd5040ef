"""``PtychoCallback``: the RunEngine-facing document router.

Everything here runs on the RunEngine thread and only parses, copies and
enqueues (see :mod:`~bluesky_ptycho.callback.ingest`); reading files and all
computation happen on the worker thread (:mod:`~bluesky_ptycho.callback.worker`),
derived documents are emitted from the publisher thread
(:mod:`~bluesky_ptycho.outputs.publisher`). No exception escapes into the
RunEngine: it is logged and the run's derived run ends with ``exit_status="fail"``
(with ``BLUESKY_PTYCHO_DEBUG_CALLBACKS=1`` it is re-raised, for development).

Which runs are reconstructed:

* a start document with a ``ptycho`` dict (``RE(plan, ptycho={...})``): always;
  its keys override the constructor keywords;
* otherwise, when the constructor was given ``image_key``, ``x_key`` and
  ``y_key`` (and ``require_metadata`` is False): runs that have a stream whose
  descriptor declares all three keys;
* anything else (including ``ptycho=False`` and this package's own derived
  runs) is ignored quietly.
"""

from __future__ import annotations

import atexit
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from event_model import DocumentRouter

from . import ingest as items
from .handlers import handler_registry as handler_registry_with
from .ingest import IngestQueue, Item, QueueStats
from .options import CallbackOptions
from .run import RunReconstruction, RunResult
from .settings import check_keys, check_setting
from .worker import Worker, debug_callbacks

logger = logging.getLogger(__name__)

Emit = Callable[[str, dict], None]

#: RunEngine-thread durations kept for statistics (per-event seconds)
TIMING_WINDOW = 100_000


@dataclass
class _RunTap:
    """RunEngine-thread state of one raw run."""

    uid: str
    start: dict[str, Any]
    keys: tuple[str, str, str] | None  # (image, x, y) or None when not configured
    confirmed: bool
    buffered: list[Item] = field(default_factory=list)
    frames: int = 0
    stream_resource_keys: dict[str, str] = field(default_factory=dict)


@dataclass
class _StreamTap:
    run: _RunTap
    event_keys: tuple[str, ...]  # keys whose values travel in events (inline or datum id)


@dataclass
class RunEngineTimings:
    """Time spent on the RunEngine thread, per document name."""

    count: dict[str, int] = field(default_factory=dict)
    total_s: dict[str, float] = field(default_factory=dict)
    event_s: deque[float] = field(default_factory=lambda: deque(maxlen=TIMING_WINDOW))

    def median_event_s(self) -> float:
        """Median seconds per event document (event_page counts per event)."""
        return float(np.median(self.event_s)) if self.event_s else float("nan")


class PtychoCallback(DocumentRouter):
    """Live ptychography reconstruction of Bluesky runs.

    Parameters
    ----------
    emit : ``emit(name, doc)`` receiving the derived runs' documents (from the
        publisher thread). A strong reference is kept, unlike ``DocumentRouter``.
    options : the callback's own options, a
        :class:`~bluesky_ptycho.callback.options.CallbackOptions`; its fields
        (``backend``, ``new_run_policy``, ``snapshot_interval_s``,
        ``max_queued_frames``, ``full_wait_s``, ``handler_registry``, ``root_map``,
        ``file_timeout_s``, ``require_metadata``, ``worker_nice``,
        ``scan_duty_cycle``, ``tiled``, ``tiled_path``, ...) may also be given as
        keywords, which win.
    **settings : reconstruction settings: any ReconConfig field and the run keys
        ``image_key``, ``x_key``, ``y_key``, ``refine_iterations``, ``min_frames``,
        ... (see :mod:`~bluesky_ptycho.callback.settings`); the start document's
        ``ptycho`` dict overrides them per scan.

    Raises ValueError for an unknown keyword or a value of the wrong type or
    out of range (each checked on its own here; combinations when a run starts).
    """

    def __init__(
        self,
        emit: Emit | None = None,
        *,
        options: CallbackOptions | None = None,
        **keywords: Any,
    ) -> None:
        super().__init__()
        if emit is not None and not callable(emit):
            raise ValueError("emit: expected a callable emit(name, doc)")
        names = set(CallbackOptions.field_names())
        given = {k: v for k, v in keywords.items() if k in names}
        settings = {k: v for k, v in keywords.items() if k not in names}
        self.options = (options or CallbackOptions()).replace(**given)
        check_keys(settings, "PtychoCallback")
        for name, value in settings.items():
            try:
                check_setting(name, value)
            except ValueError as error:
                raise ValueError(f"PtychoCallback({name}=...): {error}") from None
        self._emit_target = emit
        self.settings = dict(settings)
        self._handlers = handler_registry_with(self.options.handler_registry)
        self._queue = IngestQueue(self.options.max_queued_frames, self.options.full_wait_s)
        self._worker: Worker | None = None
        self._publisher: Any = None
        self._taps: dict[str, _RunTap] = {}
        self._current: _RunTap | None = None
        self._streams: dict[str, _StreamTap] = {}
        self._other_streams: dict[str, _RunTap] = {}  # descriptors of tracked runs, not used
        self._resources: dict[str, _RunTap] = {}
        self._stream_resources: dict[str, _RunTap] = {}
        self.timings = RunEngineTimings()
        self.results: deque[RunResult] = deque(maxlen=16)
        self.last_result: RunResult | None = None
        self._warm_up = self._warm_up_function()
        if self._warm_up is not None:  # compile now, in the worker, before any scan
            self._ensure_threads()
        self.errors = 0

    @property
    def backend(self) -> str:
        return self.options.backend

    # ------------------------------------------------------------ threads
    def _ensure_threads(self) -> None:
        if self._worker is None or not self._worker.alive:
            from ..outputs import SnapshotPublisher
            from ..outputs.tiled_nodes import live_nodes

            options = self.options
            if self._publisher is None:
                nodes = live_nodes(options.tiled, options.tiled_path)
                self._publisher = SnapshotPublisher(self._emit_target, nodes)
                atexit.register(self._close_at_exit)
            self._worker = Worker(
                self._queue,
                make_run=self._make_run,
                on_result=self._on_result,
                new_run_policy=options.new_run_policy,
                idle_poll_s=options.idle_poll_s,
                linger_s=options.linger_s,
                nice=options.worker_nice,
                warm_up=self._warm_up,
            )

    def _warm_up_function(self) -> Callable[[], float] | None:
        """The engine's warm-up when ``warm_up`` asks for it (auto: on CuPy)."""
        choice = self.options.warm_up
        if choice is False:
            return None
        from ..engine.backend import get_array_module, is_cupy

        if choice == "auto" and not is_cupy(get_array_module(self.options.backend)):
            return None
        from ..engine.warmup import warm_up

        backend = self.options.backend
        return lambda: warm_up("numpy" if backend == "numpy" else "cupy")

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Start the threads and wait for the warm-up (if any); False on timeout."""
        self._ensure_threads()
        assert self._worker is not None
        return self._worker.ready.wait(timeout)

    @property
    def warm_up_s(self) -> float:
        """Seconds the kernel warm-up took (nan: none, not over, or failed)."""
        return math.nan if self._worker is None else self._worker.warm_up_s

    def _make_run(self, start: dict[str, Any]) -> RunReconstruction:
        """Worker thread: a fresh reconstruction for a raw run."""
        return RunReconstruction(
            start, self.settings, self.options, self._handlers, self._publisher
        )

    def _on_result(self, result: RunResult) -> None:
        """Worker thread: a run has ended."""
        self.last_result = result
        self.results.append(RunResult(**{**result.__dict__, "snapshot": None}))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every run handed over so far is finished and its documents emitted.

        Returns False on timeout. Use it after ``RE(...)`` in scripts and tests;
        a beamline session never needs to call it.
        """
        if self._worker is None:
            return True
        started = time.monotonic()
        if not self._worker.wait_idle(timeout):
            return False
        remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return self._publisher.flush(remaining)

    def _close_at_exit(self) -> None:
        """At interpreter exit: end the current derived run rather than lose it."""
        self.close(timeout=10.0)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Finish the current run (refinement cut short), emit everything, stop the threads."""
        atexit.unregister(self._close_at_exit)
        ok = True
        if self._worker is not None:
            ok = self._worker.close(timeout)
        if self._publisher is not None:
            ok = self._publisher.close(timeout) and ok
            self._publisher = None
        self._worker = None
        return ok

    def queue_stats(self) -> QueueStats:
        """Counters of the ingest queue (frames in/out, waits, overflows)."""
        return self._queue.stats()

    # ------------------------------------------------------------ routing
    def __call__(self, name: str, doc: dict, validate: bool = False) -> tuple[str, dict]:
        started = time.perf_counter()
        try:
            method = getattr(self, name, None)
            if method is not None:
                method(doc)
        except Exception as error:
            self.errors += 1
            logger.exception("ptycho: handling %r document failed", name)
            self._fail_current(name, doc, f"{name} document: {type(error).__name__}: {error}")
            if debug_callbacks():
                raise
        elapsed = time.perf_counter() - started
        timings = self.timings
        timings.count[name] = timings.count.get(name, 0) + 1
        timings.total_s[name] = timings.total_s.get(name, 0.0) + elapsed
        if name == "event":
            timings.event_s.append(elapsed)
        elif name == "event_page":
            n = len(doc.get("seq_num", ())) or 1
            timings.event_s.extend([elapsed / n] * n)
        return name, doc

    def _fail_current(self, name: str, doc: Mapping[str, Any], reason: str) -> None:
        try:
            tap = self._tap_of(name, doc) or self._current
            if tap is not None and tap.confirmed:
                self._put(items.Fail(tap.uid, reason))
        except Exception:
            logger.exception("ptycho: could not report the failure")

    def _tap_of(self, name: str, doc: Mapping[str, Any]) -> _RunTap | None:
        if name in ("start",):
            return self._taps.get(doc.get("uid", ""))
        if name == "stop" or "run_start" in doc:
            return self._taps.get(doc.get("run_start", ""))
        if "descriptor" in doc:
            stream = self._streams.get(doc["descriptor"])
            return stream.run if stream else None
        return None

    def _put(self, item: Item) -> None:
        self._queue.put(item)

    def _send(self, tap: _RunTap, item: Item) -> None:
        if tap.confirmed:
            self._put(item)
        else:
            tap.buffered.append(item)

    def _confirm(self, tap: _RunTap) -> None:
        self._ensure_threads()
        tap.confirmed = True
        self._put(items.Start(tap.uid, tap.start))
        for item in tap.buffered:
            self._put(item)
        tap.buffered.clear()

    def wants(self, start: Mapping[str, Any]) -> bool:
        """Whether a run with this start document may be reconstructed (cheap)."""
        if "ptycho_reconstruction" in start:
            return False  # a derived run (possibly our own)
        metadata = start.get("ptycho")
        if isinstance(metadata, Mapping) or metadata is True:
            return True
        if metadata is not None or self.options.require_metadata:
            return False  # ptycho=False / None-like opt-out
        return all(isinstance(self.settings.get(k), str) for k in ("image_key", "x_key", "y_key"))

    # ----------------------------------------------------------- documents
    def start(self, doc: dict) -> None:
        if not self.wants(doc):
            return
        metadata = doc.get("ptycho")
        explicit = isinstance(metadata, Mapping) or metadata is True
        merged = {**self.settings, **(metadata if isinstance(metadata, Mapping) else {})}
        names = (merged.get("image_key"), merged.get("x_key"), merged.get("y_key"))
        keys = names if all(isinstance(k, str) for k in names) else None
        start = dict(doc)
        if metadata is True:
            start["ptycho"] = {}
        tap = _RunTap(doc["uid"], start, keys, confirmed=False)  # type: ignore[arg-type]
        self._taps[tap.uid] = tap
        self._current = tap
        if explicit:
            self._confirm(tap)

    def descriptor(self, doc: dict) -> None:
        tap = self._taps.get(doc.get("run_start", ""))
        if tap is None or tap.keys is None:
            return
        data_keys = doc.get("data_keys", {})
        image_key = tap.keys[0]
        if image_key not in data_keys or not (
            tap.confirmed or all(k in data_keys for k in tap.keys)
        ):
            self._other_streams[doc["uid"]] = tap
            return
        if not tap.confirmed:
            self._confirm(tap)
        relevant = {k: dict(data_keys[k]) for k in tap.keys if k in data_keys}
        event_keys = tuple(
            k for k, v in relevant.items() if not str(v.get("external", "")).startswith("STREAM")
        )
        self._streams[doc["uid"]] = _StreamTap(tap, event_keys)
        self._put(items.Descriptor(tap.uid, doc["uid"], doc.get("name", "primary"), relevant))

    def _orphan(self, doc: Mapping[str, Any], n: int) -> None:
        """Events of an unknown descriptor that carry the current run's image: never silent."""
        tap = self._current
        descriptor = doc.get("descriptor")
        if (
            tap is None
            or not tap.confirmed
            or tap.keys is None
            or descriptor in self._other_streams
            or tap.keys[0] not in doc.get("data", {})
        ):
            return
        tap.frames += n
        reason = (
            f"{n} image(s) {tap.keys[0]!r} arrived in events of descriptor {descriptor!r} "
            f"before (or without) that descriptor; a descriptor must precede its events"
        )
        self._put(items.Lost(tap.uid, reason, frames=n))

    def event(self, doc: dict) -> None:
        stream = self._streams.get(doc["descriptor"])
        if stream is None:
            self._orphan(doc, 1)
            return
        data = doc["data"]
        columns = {k: [_copy(data[k])] for k in stream.event_keys if k in data}
        if not columns:
            return
        tap = stream.run
        n = 1 if tap.keys is not None and tap.keys[0] in columns else 0
        tap.frames += n
        self._put(items.Values(tap.uid, doc["descriptor"], [doc["seq_num"]], columns, frames=n))

    def event_page(self, doc: dict) -> None:
        stream = self._streams.get(doc["descriptor"])
        if stream is None:
            self._orphan(doc, len(doc.get("seq_num", ())))
            return
        data = doc["data"]
        columns = {k: [_copy(v) for v in data[k]] for k in stream.event_keys if k in data}
        if not columns:
            return
        tap = stream.run
        n = len(doc["seq_num"]) if tap.keys is not None and tap.keys[0] in columns else 0
        tap.frames += n
        self._put(items.Values(tap.uid, doc["descriptor"], list(doc["seq_num"]), columns, frames=n))

    def resource(self, doc: dict) -> None:
        tap = self._taps.get(doc.get("run_start", "")) or self._current
        if tap is None:
            return
        self._resources[doc["uid"]] = tap
        self._send(tap, items.Resource(tap.uid, dict(doc)))

    def datum(self, doc: dict) -> None:
        tap = self._resources.get(doc["resource"])
        if tap is not None:
            datums = [(doc["datum_id"], doc["resource"], dict(doc["datum_kwargs"]))]
            self._send(tap, items.Datums(tap.uid, datums))

    def datum_page(self, doc: dict) -> None:
        tap = self._resources.get(doc["resource"])
        if tap is None:
            return
        kwargs = doc["datum_kwargs"]
        names = list(kwargs)
        datums = [
            (datum_id, doc["resource"], {k: kwargs[k][i] for k in names})
            for i, datum_id in enumerate(doc["datum_id"])
        ]
        self._send(tap, items.Datums(tap.uid, datums))

    def stream_resource(self, doc: dict) -> None:
        tap = self._taps.get(doc.get("run_start", "")) or self._current
        if tap is None or tap.keys is None or doc.get("data_key") not in tap.keys:
            return
        self._stream_resources[doc["uid"]] = tap
        tap.stream_resource_keys[doc["uid"]] = doc["data_key"]
        self._send(tap, items.StreamResource(tap.uid, dict(doc)))

    def stream_datum(self, doc: dict) -> None:
        tap = self._stream_resources.get(doc["stream_resource"])
        if tap is None:
            return
        n = 0
        if (
            tap.keys is not None
            and tap.stream_resource_keys.get(doc["stream_resource"]) == tap.keys[0]
        ):
            n = int(doc["indices"]["stop"]) - int(doc["indices"]["start"])
            tap.frames += n
        self._send(tap, items.StreamDatum(tap.uid, dict(doc), frames=n))

    def stop(self, doc: dict) -> None:
        tap = self._taps.pop(doc.get("run_start", ""), None)
        if tap is None:
            return
        if self._current is tap:
            self._current = None
        for table in (self._streams,):
            for key in [k for k, v in table.items() if v.run is tap]:
                del table[key]
        for table2 in (self._resources, self._stream_resources, self._other_streams):
            for key in [k for k, v in table2.items() if v is tap]:
                del table2[key]
        if tap.confirmed:
            self._put(items.Stop(tap.uid, tap.frames, str(doc.get("exit_status", "success"))))


def _copy(value: Any) -> Any:
    """A private copy of an event value (the producer may reuse its buffers)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        return np.array(value)
    return value


def ptycho_factory(
    emit: Emit | None = None, **options: Any
) -> Callable[[str, dict], tuple[list, list]]:
    """A ``RunRouter`` factory sharing one :class:`PtychoCallback` across runs.

    ``RE.subscribe(RunRouter([ptycho_factory(emit, energy_kev=..., ...)]))``.
    The callback is available as ``factory.callback`` (e.g. to ``wait()``).
    Pass ``handler_registry`` here, not to ``RunRouter`` (whose Filler would read
    files on the RunEngine thread).
    """
    callback = PtychoCallback(emit, **options)

    def factory(name: str, start: dict) -> tuple[list, list]:
        return ([callback], []) if callback.wants(start) else ([], [])

    factory.callback = callback  # type: ignore[attr-defined]
    return factory
