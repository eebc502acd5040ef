"""Benchmark: what the callback costs the RunEngine.

Runs the same step scan of the simulated beamline (inline images) with and
without a subscribed :class:`~bluesky_ptycho.callback.PtychoCallback`,
alternating, and reports

* the median time the callback spends on the RunEngine thread per event;
* the scan time with the callback over the scan time without it (medians of
  ``repeats`` scans each), while the worker thread reconstructs concurrently,
  as it would at a beamline.

The reconstruction itself is waited for after each timed scan (not timed).
``bluesky-ptycho bench-callback`` prints the result.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CallbackBench:
    """Results of :func:`bench_callback` (seconds)."""

    n_points: int
    frame_size: int
    backend: str
    scan_s_without: list[float] = field(default_factory=list)
    scan_s_with: list[float] = field(default_factory=list)
    median_event_s: float = float("nan")
    p99_event_s: float = float("nan")
    max_event_s: float = float("nan")
    iterations_during_scans: int = 0
    frames_received: int = 0
    frames_ingested: int = 0

    @property
    def ratio(self) -> float:
        """Scan time with the callback / without it (medians)."""
        return statistics.median(self.scan_s_with) / statistics.median(self.scan_s_without)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}

    def summary(self) -> str:
        ms = 1e3
        return (
            f"{self.n_points}-point scan, {self.frame_size}x{self.frame_size} inline frames, "
            f"engine on {self.backend}\n"
            f"  RunEngine-thread time per event: median {self.median_event_s * ms:.3f} ms, "
            f"p99 {self.p99_event_s * ms:.3f} ms, max {self.max_event_s * ms:.3f} ms\n"
            f"  scan time without callback: {_fmt(self.scan_s_without)}\n"
            f"  scan time with callback:    {_fmt(self.scan_s_with)}\n"
            f"  ratio (medians): {self.ratio:.3f}   "
            f"(worker iterations during the timed scans: {self.iterations_during_scans}; "
            f"frames in/out {self.frames_received}/{self.frames_ingested})"
        )


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f} s" for v in values) + f"  (median {statistics.median(values):.2f} s)"


def bench_callback(
    n_points: int = 1000,
    frame_size: int = 64,
    repeats: int = 2,
    backend: str = "auto",
    wait_timeout_s: float = 600.0,
) -> CallbackBench:
    """Time ``repeats`` scans with and without the callback (see module docstring)."""
    import bluesky.plans as bp
    import numpy as np
    from bluesky import RunEngine

    from ..sim.beamline import make_beamline
    from .router import PtychoCallback

    beamline = make_beamline(frame_size, max_points=n_points)
    detector = beamline.inline_detector()
    x, y = beamline.positions_um(n_points)
    md = beamline.metadata("det_image", refine_iterations=0)
    engine = RunEngine({})
    callback = PtychoCallback(None, backend=backend)
    result = CallbackBench(n_points, frame_size, backend)
    event_s: list[float] = []
    with tempfile.TemporaryDirectory():
        for _ in range(repeats):
            for subscribed in (False, True):
                token = engine.subscribe(callback) if subscribed else None
                iterations = _worker_iterations(callback)
                started = time.perf_counter()
                engine(
                    bp.list_scan([detector], beamline.sx, list(x), beamline.sy, list(y)), ptycho=md
                )
                elapsed = time.perf_counter() - started
                if token is None:
                    result.scan_s_without.append(elapsed)
                    continue
                result.scan_s_with.append(elapsed)
                result.iterations_during_scans += _worker_iterations(callback) - iterations
                engine.unsubscribe(token)
                event_s.extend(callback.timings.event_s)
                callback.timings.event_s.clear()
                if not callback.wait(wait_timeout_s):
                    raise RuntimeError("the reconstruction did not finish in time")
                last = callback.last_result
                if last is not None:
                    result.frames_received += last.frames_received
                    result.frames_ingested += last.frames_ingested
    callback.close()
    samples = np.asarray(event_s)
    result.median_event_s = float(np.median(samples))
    result.p99_event_s = float(np.percentile(samples, 99))
    result.max_event_s = float(samples.max())
    result.backend = callback.backend if backend != "auto" else backend
    return result


def _worker_iterations(callback: Any) -> int:
    worker = getattr(callback, "_worker", None)
    return worker.iterations if worker is not None else 0
