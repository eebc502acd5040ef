"""0MQ: documents from a ``bluesky-0MQ-proxy`` through bluesky's ``RemoteDispatcher``.

The dispatcher runs on an event loop this module owns, so :meth:`ZmqSource.interrupt`
(safe from a signal handler or another thread) cancels its task between two messages.
bluesky's dispatcher drops a message whose payload cannot be decoded (our
:class:`~.transport.Codec` has counted it) and keeps going; a message with an
unknown document name ends its loop with a KeyError, which is counted as
malformed here and answered with a fresh dispatcher (messages that arrive in
the few milliseconds in between are missed: 0MQ PUB/SUB does not buffer for an
absent subscriber).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from .transport import Codec, MessageRefused

logger = logging.getLogger(__name__)

Dispatch = Callable[[str, dict], None]


class ZmqSource:
    """Consume documents from a proxy's out-address (``host:port``)."""

    def __init__(self, address: str, codec: Codec, prefix: bytes = b"") -> None:
        self.address = address
        self.codec = codec
        self.prefix = prefix
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def describe(self) -> str:
        return f"0MQ proxy {self.address}"

    def run(self, dispatch: Dispatch, idle: Callable[[], None] | None = None) -> None:
        """Dispatch documents until :meth:`interrupt` (blocks).

        idle : not called (bluesky's dispatcher has no hook between messages).
        """
        from bluesky.callbacks.zmq import RemoteDispatcher

        while not self._stopping.is_set():
            loop = asyncio.new_event_loop()
            dispatcher = RemoteDispatcher(
                self.address,
                prefix=self.prefix,
                loop=loop,
                deserializer=self.codec.decode_document,
            )
            dispatcher.subscribe(dispatch)
            with self._lock:
                self._loop = loop
            if self._stopping.is_set():
                loop.close()
                return
            try:
                dispatcher.start()
            except KeyError as error:  # an unknown document name ends bluesky's loop
                self.codec.stats.refuse(
                    MessageRefused("malformed", f"unknown document name {error}")
                )
                logger.warning("serve: a message with an unknown document name %s refused", error)
            except asyncio.CancelledError:
                if not self._stopping.is_set():  # interrupt() cancels the dispatcher's task
                    raise
            finally:
                with self._lock:
                    self._loop = None

    def interrupt(self) -> None:
        """Stop :meth:`run` (thread- and signal-safe)."""
        self._stopping.set()
        with self._lock:
            loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_cancel_tasks, loop)


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


class ZmqRepublisher:
    """Derived documents to a proxy's in-address under their own prefix."""

    def __init__(self, address: str, prefix: bytes = b"ptycho") -> None:
        from ..publish import zmq_publisher

        self.address = address
        self._publisher = zmq_publisher(address, prefix=prefix)

    def __call__(self, name: str, doc: dict) -> None:
        self._publisher(name, doc)

    def close(self) -> None:
        self._publisher.close()
