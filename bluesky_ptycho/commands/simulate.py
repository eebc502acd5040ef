"""``bluesky-ptycho simulate OUT.cxi``: write a simulated scan with a known object."""

from __future__ import annotations

import argparse

from ._options import D4_ORIENTATIONS, default_step_fraction, positive_float, positive_int

NAME = "simulate"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="write a simulated scan (Poisson counts, known object) as CXI",
        description=(
            "Simulate a ptychography scan (9 keV, 0.5 m, 75 um detector pixels) and write "
            "it as a CXI file with the true object, for 'reconstruct' and 'bench'."
        ),
    )
    parser.add_argument("output", metavar="OUT.cxi", help="CXI file to write (overwritten)")
    parser.add_argument("--frames", type=positive_int, default=200, help="scan points (200)")
    parser.add_argument(
        "--frame-size", type=positive_int, default=64, help="detector frame M x M pixels (64)"
    )
    parser.add_argument(
        "--photons", type=positive_float, default=1e6, help="mean photons per frame (1e6)"
    )
    parser.add_argument(
        "--scan", choices=("spiral", "raster"), default="spiral", help="scan pattern (spiral)"
    )
    parser.add_argument(
        "--step-fraction",
        type=positive_float,
        default=None,
        help=f"scan step as a fraction of the frame width ({default_step_fraction():g})",
    )
    parser.add_argument(
        "--dp-orient",
        choices=D4_ORIENTATIONS,
        default="identity",
        metavar="NAME",
        help="write frames so that reconstructing them needs --dp-orient NAME: "
        + ", ".join(D4_ORIENTATIONS)
        + " (identity)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..cxi import write_cxi
    from ..sim.sample import default_config, simulate_scan

    if args.frame_size < 8:
        raise ValueError(f"--frame-size must be >= 8, got {args.frame_size}")
    config = default_config(args.frame_size, dp_orient=args.dp_orient)
    options = {} if args.step_fraction is None else {"step_fraction": args.step_fraction}
    scan = simulate_scan(
        config,
        n_frames=args.frames,
        scan=args.scan,
        photons_per_frame=args.photons,
        seed=args.seed,
        **options,
    )
    positions_m = np.stack(
        [
            scan.x_motor * config.position_scale_m * config.x_direction,
            scan.y_motor * config.position_scale_m * config.y_direction,
        ],
        axis=1,
    )
    path = write_cxi(
        args.output,
        scan.frames,
        positions_m,
        config,
        truth_object=scan.sample.object,
        truth_origin_m=scan.sample.origin_m,
    )
    print(
        f"wrote {path}: {scan.frames.shape[0]} frames of {args.frame_size}x{args.frame_size}, "
        f"{args.scan} scan, object pixel {config.object_pixel_m[1] * 1e9:.2f} nm"
    )
    if args.dp_orient != "identity":
        print(f"reconstruct it with --dp-orient {args.dp_orient}")
    return 0
