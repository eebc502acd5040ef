"""What travels on the bus: msgpack with msgpack-numpy arrays, bounded, data only.

Encoding is msgpack-numpy's layout (``{b"nd": True, b"type": "<f4", b"kind": b"",
b"shape": [...], b"data": <bytes>}``), so any msgpack-numpy reader (bluesky-kafka's
default consumers too) can read it. Decoding does *not* use msgpack-numpy's hook:
that one unpickles object arrays (``kind == b"O"``), and bluesky-kafka patches
msgpack globally with it on import. :class:`Codec` uses msgpack's own
implementation with a hook that builds only plain numeric/structured arrays.

Every payload is checked before decoding: larger than ``max_message_bytes``
-> refused ("oversized"); a pickle (protocol 2-5 header) -> refused ("pickle")
unless ``allow_pickle``; anything else that is not a well-formed document ->
refused ("malformed"). Refusals raise :class:`MessageRefused` and are counted
in :class:`TransportStats`; the caller drops the message and keeps serving.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack_numpy
import numpy as np

try:  # msgpack's implementation itself: msgpack-numpy's patch() cannot replace it
    from msgpack._cmsgpack import Packer, unpackb
except ImportError:  # pragma: no cover - pure-Python msgpack
    from msgpack.fallback import Packer, unpackb

logger = logging.getLogger(__name__)

#: default bound on one message (an event with one 2048 x 2048 float64 frame is 32 MiB)
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20

#: document names of event-model (bluesky's DocumentNames)
DOCUMENT_NAMES = frozenset(
    (
        "start",
        "descriptor",
        "event",
        "event_page",
        "resource",
        "datum",
        "datum_page",
        "stream_resource",
        "stream_datum",
        "stop",
    )
)

REFUSAL_KINDS = ("oversized", "pickle", "malformed")


class MessageRefused(ValueError):
    """A message that is not decoded (``kind``: one of :data:`REFUSAL_KINDS`)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class TransportStats:
    """Counters of one :class:`Codec` (thread-safe increments)."""

    messages: int = 0
    bytes: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSAL_KINDS, 0))
    last_refusal: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, size: int) -> None:
        with self._lock:
            self.messages += 1
            self.bytes += size

    def refuse(self, error: MessageRefused) -> None:
        with self._lock:
            self.refused[error.kind] += 1
            self.last_refusal = str(error)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "messages": self.messages,
                "bytes": self.bytes,
                "refused": dict(self.refused),
                "last_refusal": self.last_refusal,
            }


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise TypeError(
            f"an object array (dtype {obj.dtype}) cannot travel data-only: "
            "send numbers, strings or plain arrays"
        )
    encoded = msgpack_numpy.encode(obj)
    if encoded is obj:
        raise TypeError(f"cannot serialize {type(obj).__name__!r} with msgpack")
    return encoded


def pack(obj: Any) -> bytes:
    """msgpack bytes of ``obj`` (NumPy arrays and scalars as msgpack-numpy maps)."""
    return Packer(default=_encode_default, use_bin_type=True).pack(obj)


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _dtype(descr: Any, kind: Any) -> np.dtype:
    if kind == b"O":
        raise MessageRefused("pickle", "an object array (pickled inside msgpack-numpy) refused")
    if kind == b"V":
        descr = [tuple(_text(t) for t in d) for d in descr]
    dtype = np.dtype(_text(descr) if not isinstance(descr, list) else descr)
    if dtype.hasobject:
        raise MessageRefused("pickle", f"an array of dtype {dtype} (Python objects) refused")
    return dtype


def _decode_hook(obj: dict) -> Any:
    """msgpack-numpy maps -> arrays, without any path to pickle."""
    if b"nd" in obj:
        try:
            dtype = _dtype(obj[b"type"], obj.get(b"kind", b""))
            data = obj[b"data"]
            if obj[b"nd"] is True:
                return np.frombuffer(data, dtype=dtype).reshape(obj[b"shape"])
            return np.frombuffer(data, dtype=dtype)[0]
        except MessageRefused:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise MessageRefused("malformed", f"bad msgpack-numpy array: {error}") from error
    if b"complex" in obj:
        try:
            return complex(_text(obj[b"data"]))
        except (KeyError, TypeError, ValueError) as error:
            raise MessageRefused("malformed", f"bad msgpack-numpy complex: {error}") from error
    return obj


