"""The demo: a live ptychography scan on the simulated beamline, stored in Tiled.

:func:`run_demo` starts an embedded Tiled server (``SimpleTiledServer`` in a
local folder), subscribes a ``TiledWriter`` (raw runs, through bluesky's
``BufferingWrapper`` so that HTTP requests do not slow the scan) and a
:class:`~bluesky_ptycho.callback.PtychoCallback` (whose derived runs go to a
second ``TiledWriter``) to a RunEngine, runs a Fermat-spiral step scan (or a fly
scan) of the simulated detector, waits for the refinement after the scan,
reads the result back from Tiled, computes the NRMSE against the known object
and saves a PNG of object amplitude and phase, probe and the error curve.
``bluesky-ptycho demo`` is the command-line front end.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

logger = logging.getLogger(__name__)

#: query parameters that carry credentials (never printed)
SECRET_QUERY_KEYS = ("api_key", "apikey", "token", "access_token", "password")

DETECTORS = ("hdf5", "file", "inline")


@dataclass
class DemoOptions:
    """What the demo does (the command line's options)."""

    output: Path = Path("demo-output")
    points: int = 250
    frame_size: int = 64
    detector: str = "hdf5"  # "hdf5" (StreamResource), "file" (NPY_SEQ), "inline"
    fly: bool = False  # fly scan (hdf5 detector only): no events at all
    exposure_s: float = 0.01  # simulated exposure per point
    refine_iterations: int = 60
    backend: str = "auto"
    seed: int = 0
    progress: bool = True
    serve: bool = False  # keep the Tiled server up after the demo until Ctrl-C


@dataclass
class DemoResult:
    """What the demo produced."""

    tiled_uri: str  # the server's address, without its API key (see public_address)
    web_uri: str
    raw_uid: str
    derived_uid: str
    nrmse: float
    png: Path
    iterations: int
    frames: int
    scan_s: float
    total_s: float
    backend: str
    exit_status: str
    reason: str = ""
    tiled_arrays: dict[str, tuple[int, ...]] = field(default_factory=dict)


class _Progress:
    """Progress bars fed from raw documents (scan) and derived progress events."""

    def __init__(self, points: int, refine: int, enabled: bool) -> None:
        self.enabled = enabled
        self.points = points
        self.refine = refine
        self._lock = threading.Lock()
        self._scan_bar: Any = None
        self._refine_bar: Any = None
        self._stop_iteration: int | None = None
        self.latest: dict[str, Any] = {}
        self._image_keys: set[str] = set()
        self._image_resources: set[str] = set()
        if enabled:
            from tqdm import tqdm

            self._tqdm = tqdm
            self._scan_bar = tqdm(total=points, desc="scan      ", unit="frame", leave=True)

    def watch_image(self, key: str) -> None:
        self._image_keys.add(key)

    def raw(self, name: str, doc: dict) -> None:
        """RunEngine subscriber: count frames as they are recorded."""
        if self._scan_bar is None:
            return
        if name == "event" and self._image_keys & set(doc["data"]):
            self._scan_bar.update(1)
        elif name == "stream_resource" and doc.get("data_key") in self._image_keys:
            self._image_resources.add(doc["uid"])
        elif name == "stream_datum" and doc["stream_resource"] in self._image_resources:
            self._scan_bar.update(doc["indices"]["stop"] - doc["indices"]["start"])

    def derived(self, name: str, doc: dict) -> None:
        """Publisher thread: live reconstruction state from the progress events."""
        if name != "event" or "final" not in doc["data"]:
            return
        with self._lock:
            self.latest = dict(doc["data"])
            if not self.enabled:
                return
            postfix = {
                "iteration": doc["data"]["iteration"],
                "in engine": doc["data"]["n_frames"],
                "NLL": f"{doc['data']['poisson_nll']:.4g}",
            }
            if self._refine_bar is not None:
                done = doc["data"]["iteration"] - (self._stop_iteration or 0)
                self._refine_bar.n = max(0, min(done, self.refine))
                self._refine_bar.set_postfix(postfix, refresh=True)
            elif self._scan_bar is not None:
                self._scan_bar.set_postfix(postfix, refresh=True)

    def scan_done(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._scan_bar is not None:
                self._scan_bar.close()
            self._stop_iteration = int(self.latest.get("iteration", 0))
            self._refine_bar = self._tqdm(total=self.refine, desc="refinement", unit="it")

    def close(self) -> None:
        with self._lock:
            if self._refine_bar is not None:
                self._refine_bar.n = self.refine
                self._refine_bar.close()


def run_demo(options: DemoOptions) -> DemoResult:
    """Run the demo (see module docstring); returns where everything is."""
    import bluesky.plans as bp
    from bluesky import RunEngine
    from bluesky.callbacks.buffer import BufferingWrapper
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    from ..callback import PtychoCallback
    from ..metrics import snapshot_nrmse
    from ..sim.beamline import make_beamline
    from ..sim.hdf5_detector import fly_scan

    if options.detector not in DETECTORS:
        raise ValueError(f"detector: expected one of {DETECTORS}, got {options.detector!r}")
    if options.fly and options.detector != "hdf5":
        raise ValueError("fly scans need the hdf5 detector (--detector hdf5)")
    started = time.perf_counter()
    output = Path(options.output).resolve()
    detector_dir = output / "detector"
    detector_dir.mkdir(parents=True, exist_ok=True)
    beamline = make_beamline(options.frame_size, max_points=options.points, seed=options.seed)
    x, y = beamline.positions_um(options.points)
    beamline.exposure_s = options.exposure_s

    server = SimpleTiledServer(directory=output / "tiled", readable_storage=[detector_dir])
    client = None
    try:
        client = from_uri(server.uri)
        # Raw documents reach Tiled from a thread of their own: HTTP must not slow the scan.
        raw_writer = BufferingWrapper(TiledWriter(client, batch_size=10))
        derived_writer = TiledWriter(client, batch_size=1)
        progress = _Progress(options.points, options.refine_iterations, options.progress)

        def emit(name: str, doc: dict) -> None:  # publisher thread
            derived_writer(name, doc)
            progress.derived(name, doc)

        callback = PtychoCallback(
            emit,
            backend=options.backend,
            refine_iterations=options.refine_iterations,
            snapshot_interval_s=0.5,
            data_roots=[str(detector_dir)],
        )
        engine = RunEngine({})
        engine.subscribe(raw_writer)
        engine.subscribe(progress.raw)
        engine.subscribe(callback)

        if options.detector == "hdf5":
            detector = beamline.hdf5_detector(detector_dir)
            image_key = detector.name
        elif options.detector == "file":
            detector = beamline.file_detector(detector_dir)
            image_key = detector.name
        else:
            detector = beamline.inline_detector()
            image_key = detector.image.name
        progress.watch_image(image_key)
        if options.fly:
            md = beamline.metadata(image_key, x_key=f"{image_key}-x", y_key=f"{image_key}-y")
            plan = fly_scan(detector, x, y, exposure_s=options.exposure_s)
        else:
            md = beamline.metadata(image_key)
            plan = bp.list_scan([detector], beamline.sx, list(x), beamline.sy, list(y))
        scan_started = time.perf_counter()
        (raw_uid,) = engine(plan, ptycho=md, purpose="bluesky-ptycho demo")
        scan_s = time.perf_counter() - scan_started
        progress.scan_done()
        raw_writer.shutdown(wait=True)  # the raw run is complete in Tiled
        if not callback.wait(timeout=600):
            raise RuntimeError("the reconstruction did not finish within 600 s")
        progress.close()
        callback.close()
        result = callback.last_result
        if result is None or result.snapshot is None:
            reason = result.reason if result is not None else "no result"
            raise RuntimeError(f"the reconstruction failed: {reason}")

        derived = client[result.derived_uid]["primary"]
        arrays = {
            key: tuple(derived[key].shape)
            for key in ("object_amplitude", "object_phase", "probe_amplitude")
        }
        arrays[f"raw {image_key}"] = tuple(client[raw_uid]["primary"][image_key].shape)
        nrmse = snapshot_nrmse(result.snapshot, beamline.sample.object, beamline.sample.origin_m)
        scan_end = result.iterations - result.refine_iterations_done
        png = save_figure(result.snapshot, output / "demo.png", nrmse, scan_end)
        demo = DemoResult(
            tiled_uri=public_address(server.uri),
            web_uri=public_address(server.web_ui_link),
            raw_uid=raw_uid,
            derived_uid=str(result.derived_uid),
            nrmse=nrmse,
            png=png,
            iterations=result.iterations,
            frames=result.frames_ingested,
            scan_s=scan_s,
            total_s=time.perf_counter() - started,
            backend=str(result.snapshot.metrics.get("backend", options.backend)),
            exit_status=result.exit_status,
            reason=result.reason,
            tiled_arrays=arrays,
        )
        if options.serve:
            _serve_until_interrupted(demo, _write_key(output / "tiled", server.api_key))
        return demo
    finally:
        if client is not None:
            client.context.close()
        close_server(server)


def close_server(server: Any, timeout_s: float = 15.0) -> bool:
    """Stop a ``SimpleTiledServer`` without hanging; True if it stopped cleanly.

    Its uvicorn server waits, without a time limit, for connections and tasks to
    finish; once in a while one lingers (seen in tests) and ``close()`` blocks
    forever. After ``timeout_s`` this forces the exit, as Ctrl-C would.
    """
    closer = threading.Thread(target=server.close, name="tiled-close", daemon=True)
    closer.start()
    closer.join(timeout_s)
    if not closer.is_alive():
        return True
    logger.warning("the Tiled server did not stop within %.0f s: forcing it", timeout_s)
    uvicorn_server = getattr(server, "_server", None)  # tiled's ThreadedServer (uvicorn)
    if uvicorn_server is not None:
        uvicorn_server.force_exit = True
    closer.join(timeout_s)
    return False


def public_address(url: str) -> str:
    """``url`` without credentials: no ``user:password@``, no ``api_key``/token query values.

    What the demo prints and returns, so that a key never lands in a terminal log.
    """
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = [(k, v) for k, v in parse_qsl(parts.query) if k.lower() not in SECRET_QUERY_KEYS]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))


