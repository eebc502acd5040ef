"""``bluesky-ptycho replay``: reconstruct a stored raw run again, from Tiled."""

from __future__ import annotations

import argparse
import json

from ._options import non_negative_int, positive_int

NAME = "replay"


def setting(text: str) -> tuple[str, object]:
    """``key=value``; the value is read as JSON when it parses (numbers, lists), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="replay a stored raw run from Tiled through the live callback",
        description=(
            "Read a raw run stored in Tiled (start document, image node in chunks with "
            "prefetch, positions) and reconstruct it with PtychoCallback; the derived run is "
            "written next to the raw one. Prints the frames/s achieved."
        ),
    )
    parser.add_argument("--tiled", required=True, help="Tiled URI, e.g. http://host:8000/api/v1")
    parser.add_argument("--uid", required=True, help="raw run uid (or scan id)")
    parser.add_argument("--max-frames", type=positive_int, help="replay only the first N frames")
    parser.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of the stored start document's ptycho dict (repeatable), "
        "e.g. --set refine_iterations=200 --set dp_orient=2",
    )
    parser.add_argument("--chunk", type=positive_int, default=256, help="frames per read (256)")
    parser.add_argument(
        "--refine-iterations", type=non_negative_int, help="iterations after the last frame"
    )
    parser.add_argument("--backend", default="auto", help="numpy, cupy or auto (auto)")
    parser.add_argument(
        "--live-nodes",
        metavar="PATH",
        help="also write Tiled live nodes under PATH (e.g. ptycho-replay)",
    )
    parser.add_argument(
        "--no-store", action="store_true", help="do not write the derived run to Tiled"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    from ..callback import PtychoCallback
    from ..replay import replay

    settings = dict(args.set)
    if args.refine_iterations is not None:
        settings["refine_iterations"] = args.refine_iterations
    client = from_uri(args.tiled)
    try:
        if args.uid not in client:
            raise ValueError(f"no run {args.uid!r} on {args.tiled}")
        emit = None if args.no_store else TiledWriter(client, batch_size=100)
        callback = PtychoCallback(
            emit,
            backend=args.backend,
            tiled=client if args.live_nodes else None,
            tiled_path=args.live_nodes or "ptycho",
        )
        try:
            outcome = replay(
                client[args.uid],
                callback,
                settings=settings,
                max_frames=args.max_frames,
                chunk_frames=args.chunk,
                progress=not args.quiet,
            )
        finally:
            callback.close()
        print(outcome.summary())
        result = outcome.result
        if result is not None and result.derived_uid and not args.no_store:
            print(f"derived run {result.derived_uid} (derived_from {outcome.raw_uid})")
        return 0 if result is not None and result.exit_status == "success" else 1
    finally:
        client.context.close()
