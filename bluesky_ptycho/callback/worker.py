"""The worker thread: the only thread that touches the engine.

Loop: take everything the RunEngine thread queued -> feed the current run ->
move complete frames into the engine -> one iteration -> repeat. When there is
nothing to iterate it sleeps on the queue (``idle_poll_s`` while file reads are
pending, otherwise until an item arrives).

Runs are reconstructed one at a time, in the order their start documents
arrived. When a new run starts while the previous one is still refining after
its stop document, ``new_run_policy`` decides:

* ``"finish"`` (default): the previous run does all its ``refine_iterations``
  first, so every scan's final result is the same whatever follows it; the new
  run's documents wait in the ingest queue meanwhile (nothing is lost; its live
  reconstruction starts that much later);
* ``"preempt"``: the previous run stops refining at the next iteration boundary,
  publishes its final snapshot and ends its derived run (exit_status "success",
  the reason says how many refinement iterations were done), so the new run
  starts at once.

A start that arrives while the previous run has not even seen its stop document
ends the previous run as failed ("no stop document").

Error boundary: everything the worker does for an item or a run - creating
the run and its configuration, feeding it, ingesting, iterating, finishing -
runs inside ``try``. An exception fails that run (its derived run ends with
``exit_status="fail"`` and the reason), the item still counts as handled (so
:meth:`Worker.wait_idle` tells the truth) and the next run is unaffected. With
the environment variable ``BLUESKY_PTYCHO_DEBUG_CALLBACKS=1`` the exception is
re-raised instead, after the run is ended, and ends the worker thread (for
development, like bluesky's ``BLUESKY_DEBUG_CALLBACKS``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .ingest import Close, IngestQueue, Item, Start, Stop
from .options import POLICIES
from .run import Phase, RunResult

logger = logging.getLogger(__name__)

#: environment variable: "1" re-raises exceptions instead of failing the run quietly
DEBUG_ENV = "BLUESKY_PTYCHO_DEBUG_CALLBACKS"


def debug_callbacks() -> bool:
    """Whether :data:`DEBUG_ENV` asks for exceptions to be re-raised (read at each error)."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def check_policy(policy: str) -> None:
    """Raise ValueError unless ``policy`` is one of :data:`POLICIES`."""
    if policy not in POLICIES:
        raise ValueError(f"new_run_policy: expected one of {POLICIES}, got {policy!r}")


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (Linux; elsewhere a no-op).

    The RunEngine thread then wins when CPU cores are scarce: a CPU-bound
    reconstruction must not slow the scan. (It does not help with the GIL, which
    the engine releases inside NumPy/CuPy calls.)
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (OSError, AttributeError):
        logger.debug("ptycho: could not lower the worker thread's priority", exc_info=True)


