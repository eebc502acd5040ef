"""``bluesky-ptycho demo``: a live reconstruction of a simulated scan, stored in Tiled."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._options import non_negative_int, positive_int

NAME = "demo"


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="live reconstruction of a simulated Bluesky scan, stored in an embedded Tiled server",
        description=(
            "Run a RunEngine scan of the simulated beamline with the ptychography callback "
            "subscribed; raw and derived runs go to an embedded Tiled server in OUTPUT/tiled. "
            "Prints the Tiled address and the NRMSE against the known object and saves "
            "OUTPUT/demo.png (object amplitude and phase, probe, error curve)."
        ),
    )
    parser.add_argument(
        "--output", type=Path, default=Path("demo-output"), help="folder (demo-output)"
    )
    parser.add_argument("--points", type=positive_int, default=250, help="scan points (250)")
    parser.add_argument(
        "--frame-size", type=positive_int, default=64, help="detector frame M x M pixels (64)"
    )
    parser.add_argument(
        "--detector",
        choices=("hdf5", "file", "inline"),
        default="hdf5",
        help="hdf5: ophyd-async StreamResource; file: NPY_SEQ Resource/Datum; "
        "inline: images in events (hdf5)",
    )
    parser.add_argument(
        "--fly", action="store_true", help="fly scan (hdf5 detector): no events at all"
    )
    parser.add_argument(
        "--exposure",
        type=_non_negative_float,
        default=0.01,
        help="simulated exposure per point in seconds (0.01)",
    )
    parser.add_argument(
        "--refine-iterations",
        type=non_negative_int,
        default=60,
        help="iterations after the scan ends (60)",
    )
    parser.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto", help="array module (auto)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--serve", action="store_true", help="keep the Tiled server running until Ctrl-C"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..tools.demo import DemoOptions, run_demo

    if args.frame_size < 8:
        raise ValueError(f"--frame-size must be >= 8, got {args.frame_size}")
    result = run_demo(
        DemoOptions(
            output=args.output,
            points=args.points,
            frame_size=args.frame_size,
            detector=args.detector,
            fly=args.fly,
            exposure_s=args.exposure,
            refine_iterations=args.refine_iterations,
            backend=args.backend,
            seed=args.seed,
            progress=not args.quiet,
            serve=args.serve,
        )
    )
    print(f"Tiled server (embedded, stopped now): {result.tiled_uri}")
    print(f"  raw run     {result.raw_uid}")
    status = result.exit_status + (f": {result.reason}" if result.reason else "")
    print(f"  derived run {result.derived_uid}  ({status})")
    out = Path(args.output).resolve()
    print(f"  stored in {out / 'tiled'}; serve it again with:")
    print(
        f"  tiled serve catalog {out / 'tiled' / 'catalog.db'} -r {out / 'detector'} "
        f"-w {out / 'tiled' / 'data'} -w duckdb:///{out / 'tiled' / 'storage.duckdb'}"
    )
    print(
        f"reconstruction: {result.frames} frames, {result.iterations} iterations on "
        f"{result.backend}, scan {result.scan_s:.1f} s, total {result.total_s:.1f} s"
    )
    print(f"NRMSE against the known object: {result.nrmse:.4f}")
    print(f"figure: {result.png}")
    return 0 if result.exit_status == "success" else 1
