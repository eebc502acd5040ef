"""Replay a stored raw run through a :class:`~bluesky_ptycho.callback.PtychoCallback`.

:func:`replay` takes either

* a stored run from Tiled (``client[uid]``, a ``BlueskyRun``): it reads
  ``run.metadata["start"]``, the image array node (``run[stream][image_key]``) in
  chunks of ``chunk_frames`` frames - the next chunk is read on a helper thread
  while the callback works on the current one - and the positions from the
  stream's ``x_key`` / ``y_key`` columns, and feeds the callback a start
  document (the stored one, same uid), one descriptor, one ``event_page`` per
  chunk and a stop document;
* or any iterable of ``(name, doc)`` pairs (e.g. ``run.documents()`` of
  databroker 2 when the server exports json-seq): fed as they come.

``settings`` override the stored start document's ``ptycho`` dict (the stored
documents themselves are not changed). The derived run goes wherever the
callback's ``emit`` sends it: with a ``TiledWriter`` on the same server it is
stored next to the raw run (its ``derived_from`` is the raw uid).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from event_model import compose_run

from .callback.settings import check_keys


@dataclass
class ReplayResult:
    """What a replay did; ``result`` is the callback's :class:`RunResult` (None if not waited)."""

    raw_uid: str
    frames: int
    read_s: float
    total_s: float
    result: Any = None

    @property
    def read_frames_per_s(self) -> float:
        """Frames read from the store (and handed to the callback) per second."""
        return self.frames / self.read_s if self.read_s > 0 else float("nan")

    @property
    def frames_per_s(self) -> float:
        """Frames read and reconstructed (refinement included) per second of wall time."""
        return self.frames / self.total_s if self.total_s > 0 else float("nan")

    def summary(self) -> str:
        status = "not waited for"
        if self.result is not None:
            status = f"{self.result.exit_status}, {self.result.iterations} iterations"
        return (
            f"replayed {self.frames} frames of run {self.raw_uid}: read at "
            f"{self.read_frames_per_s:.0f} frames/s ({self.read_s:.1f} s), read and "
            f"reconstructed at {self.frames_per_s:.0f} frames/s ({self.total_s:.1f} s); "
            f"reconstruction: {status}"
        )


def _is_stored_run(source: Any) -> bool:
    return (
        hasattr(source, "metadata")
        and hasattr(source, "__getitem__")
        and not isinstance(source, (list, tuple))
    )


