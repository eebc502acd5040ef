"""The server's lifecycle: one PtychoCallback fed by a bus source, health, shutdown.

* documents from the source (:mod:`.zmq_bus` or :mod:`.kafka_bus`) go to one
  :class:`~bluesky_ptycho.callback.PtychoCallback`, one run at a time
  (:mod:`.sequencer` holds back runs that the bus interleaves);
* its derived documents go to every sink (republisher, TiledWriter); a failing
  sink is logged and counted, never stops the others;
* health: every ``health_interval_s`` one log line and, with ``status_file``,
  a JSON file replaced atomically (runs seen/finished, current run, frames/s
  into the callback, ingest queue depth, GPU memory, refused messages, last
  error);
* SIGINT/SIGTERM: the source stops between two messages, the current run is
  finished (refinement cut short) and its derived run ended. If the raw run's
  stop document had not arrived, that derived stop says so: ``exit_status``
  "abort" and a reason naming the signal;
* events that a raw stop document announces (``num_events``) but that never
  arrived (0MQ PUB/SUB drops messages when a subscriber falls behind) are
  counted (``events_lost_on_bus``) and named in the derived stop's reason.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .sequencer import RunSequencer

logger = logging.getLogger(__name__)

Sink = Callable[[str, dict], None]


class Source(Protocol):
    codec: Any

    def describe(self) -> str: ...

    def run(
        self, dispatch: Callable[[str, dict], None], idle: Callable[[], None] | None = None
    ) -> None: ...

    def interrupt(self) -> None: ...


def gpu_memory_bytes() -> int | None:
    """Bytes held by CuPy's memory pool, if this process uses CuPy (never imports it)."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return None
    try:
        return int(cupy.get_default_memory_pool().total_bytes())
    except Exception:
        return None


