"""The hand-off between the RunEngine thread and the worker thread.

:class:`IngestQueue` is a FIFO with a *soft* bound counted in frames. Policy when
the bound is reached (the worker is behind, e.g. inside a long iteration):

1. the RunEngine thread waits up to ``full_wait_s`` for the worker to drain it
   (brief back-pressure; counted in ``waits`` and ``wait_s``);
2. if the queue is still over the bound, the item is appended anyway and the
   queue grows past the bound; further items are appended without waiting
   until the worker has drained the queue below its bound again (so a worker
   that is busy elsewhere costs the scan one wait, not one per event). Items
   appended over the bound are counted in ``overflows``; the first of each
   episode is logged. Nothing is ever dropped: every frame put is counted in
   ``frames_in`` and every frame taken in ``frames_out``.

The worker always takes everything queued at once (:meth:`take_all`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One unit of work for the worker; payloads are already copied off the documents.

    run_uid : uid of the raw run it belongs to.
    """

    run_uid: str

    @property
    def n_frames(self) -> int:
        """Detector frames this item announces (for counting and the queue bound)."""
        return 0


@dataclass(frozen=True)
class _WithFrames(Item):
    """An item that announces ``frames`` detector frames."""

    frames: int = field(default=0, kw_only=True)

    @property
    def n_frames(self) -> int:
        return self.frames


@dataclass(frozen=True)
class Start(Item):
    """A raw run to reconstruct begins; ``doc`` is its start document."""

    doc: dict[str, Any]


@dataclass(frozen=True)
class Descriptor(Item):
    """A stream that carries some of the run's data keys (only those are kept)."""

    uid: str
    name: str
    data_keys: dict[str, Any]


@dataclass(frozen=True)
class Values(_WithFrames):
    """Event columns (inline values or datum ids) of one descriptor."""

    descriptor: str
    seq_nums: list[int]
    columns: dict[str, list[Any]]


@dataclass(frozen=True)
class Resource(Item):
    """A Resource document."""

    doc: dict[str, Any]


@dataclass(frozen=True)
class Datums(Item):
    """Datum (or datum-page) entries: (datum_id, resource uid, datum_kwargs)."""

    datums: list[tuple[str, str, dict[str, Any]]]


@dataclass(frozen=True)
class StreamResource(Item):
    """A StreamResource document for one of the run's data keys."""

    doc: dict[str, Any]


@dataclass(frozen=True)
class StreamDatum(_WithFrames):
    """A StreamDatum document; ``frames`` counts the images it announces."""

    doc: dict[str, Any]


@dataclass(frozen=True)
class Stop(Item):
    """The raw run's stop document arrived."""

    frames_received: int
    exit_status: str = "success"


@dataclass(frozen=True)
class Lost(_WithFrames):
    """Images that arrived in a form the run cannot use (e.g. before their descriptor)."""

    reason: str


@dataclass(frozen=True)
class Fail(Item):
    """The RunEngine thread could not handle a document of this run."""

    reason: str


@dataclass(frozen=True)
class Close(Item):
    """The callback is closing: finish the current run and stop the worker."""

    run_uid: str = ""


@dataclass
class QueueStats:
    """Counters of an :class:`IngestQueue` (read them with :meth:`IngestQueue.stats`)."""

    items_in: int = 0
    items_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    waits: int = 0
    wait_s: float = 0.0
    overflows: int = 0
    max_frames_queued: int = 0
    pending_starts: int = 0


class IngestQueue:
    """FIFO of :class:`Item` with a soft frame bound (see module docstring)."""

    def __init__(self, max_frames: int = 4096, full_wait_s: float = 0.05) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames: expected an integer >= 1, got {max_frames!r}")
        if full_wait_s < 0:
            raise ValueError(f"full_wait_s: expected seconds >= 0, got {full_wait_s!r}")
        self.max_frames = max_frames
        self.full_wait_s = full_wait_s
        self._items: deque[Item] = deque()
        self._frames_queued = 0
        self._cond = threading.Condition()
        self._stats = QueueStats()
        self._overflowing = False

    def _full(self, n_frames: int) -> bool:
        """Adding ``n_frames`` would exceed the bound (an empty queue takes anything)."""
        return self._frames_queued > 0 and self._frames_queued + n_frames > self.max_frames

    def put(self, item: Item) -> None:
        """Append ``item`` (RunEngine thread). Never drops; may wait ``full_wait_s``."""
        with self._cond:
            over = item.n_frames > 0 and self._full(item.n_frames)
            if over and self._overflowing:
                self._stats.overflows += 1
            elif over:
                started = time.perf_counter()
                self._stats.waits += 1
                self._cond.wait_for(lambda: not self._full(item.n_frames), self.full_wait_s)
                self._stats.wait_s += time.perf_counter() - started
                if self._full(item.n_frames):
                    self._stats.overflows += 1
                    self._overflowing = True
                    logger.warning(
                        "ingest queue over its bound of %d frames: growing (no frame is "
                        "dropped); the reconstruction is behind the scan",
                        self.max_frames,
                    )
            self._items.append(item)
            self._frames_queued += item.n_frames
            self._stats.items_in += 1
            self._stats.frames_in += item.n_frames
            if isinstance(item, Start):
                self._stats.pending_starts += 1
            self._stats.max_frames_queued = max(self._stats.max_frames_queued, self._frames_queued)
            self._cond.notify_all()

    def take_all(self, timeout: float | None = 0.0, linger_s: float = 0.0) -> list[Item]:
        """Everything queued (worker thread); waits up to ``timeout`` s for the first item.

        linger_s : once the first item is there (after a wait), wait this much longer
            so that items arriving together are taken together: fewer wake-ups of
            the worker, which otherwise contends with the RunEngine thread for the GIL
            once per event.
        """
        linger = False
        with self._cond:
            if not self._items and timeout != 0.0:
                self._cond.wait_for(lambda: bool(self._items), timeout=timeout)
                linger = bool(self._items) and linger_s > 0
        if linger:
            time.sleep(linger_s)
        with self._cond:
            items = list(self._items)
            self._items.clear()
            taken = self._frames_queued
            self._frames_queued = 0
            self._overflowing = False
            self._stats.items_out += len(items)
            self._stats.frames_out += taken
            self._stats.pending_starts -= sum(1 for item in items if isinstance(item, Start))
            self._cond.notify_all()
            return items

    @property
    def pending_starts(self) -> int:
        """Start items queued and not yet taken (a new run is waiting)."""
        return self._stats.pending_starts

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def stats(self) -> QueueStats:
        """A copy of the counters."""
        with self._cond:
            return dataclasses.replace(self._stats)