def start_with(start: Mapping[str, Any], settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of a raw start document whose ``ptycho`` dict has ``settings`` on top."""
    settings = dict(settings or {})
    check_keys(settings, "replay settings")
    doc = dict(start)
    stored = doc.get("ptycho")
    doc["ptycho"] = {**(stored if isinstance(stored, Mapping) else {}), **settings}
    return doc


def replay(
    source: Any,
    callback: Any,
    *,
    settings: Mapping[str, Any] | None = None,
    max_frames: int | None = None,
    chunk_frames: int = 256,
    stream: str = "primary",
    progress: bool = False,
    wait: bool = True,
    timeout_s: float | None = None,
) -> ReplayResult:
    """Feed a stored run (or a document iterable) to ``callback`` (see module docstring).

    max_frames : replay only the first N frames (stored runs).
    progress : show a tqdm bar of the frames read.
    wait : wait for the reconstruction (``callback.wait``) and include it in ``total_s``.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames: expected >= 1, got {chunk_frames!r}")
    started = time.perf_counter()
    if _is_stored_run(source):
        raw_uid, frames = _feed_stored(
            source, callback, settings, max_frames, chunk_frames, stream, progress
        )
    else:
        raw_uid, frames = _feed_documents(source, callback, settings)
    read_s = time.perf_counter() - started
    result = None
    if wait:
        if not callback.wait(timeout=timeout_s):
            raise TimeoutError(f"replay: the reconstruction did not finish within {timeout_s} s")
        result = callback.last_result
    return ReplayResult(raw_uid, frames, read_s, time.perf_counter() - started, result)


def _feed_documents(
    documents: Iterable[tuple[str, dict]], callback: Any, settings: Mapping[str, Any] | None
) -> tuple[str, int]:
    raw_uid, frames = "", 0
    for name, doc in documents:
        if name == "start":
            raw_uid = doc["uid"]
            doc = start_with(doc, settings)
        elif name == "event":
            frames += 1
        elif name == "event_page":
            frames += len(doc["seq_num"])
        elif name == "stream_datum":
            frames += int(doc["indices"]["stop"]) - int(doc["indices"]["start"])
        callback(name, doc)
    if not raw_uid:
        raise ValueError("replay: the documents had no start document")
    return raw_uid, frames


def _feed_stored(
    run: Any,
    callback: Any,
    settings: Mapping[str, Any] | None,
    max_frames: int | None,
    chunk_frames: int,
    stream: str,
    progress: bool,
) -> tuple[str, int]:
    stored_start = dict(run.metadata["start"])
    start = start_with(stored_start, settings)
    ptycho = {**getattr(callback, "settings", {}), **start["ptycho"]}
    keys = [ptycho.get(k) for k in ("image_key", "x_key", "y_key")]
    if not all(isinstance(k, str) for k in keys):
        raise ValueError(
            "replay: image_key, x_key and y_key must be known: give them as settings "
            "(e.g. --set image_key=det_image) when the stored start document lacks them"
        )
    image_key, x_key, y_key = keys
    node = run[stream]
    missing = [k for k in keys if k not in node]
    if missing:
        raise ValueError(
            f"replay: run {stored_start['uid']} stream {stream!r} has no {', '.join(missing)}; "
            f"it has {', '.join(list(node))}"
        )
    images = node[image_key]
    x = np.asarray(node[x_key].read(), dtype=np.float64)
    y = np.asarray(node[y_key].read(), dtype=np.float64)
    n = min(int(images.shape[0]), len(x), len(y))
    if max_frames is not None:
        n = min(n, int(max_frames))
    frame_shape = [int(s) for s in images.shape[1:]]
    metadata = {k: v for k, v in start.items() if k not in ("uid", "time")}
    bundle = compose_run(uid=start["uid"], time=start.get("time"), metadata=metadata)
    descriptor = bundle.compose_descriptor(
        name=stream,
        data_keys={
            image_key: {
                "source": "replay",
                "dtype": "array",
                "shape": frame_shape,
                "dtype_numpy": np.dtype(images.dtype).str,
            },
            x_key: {"source": "replay", "dtype": "number", "shape": []},
            y_key: {"source": "replay", "dtype": "number", "shape": []},
        },
    )
    callback("start", bundle.start_doc)
    callback("descriptor", descriptor.descriptor_doc)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="replay", unit="frame")
    bounds = [(i, min(i + chunk_frames, n)) for i in range(0, n, chunk_frames)]
    with ThreadPoolExecutor(1, thread_name_prefix="ptycho-replay-read") as reader:
        pending = reader.submit(images.read, slice(*bounds[0])) if bounds else None
        for index, (lo, hi) in enumerate(bounds):
            assert pending is not None
            chunk = np.asarray(pending.result())
            if index + 1 < len(bounds):
                pending = reader.submit(images.read, slice(*bounds[index + 1]))
            now = time.time()
            data = {image_key: chunk, x_key: x[lo:hi], y_key: y[lo:hi]}
            page = descriptor.compose_event_page(
                data=data,
                timestamps={k: [now] * (hi - lo) for k in data},
                seq_num=list(range(lo + 1, hi + 1)),
                validate=False,
            )
            callback("event_page", page)
            if bar is not None:
                bar.update(hi - lo)
    if bar is not None:
        bar.close()
    callback("stop", bundle.compose_stop(exit_status="success"))
    return start["uid"], n