def _write_key(directory: Path, api_key: str) -> Path:
    """The API key in ``directory/api_key``, readable by the owner only."""
    path = directory / "api_key"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(api_key + "\n")
    return path


def _serve_until_interrupted(demo: DemoResult, key_file: Path) -> None:
    print(
        f"Tiled server running at {demo.web_uri} - press Ctrl-C to stop "
        f"(API key in {key_file}; add ?api_key=... to the address)"
    )
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def save_figure(
    snapshot: Any, path: Path, nrmse: float = math.nan, scan_end: int | None = None
) -> Path:
    """PNG of object amplitude and phase (covered region, cropped, global phase removed),
    probe amplitude, error curve.

    The error curve is the Poisson NLL per frame in the engine at each iteration;
    ``scan_end`` (iterations done when the scan ended) is marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    covered = snapshot.coverage >= 0.1
    rows, cols = np.nonzero(covered)
    window = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    obj = np.where(covered, snapshot.object, np.nan)[window]
    # Display only: the global phase is arbitrary; centre the phase on the covered mean.
    inside = np.isfinite(obj)
    obj = obj * np.exp(-1j * np.angle(np.sum(obj[inside])))
    history = [
        h.get("poisson_nll", np.nan) / max(h.get("n_frames", 1), 1)
        for h in snapshot.metrics.get("history", [])
    ]
    figure, axes = plt.subplots(2, 2, figsize=(10, 9))
    panels = [
        (axes[0, 0], np.abs(obj), "object amplitude", "gray"),
        (axes[0, 1], np.angle(obj), "object phase (rad)", "twilight"),
        (axes[1, 0], np.abs(snapshot.probe), "probe amplitude", "magma"),
    ]
    for ax, image, title, cmap in panels:
        shown = ax.imshow(image, cmap=cmap)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        figure.colorbar(shown, ax=ax, fraction=0.046)
    ax = axes[1, 1]
    ax.semilogy(np.arange(1, len(history) + 1), history)
    if scan_end is not None:
        ax.axvline(scan_end, color="gray", linestyle="--", label="scan ended")
        ax.legend()
    ax.set_xlabel("iteration")
    ax.set_ylabel("Poisson NLL per frame")
    ax.set_title("error curve")
    figure.suptitle(
        f"{snapshot.n_frames} frames, {snapshot.iteration} iterations, NRMSE {nrmse:.3f}"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
