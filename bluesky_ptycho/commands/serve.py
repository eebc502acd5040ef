"""``bluesky-ptycho serve``: reconstruct the runs published on a 0MQ proxy or Kafka."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._options import device_list, positive_float, positive_int

NAME = "serve"


def _host_port(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="reconstruction server: consume documents from a 0MQ proxy or Kafka",
        description=(
            "Reconstruct every ptychography run published on a bluesky-0MQ-proxy (--zmq) or a "
            "Kafka topic (--kafka, --topic; several processes with one --group share the "
            "runs). Derived runs are republished on the bus and/or stored in Tiled. "
            "Messages are decoded as msgpack (arrays: msgpack-numpy) only; see "
            "docs/deployment.md. Stop with SIGINT or SIGTERM."
        ),
    )
    bus = parser.add_mutually_exclusive_group(required=True)
    bus.add_argument(
        "--zmq", type=_host_port, metavar="HOST:PORT", help="out-address of a bluesky-0MQ-proxy"
    )
    bus.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers (h1:p,h2:p)")
    parser.add_argument("--topic", help="Kafka topic of the raw documents (with --kafka)")
    parser.add_argument(
        "--group",
        default="bluesky-ptycho",
        help="Kafka consumer group: processes of one group share the runs (bluesky-ptycho)",
    )
    parser.add_argument(
        "--prefix", default="", help="0MQ: consume only messages with this prefix (all)"
    )
    parser.add_argument(
        "--publish",
        metavar="HOST:PORT",
        type=_host_port,
        help="0MQ: republish derived documents to this proxy in-address",
    )
    parser.add_argument(
        "--publish-prefix",
        default="ptycho",
        help="0MQ prefix of the republished documents (ptycho)",
    )
    parser.add_argument(
        "--derived-topic",
        help="Kafka topic for the derived documents (TOPIC.ptycho; 'none': do not republish)",
    )
    parser.add_argument(
        "--tiled",
        metavar="URI",
        help="store derived runs in this Tiled server (API key from TILED_API_KEY)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML or YAML file: [callback], [kafka.consumer], [kafka.producer]",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "numpy", "cupy"),
        help="engine array module (overrides the config file; auto)",
    )
    parser.add_argument(
        "--gpus",
        type=device_list,
        metavar="N,N,...",
        help="partition each reconstruction over these CUDA devices (NCCL; needs cupy)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=positive_int,
        default=None,
        help="refuse larger messages (64 MiB)",
    )
    parser.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="also accept pickle messages: only on a trusted network",
    )
    parser.add_argument(
        "--status-file", type=Path, help="JSON health record, rewritten at every health report"
    )
    parser.add_argument(
        "--health-interval",
        type=positive_float,
        default=10.0,
        help="seconds between health log lines (10)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (INFO)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..server.app import ServeArguments, serve

    if args.kafka and not args.topic:
        raise ValueError("--kafka needs --topic")
    if args.zmq and (args.topic or args.derived_topic):
        raise ValueError("--topic and --derived-topic go with --kafka, not --zmq")
    return serve(
        ServeArguments(
            **{k: v for k, v in vars(args).items() if k in ServeArguments.__dataclass_fields__}
        )
    )
