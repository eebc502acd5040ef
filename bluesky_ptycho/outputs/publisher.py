"""Publisher thread: snapshots in, derived-run documents out.

The worker thread must not wait for slow sinks (a Tiled server, a network
transport), so it hands snapshots to a :class:`SnapshotPublisher`, whose own
thread composes and emits the documents. Policy:

* ``begin`` / ``end`` are control messages, processed in order and never
  skipped: every derived run that begins is ended with a stop document;
* ``offer`` (a live snapshot) is *latest-wins*: if the sink is slower than the
  worker, intermediate live snapshots are replaced by newer ones (counted in
  ``superseded``); the final snapshot travels with ``end`` and is always emitted.

Errors raised by ``emit`` are logged and counted, never propagated.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .derived_run import DerivedRun, Progress

if TYPE_CHECKING:
    from ..engine.reconstructor import Snapshot

logger = logging.getLogger(__name__)

Emit = Callable[[str, dict], None]


class SnapshotPublisher:
    """Emit derived runs from a thread of its own (see module docstring).

    emit : ``emit(name, doc)``, called only from the publisher thread. A strong
        reference is kept.
    nodes : optional :class:`~bluesky_ptycho.outputs.tiled_nodes.TiledLiveNodes`
        that receives the same begin / offer / end (it writes from its own thread).
    """

    def __init__(self, emit: Emit | None, nodes: Any = None) -> None:
        self._emit_target = emit
        self.nodes = nodes  # Tiled live nodes (issue 10)
        self._cond = threading.Condition()
        self._control: deque[tuple[str, str, tuple[Any, ...]]] = deque()
        self._live: dict[str, tuple[Snapshot, Progress]] = {}
        self._runs: dict[str, DerivedRun] = {}
        self._busy = False
        self._closing = False
        self.published = 0
        self.superseded = 0
        self.emit_errors = 0
        self._thread = threading.Thread(target=self._loop, name="ptycho-publisher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ producers
    def begin(self, run_uid: str, raw_start: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
        """Start the derived run of raw run ``run_uid``; returns the derived run's uid."""
        derived_uid = str(uuid.uuid4())
        if self.nodes is not None:
            self.nodes.begin(run_uid, raw_start, settings, derived_uid)
        self._put("begin", run_uid, (dict(raw_start), dict(settings), derived_uid))
        return derived_uid

    def offer(self, run_uid: str, snapshot: Snapshot, progress: Progress) -> None:
        """A live snapshot; replaces one of the same run not yet published."""
        if self.nodes is not None:
            self.nodes.offer(run_uid, snapshot, progress)
        with self._cond:
            if run_uid in self._live:
                self.superseded += 1
            self._live[run_uid] = (snapshot, progress)
            self._cond.notify_all()

    def end(
        self,
        run_uid: str,
        snapshot: Snapshot | None,
        progress: Progress,
        exit_status: str,
        reason: str,
    ) -> None:
        """Final snapshot (or None), then the stop document."""
        if self.nodes is not None:
            self.nodes.end(run_uid, snapshot, progress, exit_status, reason)
        with self._cond:
            self._live.pop(run_uid, None)
        self._put("end", run_uid, (snapshot, progress, exit_status, reason))

    def _put(self, kind: str, run_uid: str, args: tuple[Any, ...]) -> None:
        with self._cond:
            self._control.append((kind, run_uid, args))
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over so far is emitted; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._control and not self._live and not self._busy, timeout=timeout
            )

    def close(self, timeout: float | None = 10.0) -> bool:
        """Emit what is pending, then stop the thread; False if it did not stop in time."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        nodes_ok = self.nodes.close(timeout) if self.nodes is not None else True
        return not self._thread.is_alive() and nodes_ok

    # --------------------------------------------------------------- thread
    def _emit(self, name: str, doc: dict) -> None:
        if self._emit_target is None:
            return
        try:
            self._emit_target(name, doc)
        except Exception:
            self.emit_errors += 1
            logger.exception("ptycho: emit(%r, ...) raised; document not delivered", name)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._control or self._live or self._closing)
                if self._control:
                    job: tuple[str, str, tuple[Any, ...]] = self._control.popleft()
                elif self._live:
                    run_uid = next(iter(self._live))
                    job = ("live", run_uid, self._live.pop(run_uid))
                else:
                    return  # closing and nothing left
                self._busy = True
            try:
                self._handle(*job)
            except Exception:
                logger.exception("ptycho: publishing %s of run %s failed", job[0], job[1])

    def _handle(self, kind: str, run_uid: str, args: tuple[Any, ...]) -> None:
        if kind == "begin":
            raw_start, settings, derived_uid = args
            self._runs[run_uid] = DerivedRun(self._emit, raw_start, settings, uid=derived_uid)
            return
        run = self._runs.get(run_uid)
        if run is None:
            return
        if kind == "live":
            snapshot, progress = args
            run.progress(snapshot, progress)
            self.published += 1
        elif kind == "end":
            snapshot, progress, exit_status, reason = args
            del self._runs[run_uid]
            try:
                if snapshot is not None:
                    run.progress(snapshot, progress, final=True)
                    run.result(snapshot, progress)
                    self.published += 1
            except Exception as error:
                logger.exception("ptycho: final result of run %s not published", run_uid)
                exit_status, reason = "fail", f"publishing the result failed: {error}"
            note = self.nodes.outage_note(run_uid) if self.nodes is not None else ""
            run.stop(exit_status, "; ".join(filter(None, [reason, note])))
