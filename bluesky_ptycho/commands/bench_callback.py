"""``bluesky-ptycho bench-callback``: what the live callback costs the RunEngine."""

from __future__ import annotations

import argparse
import json

from ._options import positive_int

NAME = "bench-callback"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="time RunEngine scans with and without the ptychography callback",
        description=(
            "Run the same step scan of the simulated beamline (inline images) with and without "
            "the callback, alternating, while the worker reconstructs; print the median "
            "RunEngine-thread time per event and the scan-time ratio (with / without)."
        ),
    )
    parser.add_argument("--points", type=positive_int, default=1000, help="scan points (1000)")
    parser.add_argument(
        "--frame-size", type=positive_int, default=64, help="detector frame M x M pixels (64)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=2, help="scans with and without, each (2)"
    )
    parser.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto", help="array module (auto)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..callback.bench import bench_callback

    result = bench_callback(args.points, args.frame_size, args.repeats, args.backend)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.summary())
    return 0
