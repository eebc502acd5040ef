"""Kafka: documents through bluesky-kafka's ``BlueskyConsumer``, in a consumer group.

Scale-out: every ``serve`` process of one group (``group_id``) gets a share of the
topic's partitions. Publishers made with :func:`bluesky_ptycho.publish.kafka_publisher`
key each message with its run's uid, so all documents of a run sit on one partition,
in order, and reach one process. The topic needs at least as many partitions as
there are processes (idle processes otherwise). A process that stops mid-run
ends that derived run with a truthful stop (``abort``); if it dies, the derived
run has no stop at all. Either way the partition's next owner sees the rest of
that run without its start document and ignores it; the stored raw run can be
reconstructed again afterwards (post-hoc replay).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .transport import Codec, MessageRefused

logger = logging.getLogger(__name__)

Dispatch = Callable[[str, dict], None]

#: consumer settings unless the config file's [kafka.consumer] says otherwise
DEFAULT_CONSUMER_CONFIG: dict[str, Any] = {
    "auto.offset.reset": "latest",  # a new group starts with the next run, not the archive
    "session.timeout.ms": 10000,  # a dead process's partitions move on after 10 s
    "heartbeat.interval.ms": 1000,
    "max.poll.interval.ms": 300000,
}

#: what the deserializer returns for a refused message (skipped by the source)
_REFUSED = ("refused", {})


class KafkaSource:
    """Consume documents from ``topic`` as a member of consumer group ``group_id``."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        codec: Codec,
        consumer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.group_id = group_id
        self.codec = codec
        self.consumer_config = {**DEFAULT_CONSUMER_CONFIG, **(consumer_config or {})}
        self._stopping = threading.Event()
        self.partitions: list[int] = []  # owned now (rebalance callbacks)

    def describe(self) -> str:
        return f"Kafka {self.bootstrap_servers} topic {self.topic!r} group {self.group_id!r}"

    def _deserialize(self, payload: bytes) -> tuple[str, dict]:
        try:
            return self.codec.decode_message(payload)
        except MessageRefused:
            return _REFUSED  # counted by the codec; skipped below

    def run(self, dispatch: Dispatch, idle: Callable[[], None] | None = None) -> None:
        """Dispatch documents until :meth:`interrupt` (blocks); closes the consumer.

        idle : called between polls that returned nothing.
        """
        from bluesky_kafka import BlueskyConsumer

        def process(consumer: Any, topic: str, name: str, doc: dict) -> bool:
            if name != _REFUSED[0]:  # never a document name (decode_message checks)
                dispatch(name, doc)
            return True

        consumer = BlueskyConsumer(
            topics=[self.topic],
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group_id,
            consumer_config=dict(self.consumer_config),
            deserializer=self._deserialize,
            process_document=process,
        )
        # bluesky-kafka 0.10 subscribes without rebalance callbacks; subscribe again
        # (same topic) with callbacks so that health shows the partitions this process owns.
        consumer._consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        consumer.start(continue_polling=lambda: not self._stopping.is_set(), work_during_wait=idle)

    def _on_assign(self, consumer: Any, partitions: list) -> None:
        self.partitions = sorted(p.partition for p in partitions)
        logger.info("serve: partitions %s of %r assigned", self.partitions, self.topic)

    def _on_revoke(self, consumer: Any, partitions: list) -> None:
        revoked = sorted(p.partition for p in partitions)
        self.partitions = [p for p in self.partitions if p not in revoked]
        logger.info("serve: partitions %s of %r revoked", revoked, self.topic)

    def interrupt(self) -> None:
        """Stop :meth:`run` at its next poll (thread- and signal-safe)."""
        self._stopping.set()


class KafkaRepublisher:
    """Derived documents to their own topic, keyed by derived run."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        from ..publish import kafka_publisher

        self.topic = topic
        self._publisher = kafka_publisher(bootstrap_servers, topic, producer_config)

    def __call__(self, name: str, doc: dict) -> None:
        self._publisher(name, doc)

    def close(self) -> None:
        self._publisher.flush()
