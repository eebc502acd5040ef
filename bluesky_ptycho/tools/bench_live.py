"""Benchmark: live latency of a streamed scan through the real callback.

Simulates a scan (frames on the engine's array module, then copied to the
host as ``uint32``, as a detector delivers them) and composes all its
documents with ``event_model.compose_run`` *before* the clock starts: a start
document with the ``ptycho`` metadata of
:func:`~bluesky_ptycho.sim.sample.ptycho_metadata` and ``num_points``, one
descriptor (``det_image``: uint32 array, ``sx`` / ``sy``: motor readings in
micrometres), one event per frame with the frame inline, and a stop document.
The calling thread then plays the RunEngine's role: it hands the events to a
:class:`~bluesky_ptycho.callback.PtychoCallback` paced at ``rate_hz`` (sleeping
until each one is due, never spinning; late events go at once), then the stop
document. Times are ``time.perf_counter`` readings on every thread:

* a frame's **arrival**: just before its event document is handed to the callback;
* a **snapshot**'s time: when ``emit`` receives its ``snapshots``-stream event
  (the preview images; it follows the ``progress`` event whose ``n_frames``
  says how many frames the snapshot includes). Inline frames join the engine
  in ``seq_num`` order, so a snapshot with ``n_frames = k`` includes frames 1..k;
  the final snapshot (``final`` true) counts as one;
* **latency** of frame i: the first snapshot with ``n_frames >= i`` minus its arrival;
* **stop -> final**: from handing over the stop document to ``emit`` receiving
  the final result (the ``primary``-stream event, which carries the full-size
  object).

The final NRMSE is that of the ``primary`` event's object as delivered
(:func:`bluesky_ptycho.metrics.snapshot_nrmse`: shift and global factor
removed, covered region). Imports NumPy, event-model, the engine, the
callback and the simulation only (no Bluesky, ophyd or Tiled), so it runs on a
GPU host without the Bluesky stack. ``bluesky-ptycho bench-live`` prints it.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: data key of the simulated detector's image
IMAGE_KEY = "det_image"


@dataclass
class LiveBench:
    """What :func:`bench_live` measured (seconds; rates in Hz)."""

    frames_sent: int
    frame_size: int
    rate_hz: float  # asked for
    send_rate_hz: float  # achieved: (frames - 1) / (last arrival - first arrival)
    backend: str
    device: str
    snapshot_interval_s: float
    refine_iterations: int
    latency_min_s: float
    latency_median_s: float
    latency_p90_s: float
    latency_max_s: float
    stop_to_final_s: float
    final_nrmse: float
    iterations_during_scan: int
    iterations_after_stop: int
    frames_in_final: int
    frames_lost: int  # frames sent - frames in the final snapshot
    live_snapshots: int  # snapshots before the final one
    handoff_median_s: float  # time the callback took on the sending thread, per event
    handoff_max_s: float
    exit_status: str
    reason: str
    simulate_s: float
    warm_up_s: float | None  # the callback's kernel warm-up before the clock (None: none)
    photons_per_frame: float
    seed: int
    date: str = ""
    commit: str = ""
    command: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # python, numpy, cupy, event_model
    extra_options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "any_frame_lost": self.frames_lost > 0}

    def summary(self) -> str:
        ms = 1e3
        lost = "none lost" if self.frames_lost == 0 else f"{self.frames_lost} LOST"
        return "\n".join(
            [
                f"bench-live: {self.frames_sent} frames of {self.frame_size}x{self.frame_size} "
                f"sent at {self.send_rate_hz:.0f} Hz (asked {self.rate_hz:g}), engine on "
                f"{self.backend} ({self.device}); snapshot_interval_s "
                f"{self.snapshot_interval_s:g}, refine_iterations {self.refine_iterations}",
                f"  frame arrival -> first snapshot including it: median "
                f"{self.latency_median_s:.3f} s, p90 {self.latency_p90_s:.3f} s, max "
                f"{self.latency_max_s:.3f} s ({self.live_snapshots} live snapshots)",
                f"  stop document -> final result: {self.stop_to_final_s:.3f} s; final NRMSE "
                f"{self.final_nrmse:.4f} as delivered",
                f"  iterations: {self.iterations_during_scan} during the scan, "
                f"{self.iterations_after_stop} after the stop; frames in the final snapshot "
                f"{self.frames_in_final}/{self.frames_sent} ({lost}); exit_status "
                f"{self.exit_status}",
                f"  callback time per event on the sending thread: median "
                f"{self.handoff_median_s * ms:.3f} ms, max {self.handoff_max_s * ms:.3f} ms",
                "  kernel warm-up before the scan: "
                + ("none" if self.warm_up_s is None else f"{self.warm_up_s:.1f} s"),
            ]
        )


def frame_latencies_s(
    arrivals_s: np.ndarray, snapshot_s: np.ndarray, snapshot_frames: np.ndarray
) -> np.ndarray:
    """Seconds from each frame's arrival to the first snapshot that includes it.

    arrivals_s : (n,) arrival times of frames 1..n, in ``seq_num`` order.
    snapshot_s, snapshot_frames : (k,) time of each snapshot and its ``n_frames``
        (non-decreasing: frames only join). A snapshot of ``n_frames = m``
        includes frames 1..m. Frames no snapshot includes get NaN.
    """
    snapshot_frames = np.asarray(snapshot_frames, np.int64)
    if np.any(np.diff(snapshot_frames) < 0):
        raise ValueError(f"snapshot frame counts decrease: {snapshot_frames.tolist()}")
    arrivals_s = np.asarray(arrivals_s, np.float64)
    first = np.searchsorted(snapshot_frames, np.arange(1, len(arrivals_s) + 1), side="left")
    seen = first < len(snapshot_frames)
    latency = np.full(len(arrivals_s), np.nan)
    latency[seen] = np.asarray(snapshot_s, np.float64)[first[seen]] - arrivals_s[seen]
    return latency


class _Recorder:
    """The callback's ``emit``: times snapshots, keeps the final result (publisher thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams: dict[str, str] = {}  # descriptor uid -> stream name
        self.pending: tuple[int, bool] | None = None  # (n_frames, final) of the last progress
        self.snapshots: list[tuple[float, int, bool]] = []  # (time, n_frames, final)
        self.result: dict[str, Any] | None = None
        self.result_s = math.nan
        self.stop: dict[str, Any] | None = None

    def __call__(self, name: str, doc: dict) -> None:
        now = time.perf_counter()
        with self.lock:
            if name == "descriptor":
                self.streams[doc["uid"]] = doc["name"]
            elif name == "event":
                stream = self.streams.get(doc["descriptor"])
                if stream == "progress":
                    self.pending = (int(doc["data"]["n_frames"]), bool(doc["data"]["final"]))
                elif stream == "snapshots" and self.pending is not None:
                    self.snapshots.append((now, *self.pending))
                    self.pending = None
                elif stream == "primary":
                    self.result, self.result_s = doc["data"], now
            elif name == "stop":
                self.stop = doc


