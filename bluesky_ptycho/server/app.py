"""Assemble the server from its options: codec, source, sinks, service."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import ServeConfig, load_config
from .transport import DEFAULT_MAX_MESSAGE_BYTES, Codec

logger = logging.getLogger(__name__)


class UnsafePickleWarning(UserWarning):
    """``--unsafe-pickle``: a pickle from the bus can run any code in this process."""


@dataclass
class ServeArguments:
    """What ``bluesky-ptycho serve`` was asked (see ``serve --help``)."""

    zmq: str | None = None
    kafka: str | None = None
    topic: str | None = None
    group: str = "bluesky-ptycho"
    prefix: str = ""
    publish: str | None = None
    publish_prefix: str = "ptycho"
    derived_topic: str | None = None
    tiled: str | None = None
    config: Path | None = None
    backend: str | None = None
    gpus: tuple[int, ...] | None = None
    max_message_bytes: int | None = None
    unsafe_pickle: bool = False
    status_file: Path | None = None
    health_interval: float = 10.0
    log_level: str = "INFO"


def make_codec(args: ServeArguments) -> Codec:
    if args.unsafe_pickle:
        warnings.warn(
            "serve --unsafe-pickle: pickle messages are accepted; anyone who can publish "
            "on the bus can run code in this process",
            UnsafePickleWarning,
            stacklevel=2,
        )
    return Codec(args.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES, args.unsafe_pickle)


def make_source(args: ServeArguments, config: ServeConfig, codec: Codec) -> Any:
    if args.zmq:
        from .zmq_bus import ZmqSource

        return ZmqSource(args.zmq, codec, prefix=args.prefix.encode())
    from .kafka_bus import KafkaSource

    return KafkaSource(args.kafka, args.topic, args.group, codec, config.kafka_consumer)


def tiled_client(uri: str) -> Any:
    """A Tiled client of ``uri`` (the API key from ``TILED_API_KEY``, as tiled reads it)."""
    from tiled.client import from_uri

    return from_uri(uri)


def make_sinks(args: ServeArguments, config: ServeConfig, tiled: Any = None) -> list[Any]:
    """Receivers of the derived documents: republisher on the bus, TiledWriter."""
    sinks: list[Any] = []
    if args.zmq and args.publish:
        from .zmq_bus import ZmqRepublisher

        sinks.append(ZmqRepublisher(args.publish, prefix=args.publish_prefix.encode()))
    if args.kafka and args.derived_topic != "none":
        from .kafka_bus import KafkaRepublisher

        topic = args.derived_topic or f"{args.topic}.ptycho"
        sinks.append(KafkaRepublisher(args.kafka, topic, config.kafka_producer))
    if tiled is not None:
        from bluesky_tiled_plugins import TiledWriter

        sinks.append(TiledWriter(tiled, batch_size=1))
    return sinks


def serve(args: ServeArguments) -> int:
    """Run the server until SIGINT/SIGTERM; returns the exit status."""
    from .service import ReconstructionService

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    config = load_config(args.config) if args.config else ServeConfig()
    options = dict(config.callback)
    if args.backend:
        options["backend"] = args.backend
    if args.gpus:
        options["gpus"] = args.gpus
    codec = make_codec(args)
    source = make_source(args, config, codec)
    tiled = tiled_client(args.tiled) if args.tiled else None
    # Tiled live nodes (PtychoCallback's own Tiled output) take this same client.
    sinks = make_sinks(args, config, tiled)
    service = ReconstructionService(
        source,
        options,
        sinks,
        status_file=args.status_file,
        health_interval_s=args.health_interval,
    )
    try:
        return service.serve()
    finally:
        if tiled is not None:
            tiled.context.close()
