"""``bluesky-ptycho bench-callback``: what the live callback costs the RunEngine.

A thin front end of :mod:`bluesky_ptycho.tools.bench_callback`.
"""

from __future__ import annotations

import argparse
import json

from ._options import positive_float, positive_int

NAME = "bench-callback"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="time RunEngine scans with and without the ptychography callback",
        description=(
            "Run the same step scan of the simulated beamline (inline images, CPU-bound "
            "RunEngine) without the callback, with it at its default settings, reconstructing "
            "live flat out (scan_duty_cycle 1) and at --duty-cycle if given, and with the "
            "worker only ingesting; print the RunEngine-thread time per event and each "
            "mode's scan time over the time without the callback (medians and best)."
        ),
    )
    parser.add_argument("--points", type=positive_int, default=1000, help="scan points (1000)")
    parser.add_argument(
        "--frame-size", type=positive_int, default=64, help="detector frame M x M pixels (64)"
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="scans of each kind (3)")
    parser.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto", help="array module (auto)"
    )
    parser.add_argument(
        "--duty-cycle",
        type=positive_float,
        default=None,
        help="also time a live mode at this scan_duty_cycle, in (0, 1] (none)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..tools.bench_callback import bench_callback

    if args.duty_cycle is not None and args.duty_cycle > 1:
        raise ValueError(f"--duty-cycle must be in (0, 1], got {args.duty_cycle}")
    result = bench_callback(
        args.points, args.frame_size, args.repeats, args.backend, duty_cycle=args.duty_cycle
    )
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.summary())
    return 0
