"""Publisher side (the RunEngine host): send documents data-only, keyed by run.

One call in the IPython profile, no GPU packages needed::

    from bluesky_ptycho.publish import zmq_publisher, kafka_publisher
    RE.subscribe(zmq_publisher("127.0.0.1:5577"))              # to a bluesky-0MQ-proxy
    RE.subscribe(kafka_publisher("broker:9092", "hxn.bluesky.documents"))

Both return bluesky's own publisher classes with the msgpack (+ msgpack-numpy
arrays) serializer of :mod:`bluesky_ptycho.server.transport` installed.
The Kafka publisher keys every message with its run's start uid instead of
bluesky-kafka's one fixed key, so each run lands on one partition: in order,
and read by exactly one ``serve`` process of a consumer group, while different
runs spread over the partitions. See docs/deployment.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .server.transport import RunKeys, pack

#: seconds to wait after connecting a 0MQ publisher (subscribers miss earlier messages)
ZMQ_SLOW_JOINER_S = 1.0


def zmq_publisher(address: str, prefix: bytes = b"", wait_s: float = ZMQ_SLOW_JOINER_S) -> Any:
    """``bluesky.callbacks.zmq.Publisher`` to a proxy's in-address, msgpack-serialized.

    wait_s : pause after connecting (0MQ's slow joiner: without it the first
        start document can be lost).
    """
    from bluesky.callbacks.zmq import Publisher

    publisher = Publisher(address, prefix=prefix, serializer=pack)
    if wait_s > 0:
        time.sleep(wait_s)
    return publisher


def kafka_publisher(
    bootstrap_servers: str,
    topic: str,
    producer_config: Mapping[str, Any] | None = None,
    flush_on_stop_doc: bool = True,
) -> Any:
    """A bluesky-kafka ``Publisher`` that keys each message with its run's uid.

    producer_config : librdkafka settings; added unless given there:
        ``enable.idempotence`` (implies ``acks=all``: no loss, no reordering on
        retry; left out when ``acks`` is set otherwise) and a 64 MiB
        ``message.max.bytes``.
    """
    from bluesky_kafka import Publisher

    class RunKeyedPublisher(Publisher):
        """bluesky-kafka's Publisher with the message key set per run."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.run_keys = RunKeys()

        def __call__(self, name: str, doc: dict) -> None:
            # bluesky-kafka 0.10 sends ``self._key`` with every message
            self._key = self.run_keys.key(name, doc)
            super().__call__(name, doc)

    config: dict[str, Any] = {"message.max.bytes": 64 * 2**20}
    if str((producer_config or {}).get("acks", "all")) in ("all", "-1"):
        config["enable.idempotence"] = True  # librdkafka allows it only with acks=all
    config.update(producer_config or {})
    return RunKeyedPublisher(
        topic=topic,
        bootstrap_servers=bootstrap_servers,
        key="",
        producer_config=config,
        flush_on_stop_doc=flush_on_stop_doc,
        serializer=pack,
    )