class Run(Protocol):
    """What the worker needs of a run (:class:`~.run.RunReconstruction`; fakes in tests)."""

    raw_uid: str
    stop_seen_at: float | None
    refine_done: int

    @property
    def phase(self) -> Phase: ...

    @property
    def inputs_complete(self) -> bool: ...

    def handle(self, item: Item) -> None: ...

    def ingest(self) -> int: ...

    def can_iterate(self) -> bool: ...

    def rest_s(self) -> float: ...

    def iterate(self) -> None: ...

    def fail(self, reason: str) -> None: ...

    def finish(self, note: str = "") -> RunResult: ...


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Worker:
    """Owns the engine thread (see module docstring).

    make_run : builds a run from a raw start document.
    on_result : called (worker thread) with each finished run's :class:`RunResult`.
    idle_poll_s : longest wait for items while a run waits for files or frames.
    linger_s : when idle, how long to keep gathering items after the first one
        arrives, so that the worker wakes once per batch rather than per event.
    nice : niceness added to the worker thread (Linux), so the scan wins for CPU.
    """

    def __init__(
        self,
        queue: IngestQueue,
        make_run: Callable[[dict[str, Any]], Run],
        on_result: Callable[[RunResult], None],
        new_run_policy: str = "finish",
        idle_poll_s: float = 0.05,
        linger_s: float = 0.02,
        nice: int = 10,
        warm_up: Callable[[], float] | None = None,
    ) -> None:
        check_policy(new_run_policy)
        self.queue = queue
        self.policy = new_run_policy
        self._make_run = make_run
        self._on_result = on_result
        self._idle_poll_s = idle_poll_s
        self._linger_s = linger_s
        self._nice = nice
        self._run: Run | None = None
        self._closing = threading.Event()
        self._handled = 0
        self._backlog: deque[Item] = deque()
        self.iterations = 0
        self.errors = 0
        self._warm_up = warm_up
        #: set once the warm-up (if any) is over; its seconds (nan: none or failed)
        self.ready = threading.Event()
        self.warm_up_s = float("nan")
        self._thread = threading.Thread(target=self._main, name="ptycho-worker", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------- control
    def close(self, timeout: float | None = 30.0) -> bool:
        """Finish the current run (refinement cut short) and stop; False on timeout."""
        self._closing.set()
        self.queue.put(Close())
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_idle(self, timeout: float | None = None, poll_s: float = 0.02) -> bool:
        """Wait until every item queued so far is handled and no run is open; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._run is None and self._handled >= self.queue.stats().items_in:
                return True
            if not self.alive:
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(poll_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def current_run(self) -> Run | None:
        return self._run

    # -------------------------------------------------------------- loop
    def _main(self) -> None:
        lower_thread_priority(self._nice)
        if self._warm_up is not None:  # documents queue meanwhile; nothing is lost
            try:
                self.warm_up_s = self._warm_up()
                logger.info("ptycho: GPU kernels compiled in %.1f s", self.warm_up_s)
            except Exception:
                logger.exception("ptycho: warm-up failed (the first scan compiles instead)")
        self.ready.set()
        while True:
            try:
                if not self._step():
                    return
            except Exception as error:  # the last line of the boundary: never lose a run
                logger.exception("ptycho: worker step failed")
                self._failed(f"internal error in the worker: {_describe(error)}")
                if debug_callbacks():
                    raise

    def _failed(self, reason: str) -> None:
        """Fail and end the current run (if any), counting the error."""
        self.errors += 1
        run = self._run
        if run is not None:
            try:
                run.fail(reason)
            finally:
                self._finish()

    def _step(self) -> bool:
        run = self._run
        # "finish" policy: once the stop document is in, leave the next run's items queued.
        hold = (
            run is not None
            and run.stop_seen_at is not None
            and self.policy == "finish"
            and not self._closing.is_set()
        )
        if hold and run is not None and run.phase is Phase.COLLECTING and not run.can_iterate():
            time.sleep(self._idle_poll_s)  # waiting for files; the next run stays queued
        if not hold and not self._take_and_dispatch():
            return False
        run = self._run
        if run is None:
            return True
        if run.phase in (Phase.COLLECTING, Phase.REFINING):
            try:
                run.ingest()
                if run.can_iterate():
                    run.iterate()
                    self.iterations += 1
                elif run.phase is Phase.REFINING:
                    self._finish()
            except Exception as error:
                self._run_failed(run, f"reconstruction: {_describe(error)}", error)
        if self._run is not None and self._run.phase is Phase.FINISHING:
            self._finish()
        return True

    def _take_and_dispatch(self) -> bool:
        """Take queued items and handle them; False when a Close item was taken."""
        run = self._run
        if self._backlog:
            items = list(self._backlog)
            self._backlog.clear()
            items += self.queue.take_all(timeout=0.0)
        elif run is None:
            items = self.queue.take_all(timeout=None, linger_s=self._linger_s)
        elif run.can_iterate() or run.phase is Phase.FINISHING:
            items = self.queue.take_all(timeout=0.0)
        else:
            wait_s = min(self._idle_poll_s, run.rest_s()) or self._idle_poll_s
            items = self.queue.take_all(timeout=wait_s, linger_s=self._linger_s)
        for index, item in enumerate(items):
            if isinstance(item, Close):
                self._handled += 1
                self._finish(note="callback closed")
                return False
            try:
                self._dispatch(item)
            finally:
                self._handled += 1  # counters always advance: wait_idle() tells the truth
            if self._holds_after(item):
                self._backlog.extend(items[index + 1 :])
                break
        return True

    def _run_failed(self, run: Run, reason: str, error: Exception) -> None:
        """Inside the boundary: log, fail the run; re-raise ``error`` in debug mode."""
        self.errors += 1
        logger.error("ptycho: run %s: %s", run.raw_uid, reason, exc_info=error)
        run.fail(reason)
        if debug_callbacks():
            raise error

    def _holds_after(self, item: Item) -> bool:
        """Under "finish", the items after the current run's stop wait until it is done."""
        run = self._run
        return (
            self.policy == "finish"
            and isinstance(item, Stop)
            and run is not None
            and run.raw_uid == item.run_uid
            and not self._closing.is_set()
        )

    def _dispatch(self, item: Item) -> None:
        if isinstance(item, Start):
            self._start(item)
            return
        run = self._run
        if run is None or run.raw_uid != item.run_uid:
            return  # items of a run that already ended (e.g. failed early)
        try:
            run.handle(item)
        except Exception as error:
            name = type(item).__name__.lower()
            self._run_failed(run, f"{name}: {_describe(error)}", error)

    def _start(self, item: Start) -> None:
        if self._run is not None:
            if self._run.stop_seen_at is None:
                self._run.fail("no stop document before the next run started")
                self._finish()
            else:
                done = self._run.refine_done
                note = f"refinement stopped after {done} iteration(s): a new run started"
                self._finish(note=note)
        try:
            self._run = self._make_run(item.doc)
        except Exception as error:  # a bug: no derived run could begin; record the failure
            self.errors += 1
            logger.exception("ptycho: could not set up the reconstruction of %s", item.run_uid)
            self._record(RunResult.failed(item.run_uid, f"setup: {_describe(error)}"))
            if debug_callbacks():
                raise

    def _finish(self, note: str = "") -> None:
        run = self._run
        if run is None:
            return
        try:
            try:
                result = run.finish(note=note)
            except Exception as error:
                self.errors += 1
                logger.exception("ptycho: finishing run %s", run.raw_uid)
                derived = getattr(run, "derived_uid", None)
                result = RunResult.failed(run.raw_uid, f"finishing: {_describe(error)}", derived)
                if debug_callbacks():
                    self._record(result)
                    raise
            self._record(result)
        finally:
            self._run = None  # only now: wait_idle() returns after the result is recorded

    def _record(self, result: RunResult) -> None:
        try:
            self._on_result(result)
        except Exception:
            logger.exception("ptycho: result hook failed")