def scan_documents(
    frames: np.ndarray, x_motor: np.ndarray, y_motor: np.ndarray, metadata: dict[str, Any]
) -> tuple[dict, dict, list[dict], Any]:
    """(start, descriptor, events, run bundle) of a step scan with inline frames."""
    from event_model import compose_run

    n, rows, cols = frames.shape
    bundle = compose_run(metadata={"ptycho": metadata, "num_points": n, "plan_name": "bench_live"})
    motor = {"source": "bench_live", "dtype": "number", "shape": [], "dtype_numpy": "<f8"}
    data_keys = {
        IMAGE_KEY: {
            "source": "bench_live",
            "dtype": "array",
            "shape": [rows, cols],
            "dtype_numpy": frames.dtype.str,
        },
        metadata["x_key"]: dict(motor),
        metadata["y_key"]: dict(motor),
    }
    descriptor = bundle.compose_descriptor(name="primary", data_keys=data_keys)
    now = time.time()
    events = []
    for frame, x, y in zip(frames, x_motor, y_motor, strict=True):
        data = {IMAGE_KEY: frame, metadata["x_key"]: float(x), metadata["y_key"]: float(y)}
        events.append(descriptor.compose_event(data=data, timestamps=dict.fromkeys(data, now)))
    return bundle.start_doc, descriptor.descriptor_doc, events, bundle


