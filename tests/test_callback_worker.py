"""The worker's state machine with a fake run: start, frames, stop, refinement,
preemption, and a failure at each phase (the error boundary, the debug switch)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bluesky_ptycho.callback.ingest import Close, Fail, IngestQueue, Start, Stop, Values
from bluesky_ptycho.callback.run import Phase, RunResult
from bluesky_ptycho.callback.worker import DEBUG_ENV, Worker

WAIT_S = 20.0
STAGES = ("make", "handle", "ingest", "iterate", "finish")


class FakeRun:
    """Implements the worker's ``Run`` protocol; ``start["fail_at"]`` names a stage to break."""

    def __init__(self, start: dict[str, Any]) -> None:
        self.raw_uid = start["uid"]
        self.fail_at = start.get("fail_at")
        self.refine = start.get("refine", 3)
        self.iterate_s = start.get("iterate_s", 0.0)
        if self.fail_at == "make":
            raise TypeError("'<' not supported between instances of 'str' and 'int'")
        self._phase = Phase.COLLECTING
        self.stop_seen_at: float | None = None
        self.refine_done = 0
        self.iterations = 0
        self.frames = 0
        self.exit_status = "success"
        self.reason = ""
        self.derived_uid = f"derived-{self.raw_uid}"

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def inputs_complete(self) -> bool:
        return self.stop_seen_at is not None

    def _maybe_fail(self, stage: str) -> None:
        if self.fail_at == stage:
            raise RuntimeError(f"broken at {stage}")

    def handle(self, item: Any) -> None:
        self._maybe_fail("handle")
        if isinstance(item, Values):
            self.frames += item.n_frames
        elif isinstance(item, Stop):
            self.stop_seen_at = time.monotonic()
        elif isinstance(item, Fail):
            self.fail(item.reason)

    def ingest(self) -> int:
        self._maybe_fail("ingest")
        if self._phase is Phase.COLLECTING and self.inputs_complete:
            self._phase = Phase.REFINING
        return 0

    def can_iterate(self) -> bool:
        if self._phase is Phase.REFINING:
            return self.refine_done < self.refine
        return self._phase is Phase.COLLECTING and self.frames > 0

    def rest_s(self) -> float:
        return 0.0

    def iterate(self) -> None:
        self._maybe_fail("iterate")
        time.sleep(self.iterate_s)
        self.iterations += 1
        if self._phase is Phase.REFINING:
            self.refine_done += 1

    def fail(self, reason: str) -> None:
        if self.exit_status != "fail":
            self.exit_status, self.reason = "fail", reason
        self._phase = Phase.FINISHING

    def finish(self, note: str = "") -> RunResult:
        self._maybe_fail("finish")
        self._phase = Phase.DONE
        reason = "; ".join(r for r in (self.reason, note) if r)
        return RunResult(
            self.raw_uid, self.derived_uid, self.exit_status, reason, self.frames,
            self.frames, 0, 0, self.iterations, self.refine_done, 0.0,
        )  # fmt: skip


class Harness:
    def __init__(self, policy: str = "finish") -> None:
        self.queue = IngestQueue()
        self.results: list[RunResult] = []
        self.runs: list[FakeRun] = []
        self.worker = Worker(self.queue, self._make, self.results.append, new_run_policy=policy)

    def _make(self, start: dict[str, Any]) -> FakeRun:
        run = FakeRun(start)
        self.runs.append(run)
        return run

    def scan(self, uid: str, frames: int = 4, stop: bool = True, **start: Any) -> None:
        self.queue.put(Start(uid, {"uid": uid, **start}))
        for seq in range(1, frames + 1):
            self.queue.put(Values(uid, "d", [seq], {"img": [None]}, frames=1))
        if stop:
            self.queue.put(Stop(uid, frames))

    def result(self, uid: str) -> RunResult:
        (found,) = [r for r in self.results if r.raw_uid == uid]
        return found


@pytest.fixture
def harness():
    made: list[Harness] = []

    def make(policy: str = "finish") -> Harness:
        made.append(Harness(policy))
        return made[-1]

    yield make
    for h in made:
        assert h.worker.close(timeout=WAIT_S)


def test_a_run_goes_through_collecting_refining_done(harness):
    h = harness()
    h.scan("a", frames=5, refine=4)
    assert h.worker.wait_idle(timeout=WAIT_S)
    result = h.result("a")
    assert result.exit_status == "success" and result.reason == ""
    assert result.frames_received == 5 and result.refine_iterations_done == 4
    assert h.runs[0].phase is Phase.DONE
    assert h.queue.stats().items_in == 7  # start, 5 values, stop: all handled


