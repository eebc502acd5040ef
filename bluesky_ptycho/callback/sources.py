"""Frames and positions from every place Bluesky puts them (worker thread).

The RunEngine thread hands over raw pieces; :class:`FrameAssembler` turns them
into ``(frames, x, y)`` batches for the engine:

* inline values (``event`` / ``event_page``): arrays and numbers, already copied;
* Resource/Datum references: read through a handler registry
  (:mod:`~bluesky_ptycho.callback.handlers`);
* StreamResource/StreamDatum ranges (HDF5): read with h5py, SWMR, rows
  ``indices.start:indices.stop`` (times the rows per index from the data key's
  shape) of ``parameters["dataset"]``. Fly scans have no events: the positions
  then come as StreamDatum too.

Images and positions are joined by (stream name, ``seq_num``), so they may arrive
in any order and from different mechanisms. A reference that cannot be read yet
(file not flushed, HDF5 file not yet created) is retried at every
:meth:`FrameAssembler.collect`; after :meth:`FrameAssembler.give_up` the
remaining ones count as failed, with a reason that says whether the file never
appeared or appeared and stayed unreadable. A file that exists but is not HDF5
(no signature) fails at once: it never will be readable. Every file is checked
by a :class:`~bluesky_ptycho.callback.paths.PathPolicy` before it is opened; a
refusal fails the points that need it and is kept in
:attr:`FrameAssembler.refusal` (the run then fails with it). Every point
with an image ends in exactly one of ``ingested``, ``failed`` or ``unmatched``.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .handlers import Handler
from .paths import PathPolicy, RefusedPath

logger = logging.getLogger(__name__)

#: failure reasons kept per run (the count is always exact)
MAX_REASONS = 20
#: the HDF5 format signature and where it may start (after a user block)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HDF5_SIGNATURE_OFFSETS = (0, 512, 1024, 2048, 4096)
#: how a reason starts when a file stayed unreadable until the end (file_timeout_s)
GAVE_UP = "still unreadable after the stop document and file_timeout_s"


@dataclass
class _DatumRef:
    stream: str
    key: str
    seq: int
    datum_id: str


@dataclass
class _Chunk:
    stream: str
    key: str
    stream_resource: str
    index_start: int
    index_stop: int
    seq_start: int
    rows_per_index: int


class NotReadyError(OSError):
    """External data that is not (yet) readable; retried later."""


class FrameAssembler:
    """Join images and positions of one run (see module docstring).

    image_key, x_key, y_key : data keys of the detector image and the positions.
    handlers : Resource spec -> handler class (event-model convention).
    paths : resolves and confines the files documents name (root_map included).
    """

    def __init__(
        self,
        image_key: str,
        x_key: str,
        y_key: str,
        handlers: Mapping[str, Handler],
        paths: PathPolicy | None = None,
    ) -> None:
        self.keys = (image_key, x_key, y_key)
        self.image_key = image_key
        self._handlers = dict(handlers)
        self._paths = paths or PathPolicy()
        self._stream_of: dict[str, str] = {}  # descriptor uid -> stream name
        self._shapes: dict[str, dict[str, list[int]]] = {}  # descriptor uid -> key -> shape
        self._values: dict[tuple[str, str], dict[int, Any]] = defaultdict(dict)
        self._failed_seqs: dict[str, set[int]] = defaultdict(set)
        self._seen: dict[tuple[str, str], set[int]] = defaultdict(set)  # seq_nums announced
        self._resources: dict[str, dict[str, Any]] = {}
        self._datums: dict[str, dict[str, Any]] = {}
        self._handler_cache: dict[str, Any] = {}
        self._stream_resources: dict[str, dict[str, Any]] = {}
        self._refs: list[_DatumRef] = []
        self._chunks: list[_Chunk] = []
        self._files: dict[str, Any] = {}
        self._giving_up = False
        self.frame_shape: tuple[int, int] | None = None
        self.announced = 0
        self.ingested = 0
        self.failed = 0
        self.unmatched = 0
        self.reasons: list[str] = []
        self.refusal: str | None = None  # the first refused file (security), if any

    # ------------------------------------------------------------ documents
    def add_descriptor(self, uid: str, stream: str, data_keys: Mapping[str, Any]) -> None:
        self._stream_of[uid] = stream
        self._shapes[uid] = {k: list(v.get("shape") or []) for k, v in data_keys.items()}
        shape = self._shapes[uid].get(self.image_key)
        if self.frame_shape is None and shape and len(shape) >= 2 and all(shape[-2:]):
            self.frame_shape = (int(shape[-2]), int(shape[-1]))

    def add_values(self, descriptor: str, seq_nums: list[int], columns: Mapping[str, list]) -> None:
        """Event columns: arrays / numbers (inline) or datum ids (str)."""
        stream = self._stream_of.get(descriptor)
        if stream is None:
            return
        for key, column in columns.items():
            values = self._values[(stream, key)]
            seen = self._seen[(stream, key)]
            for seq, value in zip(seq_nums, column, strict=True):
                if key == self.image_key:
                    self.announced += 1
                if seq in seen:  # keep the first; a repeated image counts as failed
                    if key == self.image_key:
                        self.lose(
                            1, f"{key}: seq_num {seq} of stream {stream!r} repeated; kept the first"
                        )
                    continue
                seen.add(seq)
                if isinstance(value, str):
                    self._refs.append(_DatumRef(stream, key, seq, value))
                    values[seq] = None
                else:
                    values[seq] = value

    def add_resource(self, doc: Mapping[str, Any]) -> None:
        self._resources[doc["uid"]] = dict(doc)

    def add_datum(self, datum_id: str, resource: str, datum_kwargs: Mapping[str, Any]) -> None:
        self._datums[datum_id] = {"resource": resource, "datum_kwargs": dict(datum_kwargs)}

    def add_stream_resource(self, doc: Mapping[str, Any]) -> None:
        if doc.get("data_key") in self.keys:
            self._stream_resources[doc["uid"]] = dict(doc)

    def add_stream_datum(self, doc: Mapping[str, Any]) -> None:
        sres = self._stream_resources.get(doc["stream_resource"])
        stream = self._stream_of.get(doc["descriptor"])
        if sres is None or stream is None:
            return
        key = sres["data_key"]
        start, stop = int(doc["indices"]["start"]), int(doc["indices"]["stop"])
        seq_start = int(doc.get("seq_nums", {}).get("start") or 0) or start + 1
        shape = self._shapes[doc["descriptor"]].get(key, [])
        per_index = shape[:-2] if key == self.image_key else shape
        rows = int(np.prod(per_index)) if per_index else 1
        if key == self.image_key:
            self.announced += stop - start
        values = self._values[(stream, key)]
        for seq in range(seq_start, seq_start + stop - start):
            values[seq] = None
        self._chunks.append(_Chunk(stream, key, sres["uid"], start, stop, seq_start, max(rows, 1)))

    # -------------------------------------------------------------- reading
    def give_up(self) -> None:
        """From now on, references that cannot be read count as failed."""
        self._giving_up = True

    @property
    def pending_reads(self) -> int:
        return len(self._refs) + len(self._chunks)

    def _fail(self, stream: str, seqs: range | list[int], reason: str) -> None:
        self._failed_seqs[stream].update(seqs)
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)
        logger.warning("ptycho: %s", reason)

    def _refuse(self, stream: str, seqs: range | list[int], error: RefusedPath) -> None:
        self._fail(stream, seqs, str(error))
        self.refusal = self.refusal or str(error)

    def skip(self, count: int, reason: str) -> None:
        """``count`` joined points are not reconstructed (counted as failed, with the reason)."""
        self.ingested -= count
        self.lose(count, reason)

    def lose(self, count: int, reason: str) -> None:
        """``count`` announced images will never join (counted as failed, with the reason)."""
        self.failed += count
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)
        logger.warning("ptycho: %s", reason)

    def _read_ref(self, ref: _DatumRef) -> Any:
        datum = self._datums.get(ref.datum_id)
        if datum is None:
            raise NotReadyError(f"datum {ref.datum_id} not received")
        resource = self._resources.get(datum["resource"])
        if resource is None:
            raise NotReadyError(f"resource {datum['resource']} not received")
        handler = self._handler_cache.get(resource["uid"])
        if handler is None:
            spec = resource.get("spec")
            handler_class = self._handlers.get(spec)
            if handler_class is None:
                raise LookupError(
                    f"no handler for Resource spec {spec!r}: pass "
                    f"PtychoCallback(handler_registry={{{spec!r}: HandlerClass}})"
                )
            path = self._paths.resource_path(
                resource.get("root", "") or "",
                str(resource["resource_path"]),
                f"Resource {resource['uid']} (spec {spec!r})",
            )
            handler = handler_class(path, **resource.get("resource_kwargs", {}))
            self._handler_cache[resource["uid"]] = handler
        return handler(**datum["datum_kwargs"])

    def _resolve_refs(self) -> None:
        remaining: list[_DatumRef] = []
        blocked = False
        for ref in self._refs:
            if blocked:
                remaining.append(ref)
                continue
            try:
                value = self._read_ref(ref)
            except RefusedPath as error:
                self._refuse(ref.stream, [ref.seq], error)
                continue
            except LookupError as error:
                self._fail(ref.stream, [ref.seq], f"{ref.key}: {error}")
                continue
            except Exception as error:  # file not there yet, truncated, ...
                if self._giving_up:
                    reason = f"{ref.key} datum {ref.datum_id}: {GAVE_UP}: {error}"
                    self._fail(ref.stream, [ref.seq], reason)
                    continue
                blocked = True  # files are written in order: retry this and later ones
                remaining.append(ref)
                continue
            self._values[(ref.stream, ref.key)][ref.seq] = value
        self._refs = remaining

    def _read_chunk(self, chunk: _Chunk) -> np.ndarray:
        sres = self._stream_resources[chunk.stream_resource]
        if sres.get("mimetype") != "application/x-hdf5":
            raise LookupError(f"unsupported StreamResource mimetype {sres.get('mimetype')!r}")
        path = self._paths.uri_path(str(sres["uri"]), f"StreamResource {sres['uid']}")
        handle = self._files.get(path)
        if handle is None:
            handle = self._files[path] = _open_hdf5(path)
        try:
            data = handle[sres["parameters"]["dataset"]]
        except KeyError as error:
            raise NotReadyError(f"{path}: no dataset {sres['parameters']['dataset']}") from error
        row_stop = chunk.index_stop * chunk.rows_per_index
        if data.shape[0] < row_stop:
            data.refresh()
            if data.shape[0] < row_stop:
                raise NotReadyError(f"{path}: {data.shape[0]} rows written, {row_stop} needed")
        block = np.asarray(data[chunk.index_start * chunk.rows_per_index : row_stop])
        n_points = chunk.index_stop - chunk.index_start
        return block.reshape(
            n_points,
            *([chunk.rows_per_index] if chunk.rows_per_index > 1 else []),
            *block.shape[1:],
        )

    def _resolve_chunks(self) -> None:
        remaining: list[_Chunk] = []
        for chunk in self._chunks:
            seqs = range(chunk.seq_start, chunk.seq_start + chunk.index_stop - chunk.index_start)
            try:
                block = self._read_chunk(chunk)
            except RefusedPath as error:
                self._refuse(chunk.stream, seqs, error)
                continue
            except LookupError as error:
                self._fail(chunk.stream, seqs, f"{chunk.key}: {error}")
                continue
            except Exception as error:
                if self._giving_up:
                    self._fail(chunk.stream, seqs, f"{chunk.key}: {GAVE_UP}: {error}")
                else:
                    remaining.append(chunk)
                continue
            values = self._values[(chunk.stream, chunk.key)]
            for seq, value in zip(seqs, block, strict=True):
                values[seq] = value
        self._chunks = remaining

    # -------------------------------------------------------------- joining
    def collect(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Read what can be read; return the points complete so far as (frames, x, y).

        frames : (n, M, N) as recorded; x, y : (n,) motor readings.
        """
        if self._refs:
            self._resolve_refs()
        if self._chunks:
            self._resolve_chunks()
        frames: list[np.ndarray] = []
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        for (stream, key), images in list(self._values.items()):
            if key != self.image_key:
                continue
            x_values = self._values.get((stream, self.keys[1]), {})
            y_values = self._values.get((stream, self.keys[2]), {})
            failed = self._failed_seqs.get(stream, set())
            for seq in sorted(images):
                if seq in failed:
                    del images[seq]
                    self.failed += 1
                    continue
                image, x, y = images[seq], x_values.get(seq), y_values.get(seq)
                if image is None or x is None or y is None:
                    continue
                del images[seq]
                x_values.pop(seq)
                y_values.pop(seq)
                point = self._point(stream, seq, image, x, y)
                if point is None:
                    self.failed += 1
                    continue
                frames.append(point[0])
                xs.append(point[1])
                ys.append(point[2])
        if not frames:
            return None
        self.ingested += len(frames)
        return np.concatenate(frames), np.concatenate(xs), np.concatenate(ys)

    def _point(
        self, stream: str, seq: int, image: Any, x: Any, y: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """One point as (k, M, N) frames and (k,) positions, or None (reason recorded)."""
        stack = np.asarray(image)
        if stack.dtype.kind not in "biuf":
            self._fail(
                stream,
                [],
                f"{self.image_key}[{seq}]: image of dtype {stack.dtype} is not counts "
                f"(integers or floats); check the detector's data type",
            )
            return None
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim != 3:
            self._fail(
                stream, [], f"{self.image_key}[{seq}]: image of shape {stack.shape} is not 2-D"
            )
            return None
        if self.frame_shape is None:
            self.frame_shape = (int(stack.shape[1]), int(stack.shape[2]))
        if tuple(stack.shape[1:]) != self.frame_shape:
            self._fail(
                stream,
                [],
                f"{self.image_key}[{seq}]: frame shape {tuple(stack.shape[1:])} "
                f"differs from {self.frame_shape}",
            )
            return None
        n = stack.shape[0]
        try:
            x_read = np.broadcast_to(np.asarray(x, dtype=np.float64).reshape(-1), (n,))
            y_read = np.broadcast_to(np.asarray(y, dtype=np.float64).reshape(-1), (n,))
        except ValueError:
            self._fail(stream, [], f"seq {seq}: positions {x!r}, {y!r} do not match {n} frame(s)")
            return None
        if not (np.isfinite(x_read).all() and np.isfinite(y_read).all()):
            self._fail(stream, [], f"seq {seq}: position x={x!r}, y={y!r} is not finite")
            return None
        return stack, x_read, y_read

    def finish(self) -> None:
        """Count the images still waiting for positions as unmatched; close files."""
        for (stream, key), images in self._values.items():
            if key != self.image_key:
                continue
            failed = self._failed_seqs.get(stream, set())
            for seq in images:
                if seq in failed:
                    self.failed += 1
                else:
                    self.unmatched += 1
            if (
                images
                and len(images) > len(failed & set(images))
                and len(self.reasons) < MAX_REASONS
            ):
                self.reasons.append(
                    f"stream {stream!r}: images without positions at the end of the run"
                )
            images.clear()
        self.close()

    def close(self) -> None:
        for handle in self._files.values():
            try:
                handle.close()
            except Exception:  # already closed
                pass
        self._files.clear()
        for handler in self._handler_cache.values():
            close = getattr(handler, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass
        self._handler_cache.clear()


def _open_hdf5(path: str) -> object:
    """Open an HDF5 file read-only (SWMR), telling "not yet" from "never" apart.

    NotReadyError (retried) when the file does not exist yet or cannot be
    opened yet; LookupError (the points fail at once) when it exists and holds
    data but no HDF5 signature: it never will be readable.
    """
    import h5py

    if not os.path.exists(path):
        raise NotReadyError(f"{path}: file does not exist (yet); check the detector's write path")
    try:
        return h5py.File(path, "r", swmr=True)
    except OSError as error:
        if not _may_become_hdf5(path):
            raise LookupError(
                f"{path}: not an HDF5 file (no HDF5 signature); the StreamResource "
                f"names the wrong file"
            ) from error
        raise NotReadyError(f"{path}: exists but is not readable yet ({error})") from error


def _may_become_hdf5(path: str) -> bool:
    """False when the file is long enough to show a signature and shows none."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HDF5_SIGNATURE_OFFSETS[-1] + len(HDF5_SIGNATURE))
    except OSError:
        return True
    if not head.strip(b"\0"):
        return True  # empty, or zeros only: the writer has not flushed the superblock yet
    size = len(HDF5_SIGNATURE)
    return any(head[o : o + size] == HDF5_SIGNATURE for o in HDF5_SIGNATURE_OFFSETS)
