"""Helpers shared by the callback tests (not a test module)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from event_model import DocumentNames, pack_event_page, schema_validators

#: generous bound for waiting on the worker (tests must not hang)
WAIT_S = 120.0


class Recorder:
    """Thread-safe emit sink: ``recorder(name, doc)`` keeps (name, doc) pairs."""

    def __init__(self) -> None:
        self.docs: list[tuple[str, dict]] = []
        self._lock = threading.Lock()

    def __call__(self, name: str, doc: dict) -> None:
        with self._lock:
            self.docs.append((name, doc))

    def runs(self) -> dict[str, list[tuple[str, dict]]]:
        """Documents grouped by derived run uid, in emission order."""
        by_run: dict[str, list[tuple[str, dict]]] = {}
        descriptors: dict[str, str] = {}
        for name, doc in self.docs:
            if name == "start":
                uid = doc["uid"]
            elif name == "descriptor":
                uid = doc["run_start"]
                descriptors[doc["uid"]] = uid
            elif name == "stop":
                uid = doc["run_start"]
            else:
                uid = descriptors[doc["descriptor"]]
            by_run.setdefault(uid, []).append((name, doc))
        return by_run

    def of(self, raw_uid: str) -> list[tuple[str, dict]]:
        """The derived run of raw run ``raw_uid`` (exactly one expected)."""
        found = [docs for docs in self.runs().values() if docs[0][1].get("derived_from") == raw_uid]
        assert len(found) == 1, f"expected one derived run of {raw_uid}, found {len(found)}"
        return found[0]


def stop_of(docs: list[tuple[str, dict]]) -> dict:
    assert docs[-1][0] == "stop", [n for n, _ in docs]
    return docs[-1][1]


def events_of(docs: list[tuple[str, dict]], stream: str) -> list[dict]:
    uids = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == stream}
    return [d for n, d in docs if n == "event" and d["descriptor"] in uids]


def check_derived_run(docs: list[tuple[str, dict]]) -> None:
    """Every document schema-valid; start first, stop last, descriptors before events."""
    names = [n for n, _ in docs]
    assert names[0] == "start" and names[-1] == "stop" and names.count("stop") == 1, names
    start_uid = docs[0][1]["uid"]
    seen_descriptors: set[str] = set()
    seq: dict[str, int] = {}
    counts: dict[str, int] = {}
    stream_of: dict[str, str] = {}
    for name, doc in docs:
        schema_validators[getattr(DocumentNames, name)].validate(doc)
        if name in ("descriptor", "stop"):
            assert doc["run_start"] == start_uid
        if name == "descriptor":
            seen_descriptors.add(doc["uid"])
            stream_of[doc["uid"]] = doc["name"]
        if name == "event":
            assert doc["descriptor"] in seen_descriptors
            stream = stream_of[doc["descriptor"]]
            assert doc["seq_num"] == seq.get(stream, 0) + 1
            seq[stream] = doc["seq_num"]
            counts[stream] = counts.get(stream, 0) + 1
            assert set(doc["data"]) == set(doc["timestamps"])
    assert docs[-1][1]["num_events"] == counts


class EventPager:
    """Forward documents to ``target``, packing events into event pages of ``size``.

    A stand-in for a transport that batches events (the RunEngine itself emits
    single events); other documents pass through in order.
    """

    def __init__(self, target: Callable[[str, dict], Any], size: int = 10) -> None:
        self.target = target
        self.size = size
        self._pending: list[dict] = []

    def _flush(self) -> None:
        if self._pending:
            self.target("event_page", pack_event_page(*self._pending))
            self._pending = []

    def __call__(self, name: str, doc: dict) -> None:
        if name == "event":
            if self._pending and self._pending[0]["descriptor"] != doc["descriptor"]:
                self._flush()
            self._pending.append(doc)
            if len(self._pending) >= self.size:
                self._flush()
            return
        self._flush()
        self.target(name, doc)
