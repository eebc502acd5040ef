"""``bluesky-ptycho detect-orientation INPUT.cxi``: dp_orient and motor signs from the data.

Runs one short trial reconstruction per candidate (8 D4 orientations x 4 sign
pairs) on the frames nearest the scan centre and prints the candidates ranked
by Poisson NLL, which of them the data cannot tell apart, and the flags to
pass to ``reconstruct`` (see :mod:`bluesky_ptycho.calibration.orientation`).
"""

from __future__ import annotations

import argparse
from typing import Any

from ._options import (
    POSITION_CONVENTIONS,
    accept_negative_numbers,
    direction,
    positive_float,
    positive_int,
)

NAME = "detect-orientation"

#: calibration's option names (bluesky_ptycho.calibration.advice) as this command's flags
ADVICE_FLAGS: dict[str, str | None] = {
    "probe_propagation_m": "--probe-propagation-m",
    "probe": "--probe",
    "defocus_search": "--probe-search",
    "distances_m": "--probe-search-range MIN MAX",
    "trial_frames": "--frames",
    "trial_iterations": "--iterations",
    "defocus_sign": "--defocus-sign",
}


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
        "--positions",
        choices=POSITION_CONVENTIONS,
        default=None,
        help="what the file's translation holds (see reconstruct --positions; default: the "
        "file's 'positions' attribute, else the CXI specification, sample-translation)",
    )
    parser.add_argument(
        "--probe-propagation-m",
        type=float,
        default=0.0,
        metavar="Z",
        help="propagate the initial probe by Z metres; a known defocus breaks the twin "
        "ambiguity (0)",
    )
    search = parser.add_argument_group(
        "joint defocus search",
        "For a cold start that fits no orientation (a strongly defocused probe): search the "
        "probe propagation distance for each of the four classes of equivalent candidates, "
        "then rank the 32 candidates with the best distance (docs/real-data.md).",
    )
    search.add_argument(
        "--probe-search",
        action="store_true",
        help="search the defocus together with the orientation (cold start only)",
    )
    search.add_argument(
        "--probe-search-range",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="distances to try, metres (default: from the bright-field disc of the data)",
    )
    search.add_argument(
        "--probe-search-steps",
        type=positive_int,
        default=None,
        metavar="K",
        help="number of distances (default: half a depth of focus apart; with a range: 21)",
    )
    search.add_argument(
        "--defocus-sign",
        type=direction,
        default=None,
        help="+1 if the sample is downstream of the focus, -1 if upstream: picks the real one "
        "of the two twin solutions (default: keep the sign found, and say so)",
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
    from ..calibration import CalibrationError, detect_orientation, search_orientation_and_defocus
    from ..calibration.defocus import defocus_grid, format_defocus_table
    from ..cxi import positions_convention, read_cxi
    from .reconstruct import DEFAULT_RANGE_STEPS

    search_options = (args.probe_search_range, args.probe_search_steps, args.defocus_sign)
    if not args.probe_search and any(option is not None for option in search_options):
        raise ValueError(
            "--probe-search-range, --probe-search-steps and --defocus-sign need --probe-search"
        )
    if args.probe_search and (args.probe or args.probe_propagation_m):
        raise ValueError(
            "--probe-search starts cold and chooses the distance: leave out --probe and "
            "--probe-propagation-m"
        )
    overrides: dict[str, Any] = {"probe_propagation_m": args.probe_propagation_m}
    if args.probe:
        overrides["probe_path"] = args.probe
    convention = positions_convention(args.input, args.positions)
    frames, x, y, config = read_cxi(args.input, lazy=True, positions=convention, **overrides)
    report = None if args.quiet else print
    common = {
        "n_frames": args.frames,
        "iterations": args.iterations,
        "crop_px": args.crop,
        "backend": args.backend,
        "tolerance": args.tolerance,
        "report": report,
    }
    try:
        if frames.shape[0] == 0:
            raise ValueError(f"{args.input}: the CXI file holds no frames")
        print(
            f"{args.input}: {frames.shape[0]} frames of {config.frame_shape[0]}x"
            f"{config.frame_shape[1]}; trying 32 orientation candidates"
        )
        joint = None
        if args.probe_search:
            distances = None
            if args.probe_search_range is not None:
                low, high = args.probe_search_range
                steps = args.probe_search_steps or (1 if low == high else DEFAULT_RANGE_STEPS)
                distances = defocus_grid(low, high, steps)
            joint = search_orientation_and_defocus(
                frames,
                x,
                y,
                config,
                distances_m=distances,
                steps=args.probe_search_steps,
                defocus_sign=args.defocus_sign,
                **common,
            )
            result = joint.orientation
        else:
            result = detect_orientation(frames, x, y, config, **common)
    except CalibrationError as error:
        raise ValueError(error.render(ADVICE_FLAGS)) from None
    finally:
        frames.file.close()
    if joint is not None:
        for key, table in joint.searches.items():
            best = min(table, key=lambda row: row.nll_per_pixel)
            print(
                f"defocus search as {key[0]} x {key[1]:+d} y {key[2]:+d} (and its 7 "
                f"equivalents): best {best.distance_m * 1e6:+.3f} um, NLL/pixel "
                f"{best.nll_per_pixel:.5g}"
            )
        if report is not None:
            print(format_defocus_table(joint.searches[_class_of(joint)], _best_of(joint)))
    settings = result.settings
    print(
        f"trials: {settings['n_frames']} frames cropped to {settings['crop_px']}x"
        f"{settings['crop_px']}, {settings['iterations']} iterations, {settings['probe_model']}"
    )
    print(result.format_table())
    print(result.explanation(ADVICE_FLAGS))
    chosen = result.recommended
    flags = chosen.flags()
    if joint is not None:
        flags = joint.flags()
        if joint.sign_from == "data":
            print(
                f"defocus sign: {joint.distance_m * 1e6:+.3f} um is the sign the search found; "
                "the twin (dp_orient turned by 180 degrees, opposite distance) fits exactly as "
                "well. Give --defocus-sign (+1: sample downstream of the focus) to choose."
            )
        if not joint.consistent:
            print("warning: the ranking disagrees with the defocus search; use more --frames")
    print(
        f"use: dp_orient={chosen.dp_orient!r}, x_direction={chosen.x_direction:+d}, "
        f"y_direction={chosen.y_direction:+d}"
        + (f", probe_propagation_m={joint.distance_m:.6g}" if joint is not None else "")
    )
    if args.positions is not None:
        flags += f" --positions {convention}"
    print(f"     bluesky-ptycho reconstruct {args.input} {flags}")
    if args.probe and chosen.x_direction == -1 and chosen.y_direction == -1:
        other = next(c for c in POSITION_CONVENTIONS if c != convention)
        unsigned = flags.replace(f" --positions {convention}", "").replace(
            "--x-direction -1 --y-direction -1", "--x-direction +1 --y-direction +1"
        )
        print(
            "position convention: with the warm probe the best candidate negates both axes, "
            f"which is what reading the translations as {other} does; the same reconstruction "
            f"with the file read that way:\n     bluesky-ptycho reconstruct {args.input} "
            f"{unsigned} --positions {other}"
        )
    return 0


def _class_of(joint: Any) -> tuple[str, int, int]:
    """The representative whose defocus search won."""
    return min(joint.searches, key=lambda key: min(r.nll_per_pixel for r in joint.searches[key]))


def _best_of(joint: Any) -> float:
    table = joint.searches[_class_of(joint)]
    return min(table, key=lambda row: row.nll_per_pixel).distance_m
