"""One run at a time into the callback, even when the bus interleaves runs.

``PtychoCallback`` reconstructs runs one after another, as a RunEngine emits
them; a start that arrives before the previous run's stop ends that run as
failed. A bus can interleave runs: a Kafka consumer owning several partitions
returns messages of runs on different partitions mixed (a backlog, several
RunEngines on one topic); one 0MQ proxy can carry several RunEngines.
:class:`RunSequencer` passes the documents of the active run (start seen, stop
not yet) straight on and holds every other run's documents, in order, until
the active run's stop; then the held runs follow in the order they started.

Bounds: when the active run has had no document for ``stale_s`` while others
wait, or more than ``max_held`` documents are held, the held runs are released
anyway (the callback then ends the active run as failed: "no stop document");
nothing is dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .transport import RunKeys

logger = logging.getLogger(__name__)

Dispatch = Callable[[str, dict], None]


class RunSequencer:
    """Reorder documents run by run (see module docstring); ``sequencer(name, doc)``."""

    def __init__(self, target: Dispatch, stale_s: float = 120.0, max_held: int = 200_000) -> None:
        self.target = target
        self.stale_s = stale_s
        self.max_held = max_held
        self._keys = RunKeys()
        self._active: str | None = None
        self._last_active = time.monotonic()
        self._held: dict[str, list[tuple[str, dict]]] = {}  # run uid -> documents, by start
        self.held_documents = 0
        self.runs_held = 0  # runs that had to wait for another (the bus interleaved them)
        self.released_early = 0

    def __call__(self, name: str, doc: dict) -> None:
        run = self._keys.key(name, doc)
        if self._active is None and name == "start" and not self._held:
            self._active = run
        if run == self._active or (self._active is None and not self._held):
            self._pass(run, name, doc)
            return
        if run not in self._held:
            self.runs_held += 1
        self._held.setdefault(run, []).append((name, doc))
        self.held_documents += 1
        if self._active is None:
            self._release()
        elif self.held_documents > self.max_held or self._stale():
            logger.warning(
                "serve: run %s has no stop after %.0f s / %d documents of other runs held: "
                "releasing them",
                self._active,
                time.monotonic() - self._last_active,
                self.held_documents,
            )
            self.released_early += 1
            self._active = None
            self._release()

    def tick(self) -> None:
        """Between messages: release held runs if the active one has gone stale."""
        if self._held and self._active is not None and self._stale():
            logger.warning("serve: run %s went stale: releasing the runs held", self._active)
            self.released_early += 1
            self._active = None
            self._release()

    def _stale(self) -> bool:
        return time.monotonic() - self._last_active > self.stale_s

    def _pass(self, run: str, name: str, doc: dict) -> None:
        self._last_active = time.monotonic()
        self.target(name, doc)
        if name == "stop" and run == self._active:
            self._active = None
            self._release()

    def _release(self) -> None:
        """Hand over held runs, oldest first, until one is left open (it becomes active)."""
        while self._active is None and self._held:
            run = next(iter(self._held))
            documents = self._held.pop(run)
            self.held_documents -= len(documents)
            self._active = run
            self._last_active = time.monotonic()
            for name, doc in documents:
                self.target(name, doc)
            if documents[-1][0] == "stop":
                self._active = None