class ReconstructionService:
    """Serve reconstructions of the runs that ``source`` delivers (see module docstring).

    callback_options : PtychoCallback keywords (from ``--config`` and the command line).
    sinks : receivers of the derived documents (``sink(name, doc)``; ``close()`` if any).
    """

    def __init__(
        self,
        source: Source,
        callback_options: dict[str, Any],
        sinks: Sequence[Sink] = (),
        status_file: Path | None = None,
        health_interval_s: float = 10.0,
        shutdown_timeout_s: float = 60.0,
    ) -> None:
        from ..callback import PtychoCallback

        self.source = source
        self.sinks = list(sinks)
        self.status_file = status_file
        self.health_interval_s = health_interval_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.callback = PtychoCallback(self._emit, **callback_options)
        self.sequencer = RunSequencer(self._document)
        self.state = "starting"
        self.runs_seen = 0
        self.runs_finished = 0
        self.current_run: str | None = None
        self.last_error = ""
        self.sink_errors = 0
        self.signal_name = ""
        self._open_raw: dict[str, dict[str, int]] = {}  # raw uid -> events per stream (no stop)
        self._streams: dict[str, tuple[str, str]] = {}  # descriptor uid -> (raw uid, stream)
        self._lost: dict[str, str] = {}  # raw uid -> what never arrived (from its stop)
        self.events_lost = 0
        self._derived_of: dict[str, str] = {}  # derived uid -> raw uid
        self._lock = threading.Lock()
        self._health_stop = threading.Event()
        self._started = time.monotonic()
        self._last_health = (time.monotonic(), 0)

    # ------------------------------------------------------------ documents
    def dispatch(self, name: str, doc: dict) -> None:
        """Source thread: one raw document (runs reordered one at a time, see sequencer)."""
        self.sequencer(name, doc)

    def _document(self, name: str, doc: dict) -> None:
        """Source thread: one raw document of the active run, to the callback."""
        with self._lock:
            if name == "start" and self.callback.wants(doc):
                self.runs_seen += 1
                self.current_run = doc["uid"]
                self._open_raw[doc["uid"]] = {}
            elif name in ("event", "event_page"):
                self._count_events(doc)
            elif name == "descriptor" and doc.get("run_start") in self._open_raw:
                self._streams[doc["uid"]] = (doc["run_start"], doc.get("name", "primary"))
            elif name == "stop" and doc.get("run_start") in self._open_raw:
                self._close_raw(doc)
        self.callback(name, doc)

    def _count_events(self, doc: dict) -> None:
        stream = self._streams.get(doc.get("descriptor", ""))
        if stream is not None:
            counts = self._open_raw[stream[0]]
            n = len(doc["seq_num"]) if isinstance(doc.get("seq_num"), list) else 1
            counts[stream[1]] = counts.get(stream[1], 0) + n

    def _close_raw(self, doc: dict) -> None:
        """A raw stop: compare the events announced with those that arrived (0MQ drops)."""
        uid = doc["run_start"]
        received = self._open_raw.pop(uid)
        self._streams = {k: v for k, v in self._streams.items() if v[0] != uid}
        if self.current_run == uid:
            self.current_run = None
        missing = {
            stream: int(n) - received.get(stream, 0)
            for stream, n in (doc.get("num_events") or {}).items()
            if int(n) > received.get(stream, 0)
        }
        if missing:
            lost = sum(missing.values())
            self.events_lost += lost
            self._lost[uid] = (
                f"{lost} event(s) of the raw run never reached serve "
                f"({', '.join(f'{k}: {v}' for k, v in missing.items())})"
            )
            self.last_error = f"run {uid}: {self._lost[uid]}"
            logger.warning("serve: run %s: %s", uid, self._lost[uid])

    def _emit(self, name: str, doc: dict) -> None:
        """Publisher thread: one derived document to every sink."""
        if name == "start":
            self._derived_of[doc["uid"]] = str(doc.get("derived_from", ""))
        elif name == "stop":
            doc = self._truthful_stop(doc)
            with self._lock:
                self.runs_finished += 1
                if doc.get("exit_status") != "success":
                    self.last_error = f"run {doc['run_start']}: {doc.get('reason', '')}"
        for sink in self.sinks:
            try:
                sink(name, doc)
            except Exception as error:
                with self._lock:
                    self.sink_errors += 1
                    self.last_error = f"sink {type(sink).__name__}: {error}"
                logger.exception("serve: a derived-document sink failed on %r", name)

    def _truthful_stop(self, doc: dict) -> dict:
        raw = self._derived_of.pop(doc["run_start"], "")
        with self._lock:
            cut = self.state == "stopping" and raw in self._open_raw
            lost = self._lost.pop(raw, "")
        notes = [lost] if lost else []
        if cut:
            notes.insert(
                0,
                f"serve stopped ({self.signal_name or 'shutdown'}) before the raw run's stop "
                "document: result from the frames received so far",
            )
        if not notes:
            return doc
        if doc.get("reason"):
            notes.append(doc["reason"])
        status = "abort" if cut else doc.get("exit_status", "success")
        # a copy: the callback's document is not changed in place
        return {**doc, "exit_status": status, "reason": "; ".join(notes)}

    # ---------------------------------------------------------------- health
    def status(self) -> dict[str, Any]:
        """The health record (what the log line and the status file show)."""
        stats = self.callback.queue_stats()
        now = time.monotonic()
        then, frames_then = self._last_health
        rate = (stats.frames_in - frames_then) / max(now - then, 1e-9)
        self._last_health = (now, stats.frames_in)
        with self._lock:
            record = {
                "state": self.state,
                "source": self.source.describe(),
                "pid": os.getpid(),
                "uptime_s": round(now - self._started, 1),
                "runs_seen": self.runs_seen,
                "runs_finished": self.runs_finished,
                "current_run": self.current_run,
                "frames_in": stats.frames_in,
                "frames_out": stats.frames_out,
                "frames_per_s": round(rate, 1),
                "queue_frames": stats.frames_in - stats.frames_out,
                "events_lost_on_bus": self.events_lost,
                "held_documents": self.sequencer.held_documents,
                "runs_held": self.sequencer.runs_held,
                "gpu_memory_bytes": gpu_memory_bytes(),
                "transport": self.source.codec.stats.as_dict(),
                "partitions": getattr(self.source, "partitions", None),
                "callback_errors": self.callback.errors,
                "sink_errors": self.sink_errors,
                "last_error": self.last_error or self.source.codec.stats.last_refusal,
            }
        return record

    def report_health(self) -> dict[str, Any]:
        """Log one health line and rewrite the status file; returns the record."""
        record = self.status()
        refused = sum(record["transport"]["refused"].values())
        logger.info(
            "serve health: %s, runs %d seen / %d finished, current %s, %.1f frames/s, "
            "queue %d frames, GPU %s bytes, %d refused, last error: %s",
            record["state"],
            record["runs_seen"],
            record["runs_finished"],
            record["current_run"],
            record["frames_per_s"],
            record["queue_frames"],
            record["gpu_memory_bytes"],
            refused,
            record["last_error"] or "none",
        )
        if self.status_file is not None:
            temporary = self.status_file.with_name(self.status_file.name + ".tmp")
            temporary.write_text(json.dumps(record, indent=1))
            os.replace(temporary, self.status_file)
        return record

    def _health_loop(self) -> None:
        while not self._health_stop.wait(self.health_interval_s):
            try:
                self.report_health()
            except Exception:
                logger.exception("serve: health report failed")

    # ------------------------------------------------------------- lifecycle
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        self.source.interrupt()

    def serve(self) -> int:
        """Run until SIGINT/SIGTERM (main thread) or the source ends; returns an exit status."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        health = threading.Thread(target=self._health_loop, name="serve-health", daemon=True)
        status = 0
        try:
            self.state = "serving"
            self.report_health()
            logger.info("serve: consuming from %s", self.source.describe())
            health.start()
            self.source.run(self.dispatch, idle=self.sequencer.tick)
        except Exception as error:
            logger.exception("serve: the source failed")
            self.last_error = f"source: {type(error).__name__}: {error}"
            status = 1
        finally:
            with self._lock:
                self.state = "stopping"
            logger.info("serve: stopping (%s)", self.signal_name or "source ended")
            if not self.callback.close(timeout=self.shutdown_timeout_s):
                logger.error(
                    "serve: the reconstruction did not stop within %.0f s", self.shutdown_timeout_s
                )
                status = 1
            for sink in self.sinks:
                close = getattr(sink, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:
                        logger.exception("serve: closing a sink failed")
            self._health_stop.set()
            if health.is_alive():
                health.join(self.health_interval_s + 5.0)
            self.state = "stopped"
            self.report_health()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return status
