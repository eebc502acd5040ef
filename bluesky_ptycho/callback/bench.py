"""Benchmark: what the callback costs the RunEngine.

Runs the same step scan of the simulated beamline (inline images, no exposure
time: the RunEngine thread is CPU-bound, the worst case) in four ways, in
turn: without the callback; with it, the worker reconstructing live as fast as
it can (``scan_duty_cycle=1``); the same with ``scan_duty_cycle=duty_cycle``;
and with the worker only ingesting frames (``min_frames`` beyond the scan, so it
iterates only after the stop document). It reports

* the median (p99, max) time the callback spends on the RunEngine thread per event;
* ``ratio``, ``ratio_throttled``, ``ratio_ingest_only``: scan time of each
  callback mode / scan time without the callback, best of ``repeats`` scans each
  (the usual way to time code on a shared machine). ``ratio_ingest_only`` is the
  cost of the callback itself; the others add the reconstruction competing with
  the scan for CPU cores and the GIL.

The reconstruction is waited for after each scan (not timed).
``bluesky-ptycho bench-callback`` prints the result.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("without", "live", "throttled", "ingest_only")


@dataclass
class CallbackBench:
    """Results of :func:`bench_callback` (seconds)."""

    n_points: int
    frame_size: int
    backend: str
    duty_cycle: float
    scan_s: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})
    median_event_s: float = float("nan")
    p99_event_s: float = float("nan")
    max_event_s: float = float("nan")
    iterations_during_scans: dict[str, int] = field(default_factory=dict)
    frames_received: int = 0
    frames_ingested: int = 0

    def _ratio(self, mode: str) -> float:
        return min(self.scan_s[mode]) / min(self.scan_s["without"])

    @property
    def ratio(self) -> float:
        """Live reconstruction as fast as possible / no callback (best of repeats)."""
        return self._ratio("live")

    @property
    def ratio_throttled(self) -> float:
        """Live reconstruction at ``duty_cycle`` / no callback (best of repeats)."""
        return self._ratio("throttled")

    @property
    def ratio_ingest_only(self) -> float:
        """Callback with the worker not iterating during the scan / no callback."""
        return self._ratio("ingest_only")

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "ratio": self.ratio,
            "ratio_throttled": self.ratio_throttled,
            "ratio_ingest_only": self.ratio_ingest_only,
        }

    def summary(self) -> str:
        ms = 1e3
        labels = {
            "without": "without the callback",
            "live": "live, scan_duty_cycle=1",
            "throttled": f"live, scan_duty_cycle={self.duty_cycle:g}",
            "ingest_only": "worker only ingesting",
        }
        lines = [
            f"{self.n_points}-point scan, {self.frame_size}x{self.frame_size} inline frames, "
            f"engine on {self.backend}",
            f"  RunEngine-thread time per event: median {self.median_event_s * ms:.3f} ms, "
            f"p99 {self.p99_event_s * ms:.3f} ms, max {self.max_event_s * ms:.3f} ms",
        ]
        for mode in MODES:
            times = ", ".join(f"{v:.2f}" for v in self.scan_s[mode])
            ratio = "" if mode == "without" else f"  ratio {self._ratio(mode):.3f}"
            its = self.iterations_during_scans.get(mode)
            extra = f"  ({its} iterations during the scans)" if its is not None else ""
            lines.append(
                f"  {labels[mode]:<28} {times} s (best {min(self.scan_s[mode]):.2f} s)"
                f"{ratio}{extra}"
            )
        lines.append(f"  frames in/out: {self.frames_received}/{self.frames_ingested}")
        return "\n".join(lines)


def bench_callback(
    n_points: int = 1000,
    frame_size: int = 64,
    repeats: int = 3,
    backend: str = "auto",
    duty_cycle: float = 0.3,
    wait_timeout_s: float = 600.0,
) -> CallbackBench:
    """Time ``repeats`` scans in each mode (see module docstring)."""
    import bluesky.plans as bp
    import numpy as np
    from bluesky import RunEngine

    from ..sim.beamline import make_beamline
    from .router import PtychoCallback

    beamline = make_beamline(frame_size, max_points=n_points)
    detector = beamline.inline_detector()
    x, y = beamline.positions_um(n_points)
    engine = RunEngine({})
    callbacks = {
        "live": PtychoCallback(None, backend=backend),
        "throttled": PtychoCallback(None, backend=backend, scan_duty_cycle=duty_cycle),
    }
    callbacks["ingest_only"] = callbacks["live"]
    metadata = {
        mode: beamline.metadata(
            "det_image",
            refine_iterations=0,
            **({"min_frames": n_points + 1} if mode == "ingest_only" else {}),
        )
        for mode in MODES
    }
    result = CallbackBench(n_points, frame_size, backend, duty_cycle)
    event_s: list[float] = []
    for _ in range(repeats):
        for mode in MODES:
            callback = callbacks.get(mode)
            token = engine.subscribe(callback) if callback is not None else None
            before = _worker_iterations(callback)
            plan = bp.list_scan([detector], beamline.sx, list(x), beamline.sy, list(y))
            started = time.perf_counter()
            engine(plan, ptycho=metadata[mode])
            result.scan_s[mode].append(time.perf_counter() - started)
            if callback is None:
                continue
            engine.unsubscribe(token)
            done = result.iterations_during_scans.get(mode, 0)
            result.iterations_during_scans[mode] = done + _worker_iterations(callback) - before
            event_s.extend(callback.timings.event_s)
            callback.timings.event_s.clear()
            if not callback.wait(wait_timeout_s):
                raise RuntimeError("the reconstruction did not finish in time")
            last = callback.last_result
            if last is not None:
                result.frames_received += last.frames_received
                result.frames_ingested += last.frames_ingested
                if last.snapshot is not None:
                    result.backend = str(last.snapshot.metrics.get("backend", backend))
    for callback in set(callbacks.values()):
        callback.close()
    samples = np.asarray(event_s)
    result.median_event_s = float(np.median(samples))
    result.p99_event_s = float(np.percentile(samples, 99))
    result.max_event_s = float(samples.max())
    return result


def _worker_iterations(callback: Any) -> int:
    worker = getattr(callback, "_worker", None)
    return worker.iterations if worker is not None else 0