def _delivered_nrmse(data: dict[str, Any], truth: np.ndarray, origin_m: Any) -> float:
    """:func:`~bluesky_ptycho.metrics.snapshot_nrmse` of a derived ``primary`` event."""
    from ..engine.reconstructor import Snapshot
    from ..metrics import snapshot_nrmse

    obj = np.asarray(data["object_amplitude"]) * np.exp(1j * np.asarray(data["object_phase"]))
    probe = np.asarray(data["probe_amplitude"]) * np.exp(1j * np.asarray(data["probe_phase"]))
    delivered = Snapshot(
        object=obj,
        probe=probe,
        coverage=np.asarray(data["coverage"]),
        iteration=int(data["iteration"]),
        n_frames=int(data["n_frames"]),
        origin_m=tuple(float(v) for v in data["origin_m"]),  # type: ignore[arg-type]
        pixel_m=tuple(float(v) for v in data["pixel_m"]),  # type: ignore[arg-type]
    )
    return snapshot_nrmse(delivered, truth, origin_m)


def bench_live(
    n_frames: int = 10_000,
    frame_size: int = 256,
    rate_hz: float = 2000.0,
    backend: str = "auto",
    refine_iterations: int | None = None,
    snapshot_interval_s: float | None = None,
    seed: int = 0,
    photons_per_frame: float = 1e6,
    timeout_s: float = 600.0,
    **callback_options: Any,
) -> LiveBench:
    """Stream a simulated scan to a fresh callback at ``rate_hz``; measure (module docstring).

    refine_iterations, snapshot_interval_s : None: the callback's defaults.
    callback_options : more ``PtychoCallback`` keywords (``scan_duty_cycle``,
        ``max_queued_frames``...), validated by the callback.
    Raises RuntimeError when the reconstruction does not end within ``timeout_s``
    after the stop document or delivers no result.
    """
    from ..callback import PtychoCallback
    from ..callback.settings import RUN_DEFAULTS
    from ..engine.backend import get_array_module, to_host
    from ..sim.sample import default_config, ptycho_metadata, simulate_scan
    from .bench_engine import _commit, _device_name

    if not rate_hz > 0:
        raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
    xp = get_array_module(backend)
    config = default_config(frame_size)
    tick = time.perf_counter()
    scan = simulate_scan(config, n_frames, photons_per_frame=photons_per_frame, seed=seed, xp=xp)
    frames = to_host(scan.frames)
    x_motor, y_motor = scan.x_motor, scan.y_motor
    sample = scan.sample
    del scan
    if xp.__name__ == "cupy":  # the simulation's device memory is not the engine's
        xp.get_default_memory_pool().free_all_blocks()
    extra = {} if refine_iterations is None else {"refine_iterations": refine_iterations}
    metadata = ptycho_metadata(config, IMAGE_KEY, **extra)
    start, descriptor, events, bundle = scan_documents(frames, x_motor, y_motor, metadata)
    stop = bundle.compose_stop(exit_status="success")
    simulate_s = time.perf_counter() - tick

    options = dict(callback_options)
    if snapshot_interval_s is not None:
        options["snapshot_interval_s"] = snapshot_interval_s
    recorder = _Recorder()
    callback = PtychoCallback(recorder, backend=backend, **options)
    # the warm-up (on CuPy) is over before the scan, as in a profile made before scans
    if not callback.wait_ready(timeout_s):
        raise RuntimeError(f"the callback's warm-up took over {timeout_s} s")
    warm_up_s = None if math.isnan(callback.warm_up_s) else callback.warm_up_s
    arrivals = np.empty(n_frames)
    handoff = np.empty(n_frames)
    period_s = 1.0 / rate_hz
    try:
        callback("start", start)
        callback("descriptor", descriptor)
        started = time.perf_counter()
        for i, event in enumerate(events):
            wait_s = started + i * period_s - time.perf_counter()
            if wait_s > 0:
                time.sleep(wait_s)
            arrivals[i] = time.perf_counter()
            callback("event", event)
            handoff[i] = time.perf_counter() - arrivals[i]
        stop_at = time.perf_counter()
        callback("stop", stop)
        if not callback.wait(timeout_s):
            raise RuntimeError(f"the reconstruction did not end within {timeout_s} s of the stop")
        result = callback.last_result
    finally:
        callback.close()
    if recorder.result is None or result is None:
        reason = recorder.stop.get("reason", "") if recorder.stop else "no stop document"
        raise RuntimeError(f"the callback delivered no final result: {reason}")

    times, counts, finals = (np.array(v) for v in zip(*recorder.snapshots, strict=True))
    latency = frame_latencies_s(arrivals, times, counts)
    included = latency[np.isfinite(latency)]
    frames_in_final = int(recorder.result["n_frames"])
    engine_backend = str(result.snapshot.metrics.get("backend", backend)) if result.snapshot else ""
    command = (
        f"bluesky-ptycho bench-live --frames {n_frames} --frame-size {frame_size} "
        f"--rate-hz {rate_hz:g} --backend {backend} --seed {seed} --photons {photons_per_frame:g}"
        + (f" --refine-iterations {refine_iterations}" if refine_iterations is not None else "")
        + (
            f" --snapshot-interval {snapshot_interval_s:g}"
            if snapshot_interval_s is not None
            else ""
        )
        + option_flags(callback_options)
    )
    return LiveBench(
        frames_sent=n_frames,
        frame_size=frame_size,
        rate_hz=rate_hz,
        send_rate_hz=(n_frames - 1) / (arrivals[-1] - arrivals[0]) if n_frames > 1 else math.nan,
        backend=engine_backend,
        device=_device_name(xp),
        snapshot_interval_s=callback.options.snapshot_interval_s,
        refine_iterations=int(metadata.get("refine_iterations", RUN_DEFAULTS["refine_iterations"])),
        latency_min_s=float(included.min()) if included.size else math.nan,
        latency_median_s=float(np.median(included)) if included.size else math.nan,
        latency_p90_s=float(np.percentile(included, 90)) if included.size else math.nan,
        latency_max_s=float(included.max()) if included.size else math.nan,
        stop_to_final_s=recorder.result_s - stop_at,
        final_nrmse=_delivered_nrmse(recorder.result, sample.object, sample.origin_m),
        iterations_during_scan=result.iterations - result.refine_iterations_done,
        iterations_after_stop=result.refine_iterations_done,
        frames_in_final=frames_in_final,
        frames_lost=n_frames - frames_in_final,
        live_snapshots=int((~finals.astype(bool)).sum()),
        handoff_median_s=float(np.median(handoff)),
        handoff_max_s=float(handoff.max()),
        exit_status=recorder.stop.get("exit_status", "") if recorder.stop else "",
        reason=recorder.stop.get("reason", "") if recorder.stop else "",
        simulate_s=simulate_s,
        warm_up_s=warm_up_s,
        photons_per_frame=photons_per_frame,
        seed=seed,
        date=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        commit=_commit(),
        command=command,
        versions=_versions(xp),
        extra_options={k: _json_value(v) for k, v in callback_options.items()},
    )