def looks_like_pickle(payload: bytes) -> bool:
    """True for a pickle of protocol 2-5 (b"\\x80" + protocol byte)."""
    return len(payload) > 1 and payload[0] == 0x80 and 2 <= payload[1] <= 5


class Codec:
    """Bounded, data-only decoding (see module docstring); counts into :attr:`stats`."""

    def __init__(
        self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, allow_pickle: bool = False
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes: expected >= 1, got {max_message_bytes!r}")
        self.max_message_bytes = int(max_message_bytes)
        self.allow_pickle = allow_pickle
        self.stats = TransportStats()
        self.encode = pack

    def _decode(self, payload: bytes) -> Any:
        size = len(payload)
        if size > self.max_message_bytes:
            raise MessageRefused(
                "oversized",
                f"a message of {size} bytes refused (limit {self.max_message_bytes}: "
                "raise --max-message-bytes if such documents are expected)",
            )
        if looks_like_pickle(payload):
            if not self.allow_pickle:
                raise MessageRefused(
                    "pickle",
                    "a pickle message refused: install the msgpack serializer on the "
                    "publisher (bluesky_ptycho.publish) or start serve with --unsafe-pickle",
                )
            return pickle.loads(payload)  # noqa: S301 - explicitly allowed by the operator
        try:
            return unpackb(payload, object_hook=_decode_hook, raw=False)
        except MessageRefused:
            raise
        except Exception as error:  # msgpack raises several unrelated types
            raise MessageRefused(
                "malformed", f"not a msgpack document: {type(error).__name__}: {error}"
            ) from error

    def _checked(self, payload: bytes, decode: Any) -> Any:
        try:
            value = decode(payload)
        except MessageRefused as error:
            self.stats.refuse(error)
            logger.warning("serve: %s", error)
            raise
        self.stats.count(len(payload))
        return value

    def decode_document(self, payload: bytes) -> dict:
        """One document (the 0MQ payload after prefix and name)."""

        def decode(data: bytes) -> dict:
            doc = self._decode(data)
            if not isinstance(doc, Mapping):
                raise MessageRefused("malformed", f"expected a document, got {type(doc).__name__}")
            return dict(doc)

        return self._checked(payload, decode)

    def decode_message(self, payload: bytes) -> tuple[str, dict]:
        """``(name, document)`` (a bluesky-kafka message value)."""

        def decode(data: bytes) -> tuple[str, dict]:
            message = self._decode(data)
            if (
                not isinstance(message, (list, tuple))
                or len(message) != 2
                or message[0] not in DOCUMENT_NAMES
                or not isinstance(message[1], Mapping)
            ):
                raise MessageRefused("malformed", "expected a [name, document] pair")
            return str(message[0]), dict(message[1])

        return self._checked(payload, decode)


class RunKeys:
    """The run (start uid) each document belongs to: the Kafka key that keeps a run
    on one partition, hence in order and with one consumer of a group.

    Documents that name no run directly (event, datum, stream_datum...) are
    traced through their descriptor / resource / stream resource; anything
    unknown belongs to the latest start.
    """

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}  # descriptor/resource/stream_resource uid -> run uid
        self._latest = ""

    def key(self, name: str, doc: Mapping[str, Any]) -> str:
        """The run uid of document ``name``."""
        if name == "start":
            self._latest = str(doc["uid"])
            return self._latest
        run = doc.get("run_start")
        if run is None:
            parent = doc.get("descriptor") or doc.get("resource") or doc.get("stream_resource")
            run = self._owner.get(str(parent), self._latest)
        run = str(run)
        if name in ("descriptor", "resource", "stream_resource"):
            self._owner[str(doc["uid"])] = run
        elif name == "stop":
            self._owner = {k: v for k, v in self._owner.items() if v != run}
        return run
