"""``TiledFollower``: follow a run's Tiled live nodes through Tiled subscriptions.

One subscription to the ``<path>`` container (no polling): a
``container-child-metadata-updated`` message for the followed run means its live
arrays changed (the writer updates the metadata after the arrays, see
:mod:`~bluesky_ptycho.outputs.tiled_nodes`), so the follower reads them and
hands a :class:`~bluesky_ptycho.viewer.state.ViewState` to ``on_state``; a
``container-child-created`` message is a new run (followed when ``follow`` is
set, or when waiting for the first run).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from .state import ViewState, state_from_node

logger = logging.getLogger(__name__)


class TiledFollower:
    """Follow one run (``uid``), the newest (``latest``), and with ``follow`` every next run.

    client : a Tiled client (root); ``path`` is where the live-node containers are.
    on_state : called with each new picture (from a subscription worker thread,
        one call at a time).
    """

    def __init__(
        self,
        client: Any,
        on_state: Callable[[ViewState], None],
        path: str = "ptycho",
        uid: str | None = None,
        latest: bool = False,
        follow: bool = False,
    ) -> None:
        node = client
        for key in path.strip("/").split("/"):
            if key not in node:
                raise ValueError(
                    f"no node {path!r} on {client.uri}: no run has written live nodes there yet "
                    "(PtychoCallback(tiled=..., tiled_path=...)); pass --path if it is elsewhere"
                )
            node = node[key]
        self.root = node
        self.on_state = on_state
        self.follow = follow
        self.current = uid
        if uid is None and latest:
            keys = list(self.root)
            self.current = keys[-1] if keys else None
        if uid is not None and uid not in self.root:
            raise ValueError(f"no run {uid!r} under {path!r} (is its uid the raw run's?)")
        self.done = threading.Event()
        self.pictures = 0
        self._iteration: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._subscription: Any = None

    def start(self) -> None:
        """Subscribe (in a thread) and draw the followed run's current state."""
        warnings.filterwarnings(  # tiled 0.2.20's websocket use, in its thread
            "ignore", "connect\\(\\) must be used as a context manager", DeprecationWarning
        )
        sub = self.root.subscribe()
        sub.child_created.add_callback(self._on_created)  # held weakly: bound methods of self
        sub.child_metadata_updated.add_callback(self._on_metadata)
        self._subscription = sub
        sub.start_in_thread()
        if self.current is not None:
            self._show(self.current)

    def wait(self, timeout: float | None = None) -> bool:
        """Until the followed run ends (never with ``follow``); False on timeout."""
        return self.done.wait(timeout)

    def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.disconnect()

    # ------------------------------------------------------------ updates
    def _on_created(self, update: Any) -> None:
        with self._lock:
            if self.current is None or self.follow:
                self.current = update.key
                logger.info("following run %s", update.key)

    def _on_metadata(self, update: Any) -> None:
        if update.key == self.current:
            self._show(update.key)

    def _read(self, key: str, attempts: int = 3, pause_s: float = 0.3) -> tuple[ViewState, str]:
        """The run's state; retried, since a read can meet arrays being replaced (new shape)."""
        for attempt in range(attempts):
            try:
                node = self.root[key]
                status = str(node.metadata.get("status", "running"))
                live = node["live"] if "live" in node else None
                if live is None or "object_amplitude" not in live:
                    raise LookupError("no image yet")
                return state_from_node(node), status
            except LookupError:
                raise
            except Exception:
                if attempt + 1 == attempts:
                    raise
                time.sleep(pause_s)
        raise AssertionError("unreachable")

    def _show(self, key: str) -> None:
        with self._lock:
            try:
                state, status = self._read(key)
            except LookupError:
                return  # no image yet
            except Exception:
                logger.exception("could not read the live nodes of run %s", key)
                return
            seen = (state.iteration, status)
            if self._iteration.get(key) == seen:
                return  # nothing new (e.g. a metadata-only update)
            self._iteration[key] = seen
            self.pictures += 1
            self.on_state(state)
            if status != "running":
                if self.follow:
                    self.current = None
                else:
                    self.done.set()