@pytest.mark.parametrize("stage", STAGES)
def test_a_failure_at_any_stage_ends_the_run_and_not_the_next(harness, stage):
    h = harness()
    h.scan("bad", fail_at=stage)
    h.scan("good")
    assert h.worker.wait_idle(timeout=WAIT_S)  # counters advanced past the failure
    bad = h.result("bad")
    assert bad.exit_status == "fail"
    expected = "setup: TypeError" if stage == "make" else f"RuntimeError: broken at {stage}"
    assert expected in bad.reason
    assert h.result("good").exit_status == "success"
    assert h.worker.errors >= 1 and h.worker.alive


def test_fail_item_from_the_run_engine_thread_ends_the_run(harness):
    h = harness()
    h.queue.put(Start("a", {"uid": "a"}))
    h.queue.put(Fail("a", "event document: KeyError: 'seq_num'"))
    assert h.worker.wait_idle(timeout=WAIT_S)
    assert h.result("a").reason == "event document: KeyError: 'seq_num'"


def test_a_start_before_the_previous_stop_fails_the_previous_run(harness):
    h = harness()
    h.scan("a", stop=False)
    h.scan("b")
    assert h.worker.wait_idle(timeout=WAIT_S)
    assert h.result("a").exit_status == "fail"
    assert "no stop document" in h.result("a").reason
    assert h.result("b").exit_status == "success"


def test_finish_policy_completes_the_refinement_before_the_next_run(harness):
    h = harness("finish")
    h.scan("a", refine=30, iterate_s=0.005)
    h.scan("b", refine=2)
    assert h.worker.wait_idle(timeout=WAIT_S)
    assert [r.raw_uid for r in h.results] == ["a", "b"]
    assert h.result("a").refine_iterations_done == 30 and h.result("a").reason == ""


def test_preempt_policy_cuts_the_refinement_short(harness):
    h = harness("preempt")
    h.scan("a", refine=10**6, iterate_s=0.001)
    deadline = time.monotonic() + WAIT_S
    while not (h.runs and h.runs[0].refine_done > 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    h.scan("b", refine=2)
    assert h.worker.wait_idle(timeout=WAIT_S)
    a = h.result("a")
    assert a.exit_status == "success" and 0 < a.refine_iterations_done < 10**6
    assert "refinement stopped after" in a.reason and "a new run started" in a.reason
    assert h.result("b").exit_status == "success"


def test_close_ends_the_current_run(harness):
    h = harness()
    h.scan("a", refine=10**6, iterate_s=0.001)
    deadline = time.monotonic() + WAIT_S
    while not (h.runs and h.runs[0].refine_done > 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h.worker.close(timeout=WAIT_S)
    assert "callback closed" in h.result("a").reason
    assert not h.worker.alive
    h.queue.put(Close())  # a second close is harmless (the fixture closes again)


def test_debug_switch_reraises_after_ending_the_run(harness, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    raised: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    h = harness()
    h.scan("bad", fail_at="iterate")
    h.worker._thread.join(WAIT_S)
    assert not h.worker.alive
    assert [str(e) for e in raised] == ["broken at iterate"]
    assert h.result("bad").exit_status == "fail"  # its derived run still ended


def test_run_engine_thread_errors_are_caught_unless_debugging(monkeypatch):
    from bluesky_ptycho.callback import PtychoCallback

    callback = PtychoCallback(None)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    callback("event", {})  # a malformed document: logged and counted, never raised
    assert callback.errors == 1
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(KeyError):
        callback("event", {})
    assert callback.errors == 2 and callback.close()


def test_warm_up_runs_in_the_worker_before_any_scan():
    from bluesky_ptycho.callback import PtychoCallback

    callback = PtychoCallback(None, backend="numpy", warm_up=True)
    try:
        assert callback.wait_ready(120)
        assert callback.warm_up_s > 0
    finally:
        callback.close()


def test_warm_up_auto_starts_nothing_without_a_gpu():
    from bluesky_ptycho.callback import PtychoCallback

    callback = PtychoCallback(None, backend="numpy")
    assert callback.options.warm_up == "auto" and callback._worker is None
    with pytest.raises(ValueError, match="warm_up"):
        PtychoCallback(None, backend="numpy", warm_up="yes")
