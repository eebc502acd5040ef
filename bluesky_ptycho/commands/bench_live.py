"""``bluesky-ptycho bench-live``: live latency of a streamed scan through the callback.

A thin front end of :mod:`bluesky_ptycho.tools.bench_live`. Needs no Bluesky,
ophyd or Tiled packages (event-model only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import CALIBRATE_CHOICES, FRAME_STORAGE
from ._options import non_negative_int, positive_float, positive_int

NAME = "bench-live"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="stream a simulated scan through the callback; time frame -> snapshot latency",
        description=(
            "Simulate a scan, compose its documents with event-model, then hand the events "
            "to a PtychoCallback paced at --rate-hz from this thread (the RunEngine's role). "
            "Reports per-frame latency from handing over a frame's event to the first live "
            "snapshot whose n_frames includes it (median, p90, max), the time from the stop "
            "document to the final result, the final NRMSE as delivered and the iterations "
            "done during the scan and after the stop."
        ),
    )
    parser.add_argument("--frames", type=positive_int, default=10_000, help="scan points (10000)")
    parser.add_argument(
        "--frame-size", type=positive_int, default=256, help="frame M x M pixels (256)"
    )
    parser.add_argument(
        "--rate-hz", type=positive_float, default=2000.0, help="events per second (2000)"
    )
    parser.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto", help="array module (auto)"
    )
    parser.add_argument(
        "--refine-iterations",
        type=non_negative_int,
        default=None,
        help="iterations after the stop document (the callback's default, 100)",
    )
    parser.add_argument(
        "--refine-seconds",
        type=positive_float,
        default=None,
        help="time budget of those iterations, seconds from the stop document (none)",
    )
    parser.add_argument(
        "--snapshot-interval",
        type=float,
        default=None,
        metavar="S",
        help="snapshot_interval_s: seconds between live snapshots, >= 0 (the callback's, 1)",
    )
    parser.add_argument(
        "--duty-cycle",
        type=positive_float,
        default=None,
        help="scan_duty_cycle in (0, 1] (the callback's 'auto')",
    )
    parser.add_argument(
        "--photons", type=positive_float, default=1e6, help="mean photons per frame (1e6)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=600.0,
        help="longest wait for the result after the stop document, seconds (600)",
    )
    parser.add_argument(
        "--frame-storage",
        choices=FRAME_STORAGE,
        default=None,
        help="ReconConfig.frame_storage: what the engine keeps per frame (farfields)",
    )
    parser.add_argument(
        "--line-search-frames",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="ReconConfig.line_search_frames: most frames the line search reads (0: all)",
    )
    parser.add_argument(
        "--calibrate",
        choices=CALIBRATE_CHOICES,
        default=None,
        help="calibration on the first frames (the callback's calibrate; off)",
    )
    parser.add_argument(
        "--defocus-sign",
        type=int,
        choices=(1, -1),
        default=None,
        help="with --calibrate defocus/both: +1 sample downstream of the focus, -1 upstream",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..tools.bench_live import OPTION_FLAGS, bench_live

    options = {}  # the callback keywords given, each from its flag (--duty-cycle: scan_duty_cycle)
    for name, flag in OPTION_FLAGS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            options[name] = value
    result = bench_live(
        n_frames=args.frames,
        frame_size=args.frame_size,
        rate_hz=args.rate_hz,
        backend=args.backend,
        refine_iterations=args.refine_iterations,
        snapshot_interval_s=args.snapshot_interval,
        seed=args.seed,
        photons_per_frame=args.photons,
        timeout_s=args.timeout,
        **options,
    )
    print(result.summary())
    if args.json:
        path = Path(args.json)
        path.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        print(f"wrote {path}")
    return 0