def _versions(xp: Any) -> dict[str, str]:
    import platform

    import event_model

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    if xp is not np:
        versions[xp.__name__] = str(getattr(xp, "__version__", "unknown"))
    versions["event_model"] = str(getattr(event_model, "__version__", "unknown"))
    return versions


#: the ``bench-live`` flag of each callback keyword it passes on (the command reads
#: them with it, and the recorded command writes them back)
OPTION_FLAGS = {
    "scan_duty_cycle": "--duty-cycle",
    "frame_storage": "--frame-storage",
    "line_search_frames": "--line-search-frames",
    "calibrate": "--calibrate",
    "defocus_sign": "--defocus-sign",
    "refine_seconds": "--refine-seconds",
}


def option_flags(callback_options: dict[str, Any]) -> str:
    """The ``bench-live`` flags (leading space each) that give ``callback_options``, so
    the recorded command reproduces the run; keywords without a flag are left out
    (they are in ``extra_options``)."""
    return "".join(
        f" {OPTION_FLAGS[name]} {value:g}"
        if isinstance(value, float)
        else f" {OPTION_FLAGS[name]} {value}"
        for name, value in callback_options.items()
        if name in OPTION_FLAGS
    )


def _json_value(value: Any) -> Any:
    """``value`` when JSON has it (None, bool, int, float, str), else its repr."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)
