"""Tiled live nodes: the reconstruction of each raw run as arrays that change during the scan.

Layout, one container per raw run at ``<path>/<raw_uid>`` (``path`` default
"ptycho"; the HXN pipeline's ``.../{run_uid}/live|final`` layout):

* ``live/object_amplitude``, ``live/object_phase`` (float32, NaN where no probe
  reached), ``live/coverage`` (float32), ``live/probe_amplitude``,
  ``live/probe_phase``, ``live/error_history`` (float64, one row per iteration:
  :data:`HISTORY_COLUMNS`, appended with ``patch(..., extend=True)``);
* ``final/object`` (complex64, finite), ``final/probe`` (complex64),
  ``final/coverage`` (float32), written when the run ends;
* container metadata (merged with ``update_metadata``): ``raw_uid``, ``scan_id``,
  ``derived_uid``, ``status`` ("running", "success", "fail") and ``reason``,
  ``iteration``, ``n_frames``, ``frames_received``, ``pixel_size_m`` (object
  pixel), ``live_binning`` and ``live_pixel_size_m`` (the live images' pixel),
  ``origin_m`` ((y, x) metres of live pixel [0, 0]), ``probe_propagation_m``,
  ``config``, ``software``, ``outages``, ``updated`` (epoch seconds).

Live images larger than ``max_array_bytes`` are binned (see
:mod:`~bluesky_ptycho.outputs.previews`) so that a Tiled websocket message
carrying one fits the default 1 MB limit. When the canvas grows, the live
arrays are replaced (deleted and written again with the new shape), then the
metadata (new ``origin_m``) is updated: the metadata update is the "new image"
signal, so a reader that reacts to it sees matching arrays and geometry.

All writes happen on this writer's own thread. Live snapshots are latest-wins;
begin/end are never dropped. When the server fails or cannot be reached, the
writer keeps the newest state, retries with exponential back-off, logs once
per outage, and records the outage (:class:`Outage`; in the node's metadata
once it is back, and in the derived run's stop reason through
:meth:`TiledLiveNodes.outage_note`). Nothing here ever raises into the caller.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .derived_run import Progress
from .previews import bin_image, binning_for

if TYPE_CHECKING:
    from ..engine.reconstructor import Snapshot

logger = logging.getLogger(__name__)

#: columns of ``live/error_history`` (from the engine's per-iteration history)
HISTORY_COLUMNS = ("iteration", "poisson_nll", "n_frames", "step", "seconds")

#: per-array bound for live images: a float32 image under the 1 MB websocket limit
MAX_ARRAY_BYTES = 900_000


@dataclass
class Outage:
    """A period during which the Tiled server could not be written to (epoch seconds)."""

    started: float
    error: str
    ended: float | None = None

    @property
    def duration_s(self) -> float:
        return (self.ended if self.ended is not None else time.time()) - self.started

    def as_dict(self) -> dict[str, Any]:
        return {"started": self.started, "ended": self.ended, "error": self.error}


@dataclass
class _Run:
    """Pending and written state of one raw run's nodes (guarded by the writer's lock)."""

    raw_uid: str
    path: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    metadata_dirty: bool = True
    live: tuple[Snapshot, Progress] | None = None
    final: tuple[Snapshot | None, Progress, str, str] | None = None
    last_live_write: float = 0.0
    # writer-thread state (client objects; reset after a failure)
    nodes: dict[str, Any] = field(default_factory=dict)
    history_rows: int | None = None
    done: bool = False

    @property
    def has_work(self) -> bool:
        return self.metadata_dirty or self.live is not None or self.final is not None


def live_nodes(tiled: Any, path: str = "ptycho") -> TiledLiveNodes | None:
    """A :class:`TiledLiveNodes` for ``tiled`` (URI, Tiled client, an instance, or None)."""
    if tiled is None or isinstance(tiled, TiledLiveNodes):
        return tiled
    return TiledLiveNodes(tiled, path)


class TiledLiveNodes:
    """Write each run's reconstruction to Tiled live nodes (see module docstring).

    tiled : a Tiled URI (connected on the writer thread) or a Tiled client node.
    path : where the per-run containers go ("a/b" nests).
    interval_s : least time between two live writes of one run (the newest waits).
    max_array_bytes : live images larger than this are binned.
    retry_s : (first, largest) wait between attempts while the server fails.
    """

    def __init__(
        self,
        tiled: Any,
        path: str = "ptycho",
        *,
        interval_s: float = 0.5,
        max_array_bytes: int = MAX_ARRAY_BYTES,
        retry_s: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        if not isinstance(path, str) or not path.strip("/"):
            raise ValueError(f"tiled_path: expected a non-empty node path, got {path!r}")
        if interval_s < 0:
            raise ValueError(f"interval_s: expected >= 0, got {interval_s!r}")
        self._tiled = tiled
        self.path = path
        self.interval_s = interval_s
        self.max_array_bytes = int(max_array_bytes)
        self.retry_s = retry_s
        self._root: Any = None if isinstance(tiled, str) else tiled
        self._cond = threading.Condition()
        self._runs: dict[str, _Run] = {}
        self._began: dict[str, float] = {}  # raw uid -> epoch seconds, for outage_note
        self._busy = False
        self._closing = False
        self._abandon = False
        self.outages: list[Outage] = []
        self.writes = 0
        self.superseded = 0
        self._thread = threading.Thread(target=self._loop, name="ptycho-tiled", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ producers
    def begin(
        self,
        raw_uid: str,
        raw_start: Mapping[str, Any],
        settings: Mapping[str, Any],
        derived_uid: str | None = None,
    ) -> None:
        """A new run: its container appears with status "running"."""
        from .. import __version__

        path = settings.get("tiled_path") or self.path
        metadata: dict[str, Any] = {
            "raw_uid": raw_uid,
            "derived_uid": derived_uid,
            "status": "running",
            "reason": "",
            "iteration": 0,
            "n_frames": 0,
            "frames_received": 0,
            "config": dict(settings),
            "software": {"bluesky_ptycho": __version__},
            "outages": [],
            "updated": time.time(),
        }
        if "scan_id" in raw_start:
            metadata["scan_id"] = raw_start["scan_id"]
        segments = (*str(path).strip("/").split("/"), raw_uid)
        with self._cond:
            self._runs[raw_uid] = _Run(raw_uid, segments, metadata)
            self._began[raw_uid] = time.time()
            self._cond.notify_all()

    def offer(self, raw_uid: str, snapshot: Snapshot, progress: Progress) -> None:
        """A live snapshot; replaces one of the same run not yet written."""
        with self._cond:
            run = self._runs.get(raw_uid)
            if run is None or run.final is not None:
                return
            if run.live is not None:
                self.superseded += 1
            run.live = (snapshot, progress)
            self._cond.notify_all()

    def end(
        self,
        raw_uid: str,
        snapshot: Snapshot | None,
        progress: Progress,
        exit_status: str,
        reason: str,
    ) -> None:
        """The run ended: ``final/`` (when there is a snapshot) and the final status."""
        with self._cond:
            run = self._runs.get(raw_uid)
            if run is None:
                return
            run.live = None
            run.final = (snapshot, progress, exit_status, reason)
            self._cond.notify_all()

    def outage_note(self, raw_uid: str) -> str:
        """A sentence on the outages during run ``raw_uid`` ("" if none)."""
        with self._cond:
            began = self._began.get(raw_uid, 0.0)
            hits = [o for o in self.outages if o.ended is None or o.ended >= began]
        if not hits:
            return ""
        total = sum(o.duration_s for o in hits)
        ongoing = " (still unreachable)" if hits[-1].ended is None else ""
        return (
            f"Tiled live nodes: {len(hits)} outage(s), {total:.1f} s without writes{ongoing}; "
            f"last error: {hits[-1].error}"
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over is written; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._busy and not any(r.has_work for r in self._runs.values()),
                timeout=timeout,
            )

    def close(self, timeout: float | None = 10.0) -> bool:
        """Write what is pending (for up to ``timeout``), then stop the thread."""
        flushed = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._abandon = not flushed
            self._cond.notify_all()
        self._thread.join(None if timeout is None else max(1.0, timeout))
        if not flushed:
            logger.warning("ptycho: Tiled live nodes closed with writes still pending")
        return flushed and not self._thread.is_alive()

    # --------------------------------------------------------------- thread
    def _next_job(self) -> _Run | None:
        """Under the lock: the run to write next, or None to wait."""
        now = time.monotonic()
        for run in self._runs.values():
            if run.metadata_dirty or run.final is not None:
                return run
            if run.live is not None and now - run.last_live_write >= self.interval_s:
                return run
        return None

    def _loop(self) -> None:
        try:
            self._write_loop()
        finally:
            if isinstance(self._tiled, str) and self._root is not None:
                self._root.context.close()  # the client this writer opened

    def _write_loop(self) -> None:
        delay = 0.0
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                while True:
                    if self._closing and (
                        self._abandon or not any(r.has_work for r in self._runs.values())
                    ):
                        return
                    run = self._next_job()
                    if run is not None:
                        break
                    self._cond.wait(timeout=self.interval_s or None)
                self._busy = True
                job = self._take(run)
            try:
                self._write(run, *job)
            except Exception as error:
                self._restore(run, *job)
                delay = self._failed(run, error, delay)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait_for(lambda: self._abandon, timeout=delay)
                continue
            if delay:
                self._recovered(run)
                delay = 0.0

    def _take(self, run: _Run) -> tuple[dict | None, Any, Any]:
        metadata = dict(run.metadata) if run.metadata_dirty else None
        live, final = run.live, run.final
        run.metadata_dirty, run.live, run.final = False, None, None
        if live is not None:
            run.last_live_write = time.monotonic()
        return metadata, live, final

    def _restore(self, run: _Run, metadata: dict | None, live: Any, final: Any) -> None:
        with self._cond:
            run.nodes.clear()  # look the nodes up again once the server is back
            run.history_rows = None
            if metadata is not None:
                run.metadata_dirty = True
            if live is not None and run.live is None and run.final is None and final is None:
                run.live = live
            if final is not None:
                run.final = final

    def _failed(self, run: _Run, error: Exception, delay: float) -> float:
        message = f"{type(error).__name__}: {error}"
        if not delay:
            self.outages.append(Outage(time.time(), message))
            logger.warning(
                "ptycho: Tiled live nodes of run %s not written (%s); retrying with back-off, "
                "the reconstruction goes on",
                run.raw_uid,
                message,
            )
        else:
            self.outages[-1].error = message
        first, largest = self.retry_s
        return min(largest, max(first, 2 * delay))

    def _recovered(self, written: _Run) -> None:
        """The server is back: close the outage and record it in every open run's node."""
        outage = self.outages[-1]
        outage.ended = time.time()
        logger.warning("ptycho: Tiled live nodes written again after %.1f s", outage.duration_s)
        record = {"outages": [o.as_dict() for o in self.outages]}
        if written.done:  # its last write just went through: add the record now
            try:
                self._container(written).update_metadata(metadata=record)
            except Exception:
                logger.warning("ptycho: could not record the outage in run %s", written.raw_uid)
        with self._cond:
            for run in self._runs.values():
                run.metadata.update(record)
                run.metadata_dirty = True
            self._cond.notify_all()

    # -------------------------------------------------------------- writing
    def _root_node(self) -> Any:
        if self._root is None:
            from tiled.client import from_uri

            self._root = from_uri(self._tiled)
        return self._root

    def _container(self, run: _Run) -> Any:
        node = run.nodes.get("")
        if node is None:
            node = self._root_node()
            for key in run.path:
                node = node[key] if key in node else node.create_container(key)
            run.nodes[""] = node
        return node

    def _child(self, run: _Run, name: str) -> Any:
        node = run.nodes.get(name)
        if node is None:
            parent = self._container(run)
            node = parent[name] if name in parent else parent.create_container(name)
            run.nodes[name] = node
        return node

    def _put_array(self, run: _Run, group: str, key: str, array: np.ndarray) -> None:
        """Write ``array`` at ``group/key``: in place when shape and dtype match, else anew."""
        cache_key = f"{group}/{key}"
        parent = self._child(run, group)
        node = run.nodes.get(cache_key)
        if node is None and key in parent:
            node = parent[key]
        if node is not None and (tuple(node.shape) != array.shape or node.dtype != array.dtype):
            parent.delete_contents(key, external_only=False)
            node = None
        if node is None:
            node = parent.write_array(array, key=key)
        else:
            node.write(array)
        run.nodes[cache_key] = node
        self.writes += 1

    def _put_history(self, run: _Run, snapshot: Snapshot) -> None:
        rows = np.array(
            [
                [float(h.get(c, math.nan)) for c in HISTORY_COLUMNS]
                for h in snapshot.metrics.get("history", [])
            ],
            dtype=np.float64,
        ).reshape(-1, len(HISTORY_COLUMNS))
        if not len(rows):
            return  # Tiled cannot extend an array created with length 0
        parent = self._child(run, "live")
        node = run.nodes.get("live/error_history")
        if node is None and "error_history" in parent:
            node = parent["error_history"]
        written = int(node.shape[0]) if node is not None else 0
        if node is not None and written > len(rows):  # a different history: start again
            parent.delete_contents("error_history", external_only=False)
            node, written = None, 0
        if node is None:
            node = parent.write_array(rows, key="error_history")
        elif written < len(rows):
            node.patch(rows[written:], offset=(written,), extend=True)
        run.nodes["live/error_history"] = node
        run.history_rows = len(rows)

    def _put_live(self, run: _Run, snapshot: Snapshot) -> dict[str, Any]:
        obj = np.asarray(snapshot.object)
        factor = binning_for(obj.shape, self.max_array_bytes) if obj.size else 1
        binned = bin_image(obj, factor) if factor > 1 else obj
        coverage = np.asarray(snapshot.coverage, dtype=np.float32)
        images = {
            "object_amplitude": np.abs(binned).astype(np.float32),
            "object_phase": np.angle(binned).astype(np.float32),
            "coverage": (bin_image(coverage, factor) if factor > 1 else coverage).astype(
                np.float32
            ),
            "probe_amplitude": np.abs(snapshot.probe).astype(np.float32),
            "probe_phase": np.angle(snapshot.probe).astype(np.float32),
        }
        for key, image in images.items():
            self._put_array(run, "live", key, image)
        self._put_history(run, snapshot)
        return {
            "live_binning": factor,
            "live_pixel_size_m": [float(p) * factor for p in snapshot.pixel_m],
        }

    def _state(self, snapshot: Snapshot, progress: Progress) -> dict[str, Any]:
        return {
            "iteration": int(snapshot.iteration),
            "n_frames": int(snapshot.n_frames),
            "frames_received": int(progress.frames_received),
            "pixel_size_m": [float(p) for p in snapshot.pixel_m],
            "origin_m": [float(o) for o in snapshot.origin_m],
            "probe_propagation_m": float(snapshot.metrics.get("probe_propagation_m", 0.0)),
            "poisson_nll": float(snapshot.metrics.get("poisson_nll", math.nan)),
            "updated": time.time(),
        }

    def _write(self, run: _Run, metadata: dict | None, live: Any, final: Any) -> None:
        container = self._container(run)
        update: dict[str, Any] = dict(metadata or {})
        if final is not None:
            snapshot, progress, exit_status, reason = final
            if snapshot is not None:
                update.update(self._put_live(run, snapshot), **self._state(snapshot, progress))
                self._put_array(run, "final", "object", np.asarray(snapshot.object, np.complex64))
                self._put_array(run, "final", "probe", np.asarray(snapshot.probe, np.complex64))
                self._put_array(run, "final", "coverage", np.asarray(snapshot.coverage, np.float32))
            update.update(status=exit_status, reason=reason, updated=time.time())
        elif live is not None:
            snapshot, progress = live
            update.update(self._put_live(run, snapshot), **self._state(snapshot, progress))
        if update:
            container.update_metadata(metadata=_json_ready(update))
            with self._cond:
                run.metadata.update(update)
        if final is not None:
            with self._cond:
                run.done = True
                self._runs.pop(run.raw_uid, None)


def _json_ready(value: Any) -> Any:
    """Metadata Tiled can store: NaN and infinities become None."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
