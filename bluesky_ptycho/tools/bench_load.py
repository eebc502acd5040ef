"""Load test: a long scan of small frames delivered as fast as possible.

``python -m bluesky_ptycho.tools.bench_load [--frames 20000] [--frame-size 32]``

Composes the documents of an ``--frames``-point step scan of the simulated
beamline (inline ``uint32`` frames; the frames are simulated before timing
starts), then calls the callback with them back to back on this thread - no
RunEngine, no sleeps: the delivery rate is whatever the callback allows, and
must be at least a 2 kHz detector's. Reports (JSON on stdout): delivery rate,
time per event on the calling thread (median, p99, max), frames in / used /
reported skipped (failed) / unmatched, the ingest queue's peak, the
reconstruction's wall time after the stop document, and the process's peak
resident memory (``resource.getrusage``; includes the pre-built documents).
Numbers in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: the detector rate the callback must keep up with (events per second)
DETECTOR_HZ = 2000.0


@dataclass
class LoadResult:
    """What :func:`bench_load` measured."""

    frames: int
    frame_size: int
    delivery_s: float
    delivery_hz: float
    median_event_s: float
    p99_event_s: float
    max_event_s: float
    frames_received: int
    frames_ingested: int
    frames_failed: int
    frames_unmatched: int
    exit_status: str
    reason: str
    max_frames_queued: int
    queue_overflows: int
    finish_s: float
    iterations: int
    peak_rss_mb_before: float
    peak_rss_mb: float


def _peak_rss_mb() -> float:
    scale = 1024.0 if sys.platform != "darwin" else 1024.0**2  # ru_maxrss: KiB (Linux), B (mac)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def scan_documents(n_frames: int, frame_size: int = 32, seed: int = 0) -> list[tuple[str, dict]]:
    """start, descriptor, ``n_frames`` events (inline frames), stop (built by hand: fast)."""
    from ..sim.beamline import make_beamline

    beamline = make_beamline(frame_size, max_points=n_frames, seed=seed)
    xs, ys = beamline.positions_um(n_frames)
    now = time.time()
    start = {
        "uid": str(uuid.uuid4()),
        "time": now,
        "num_points": n_frames,
        "ptycho": beamline.metadata("det_image"),
    }
    descriptor = {
        "uid": str(uuid.uuid4()),
        "run_start": start["uid"],
        "time": now,
        "name": "primary",
        "data_keys": {
            "det_image": {"source": "sim", "dtype": "array", "shape": [frame_size] * 2},
            "sx": {"source": "sim", "dtype": "number", "shape": []},
            "sy": {"source": "sim", "dtype": "number", "shape": []},
        },
        "object_keys": {},
        "configuration": {},
        "hints": {},
    }
    docs: list[tuple[str, dict]] = [("start", start), ("descriptor", descriptor)]
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        data = {"det_image": beamline.frame_at(float(x), float(y)), "sx": x, "sy": y}
        event = {
            "uid": str(uuid.uuid4()),
            "descriptor": descriptor["uid"],
            "seq_num": i + 1,
            "time": now,
            "data": {"det_image": data["det_image"], "sx": float(x), "sy": float(y)},
            "timestamps": dict.fromkeys(data, now),
            "filled": {},
        }
        docs.append(("event", event))
    stop = {
        "uid": str(uuid.uuid4()),
        "run_start": start["uid"],
        "time": now,
        "exit_status": "success",
        "reason": "",
        "num_events": {"primary": n_frames},
    }
    docs.append(("stop", stop))
    return docs


def bench_load(
    n_frames: int = 20_000,
    frame_size: int = 32,
    refine_iterations: int = 5,
    backend: str = "numpy",
    timeout_s: float = 600.0,
    **options: Any,
) -> LoadResult:
    """Deliver a scan of ``n_frames`` to a fresh callback as fast as possible; measure."""
    from ..callback import PtychoCallback

    docs = scan_documents(n_frames, frame_size)
    rss_before = _peak_rss_mb()
    callback = PtychoCallback(None, backend=backend, refine_iterations=refine_iterations, **options)
    try:
        started = time.perf_counter()
        for name, doc in docs:
            callback(name, doc)
        delivery_s = time.perf_counter() - started
        if not callback.wait(timeout=timeout_s):
            raise RuntimeError(f"the reconstruction did not finish within {timeout_s} s")
        finish_s = time.perf_counter() - started - delivery_s
        result = callback.last_result
        assert result is not None
        stats = callback.queue_stats()
        event_s = np.asarray(callback.timings.event_s)
    finally:
        callback.close()
    return LoadResult(
        frames=n_frames,
        frame_size=frame_size,
        delivery_s=delivery_s,
        delivery_hz=n_frames / delivery_s,
        median_event_s=float(np.median(event_s)),
        p99_event_s=float(np.percentile(event_s, 99)),
        max_event_s=float(event_s.max()),
        frames_received=result.frames_received,
        frames_ingested=result.frames_ingested,
        frames_failed=result.frames_failed,
        frames_unmatched=result.frames_unmatched,
        exit_status=result.exit_status,
        reason=result.reason,
        max_frames_queued=stats.max_frames_queued,
        queue_overflows=stats.overflows,
        finish_s=finish_s,
        iterations=result.iterations,
        peak_rss_mb_before=rss_before,
        peak_rss_mb=_peak_rss_mb(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--frame-size", type=int, default=32)
    parser.add_argument("--refine-iterations", type=int, default=5)
    parser.add_argument("--backend", default="numpy")
    args = parser.parse_args(argv)
    result = bench_load(args.frames, args.frame_size, args.refine_iterations, args.backend)
    print(json.dumps(asdict(result), indent=2))
    keeps_up = result.delivery_hz >= DETECTOR_HZ
    print(f"delivery {result.delivery_hz:.0f} Hz: {'>=' if keeps_up else '<'} {DETECTOR_HZ:.0f} Hz")
    return 0 if keeps_up and result.exit_status == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
