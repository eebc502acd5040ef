"""``bluesky-ptycho detect-orientation INPUT.cxi``: dp_orient and motor signs from the data.

Runs one short trial reconstruction per candidate (8 D4 orientations x 4 sign
pairs) on the frames nearest the scan centre and prints the candidates ranked
by Poisson NLL, which of them the data cannot tell apart, and the flags to
pass to ``reconstruct`` (see :mod:`bluesky_ptycho.calibration.orientation`).
"""

from __future__ import annotations

import argparse
from typing import Any

from ._options import accept_negative_numbers, positive_float, positive_int

NAME = "detect-orientation"


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..calibration.orientation import DEFAULT_ORIENTATION_ITERATIONS, DEFAULT_TOLERANCE
    from ..calibration.trials import DEFAULT_TRIAL_FRAMES

    parser = subparsers.add_parser(
        NAME,
        help="find --dp-orient and the motor signs of a CXI scan (ranked table of 32 candidates)",
        description=(
            "Try the 8 D4 detector orientations x 4 motor sign pairs on the frames nearest the "
            "scan centre (short ML_grad trials, frames cropped around the bright-field disc) and "
            "rank them by Poisson NLL per pixel. Candidates within --tolerance of the best are "
            "marked TIED with how they relate to it: 'mirror' candidates give the same object in "
            "motor coordinates; a tied 'twin' (conjugate phase) needs a probe of known defocus "
            "(--probe-propagation-m) or a warm-start probe (--probe) to break."
        ),
    )
    accept_negative_numbers(parser)
    parser.add_argument("input", metavar="INPUT.cxi", help="CXI file (see docs/cli.md)")
    parser.add_argument(
        "--frames",
        type=positive_int,
        default=DEFAULT_TRIAL_FRAMES,
        help=f"frames per trial, nearest the scan centre ({DEFAULT_TRIAL_FRAMES})",
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=DEFAULT_ORIENTATION_ITERATIONS,
        help=f"ML_grad iterations per candidate ({DEFAULT_ORIENTATION_ITERATIONS})",
    )
    parser.add_argument(
        "--crop",
        type=positive_int,
        default=None,
        metavar="PX",
        help="crop frames to PX x PX around the centre, odd (default: 1.5 bright-field "
        "disc diameters, at least 25)",
    )
    parser.add_argument(
        "--probe",
        metavar="FILE",
        help="warm-start probe (held fixed in the trials): .npy, or HDF5/CXI (FILE or "
        "FILE:/dataset); default: cold start",
    )
    parser.add_argument(
        "--probe-propagation-m",
        type=float,
        default=0.0,
        metavar="Z",
        help="propagate the initial probe by Z metres; a known defocus breaks the twin "
        "ambiguity (0)",
    )
    parser.add_argument(
        "--tolerance",
        type=positive_float,
        default=DEFAULT_TOLERANCE,
        help=f"relative NLL within which candidates are tied ({DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto", help="array module (auto)"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-candidate progress lines")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..calibration import detect_orientation
    from ..cxi import read_cxi

    overrides: dict[str, Any] = {"probe_propagation_m": args.probe_propagation_m}
    if args.probe:
        overrides["probe_path"] = args.probe
    frames, x, y, config = read_cxi(args.input, lazy=True, **overrides)
    try:
        if frames.shape[0] == 0:
            raise ValueError(f"{args.input}: the CXI file holds no frames")
        print(
            f"{args.input}: {frames.shape[0]} frames of {config.frame_shape[0]}x"
            f"{config.frame_shape[1]}; trying 32 orientation candidates"
        )
        result = detect_orientation(
            frames,
            x,
            y,
            config,
            n_frames=args.frames,
            iterations=args.iterations,
            crop_px=args.crop,
            backend=args.backend,
            tolerance=args.tolerance,
            report=None if args.quiet else print,
        )
    finally:
        frames.file.close()
    settings = result.settings
    print(
        f"trials: {settings['n_frames']} frames cropped to {settings['crop_px']}x"
        f"{settings['crop_px']}, {settings['iterations']} iterations, {settings['probe_model']}"
    )
    print(result.format_table())
    print(result.explanation())
    chosen = result.recommended
    print(
        f"use: dp_orient={chosen.dp_orient!r}, x_direction={chosen.x_direction:+d}, "
        f"y_direction={chosen.y_direction:+d}"
    )
    print(f"     bluesky-ptycho reconstruct {args.input} {chosen.flags()}")
    return 0
