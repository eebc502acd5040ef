"""Benchmark: what the callback costs the RunEngine.

Runs the same step scan of the simulated beamline (inline images, no exposure
time: the RunEngine thread is CPU-bound, the worst case) in turn: without the
callback; with the callback at its *default* settings (``scan_duty_cycle="auto"``:
throttled on a few-core host with the NumPy engine); reconstructing live flat
out (``scan_duty_cycle=1``); optionally at a given ``scan_duty_cycle``; and with
the worker only ingesting frames (``min_frames`` beyond the scan, so it iterates
only after the stop document). It reports

* the median (p99, max) time the callback spends on the RunEngine thread per event;
* for each callback mode, scan time / scan time without the callback: the
  median over the repeats of the *paired* ratio (each scan over the scan
  without the callback of the same round; the modes run in turn, so a load
  that drifts on a shared machine affects both alike), and the ratio of the
  best of ``repeats`` scans each. ``ingest_only`` is the
  cost of the callback itself; the others add the reconstruction competing
  with the scan for CPU cores and the GIL.

The reconstruction is waited for after each scan (not timed).
``bluesky-ptycho bench-callback`` prints the result.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

LABELS = {
    "without": "without the callback",
    "default": "live, default settings",
    "flat_out": "live, scan_duty_cycle=1",
    "throttled": "live, scan_duty_cycle={duty:g}",
    "ingest_only": "worker only ingesting",
}


@dataclass
class CallbackBench:
    """Results of :func:`bench_callback` (seconds)."""

    n_points: int
    frame_size: int
    backend: str
    duty_cycle: float | None
    modes: tuple[str, ...]
    scan_s: dict[str, list[float]] = field(default_factory=dict)
    median_event_s: float = float("nan")
    p99_event_s: float = float("nan")
    max_event_s: float = float("nan")
    iterations_during_scans: dict[str, int] = field(default_factory=dict)
    default_duty_cycle: float = float("nan")  # what "auto" chose on this host
    frames_received: int = 0
    frames_ingested: int = 0

    def ratio(self, mode: str, stat: str = "median") -> float:
        """Scan time of ``mode`` / without the callback: ``median`` of the paired
        ratios of each round, or ``best`` of each mode."""
        if stat == "best":
            return min(self.scan_s[mode]) / min(self.scan_s["without"])
        pairs = zip(self.scan_s[mode], self.scan_s["without"], strict=True)
        return statistics.median(t / t0 for t, t0 in pairs)

    def as_dict(self) -> dict[str, Any]:
        ratios = {
            mode: {"median_paired": self.ratio(mode), "best": self.ratio(mode, "best")}
            for mode in self.modes
            if mode != "without"
        }
        return {**asdict(self), "ratios": ratios}

    def summary(self) -> str:
        ms = 1e3
        lines = [
            f"{self.n_points}-point scan, {self.frame_size}x{self.frame_size} inline frames, "
            f"engine on {self.backend}; default scan_duty_cycle here: "
            f"{self.default_duty_cycle:g}",
            f"  RunEngine-thread time per event: median {self.median_event_s * ms:.3f} ms, "
            f"p99 {self.p99_event_s * ms:.3f} ms, max {self.max_event_s * ms:.3f} ms",
        ]
        for mode in self.modes:
            label = LABELS[mode].format(duty=self.duty_cycle or 0)
            times = ", ".join(f"{v:.2f}" for v in self.scan_s[mode])
            median = statistics.median(self.scan_s[mode])
            ratio = ""
            if mode != "without":
                ratio = f"  ratio {self.ratio(mode):.3f} (best {self.ratio(mode, 'best'):.3f})"
            its = self.iterations_during_scans.get(mode)
            extra = f"  ({its} iterations during the scans)" if its is not None else ""
            lines.append(f"  {label:<28} {times} s (median {median:.2f} s){ratio}{extra}")
        lines.append(f"  frames in/out: {self.frames_received}/{self.frames_ingested}")
        return "\n".join(lines)


def bench_callback(
    n_points: int = 1000,
    frame_size: int = 64,
    repeats: int = 3,
    backend: str = "auto",
    duty_cycle: float | None = None,
    wait_timeout_s: float = 600.0,
) -> CallbackBench:
    """Time ``repeats`` scans in each mode, modes interleaved (see module docstring)."""
    import bluesky.plans as bp
    import numpy as np
    from bluesky import RunEngine

    from ..callback import PtychoCallback
    from ..sim.beamline import make_beamline

    beamline = make_beamline(frame_size, max_points=n_points)
    detector = beamline.inline_detector()
    x, y = beamline.positions_um(n_points)
    engine = RunEngine({})
    callbacks = {
        "default": PtychoCallback(None, backend=backend),
        "flat_out": PtychoCallback(None, backend=backend, scan_duty_cycle=1.0),
    }
    callbacks["ingest_only"] = callbacks["default"]
    if duty_cycle is not None:
        callbacks["throttled"] = PtychoCallback(None, backend=backend, scan_duty_cycle=duty_cycle)
    modes = ("without", "default", "flat_out", *(() if duty_cycle is None else ("throttled",)))
    modes = (*modes, "ingest_only")
    metadata = {
        mode: beamline.metadata(
            "det_image",
            refine_iterations=0,
            **({"min_frames": n_points + 1} if mode == "ingest_only" else {}),
        )
        for mode in modes
    }
    result = CallbackBench(n_points, frame_size, backend, duty_cycle, modes)
    result.scan_s = {mode: [] for mode in modes}
    event_s: list[float] = []
    for _ in range(repeats):
        for mode in modes:
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
                if mode == "default":
                    result.default_duty_cycle = last.scan_duty_cycle
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
