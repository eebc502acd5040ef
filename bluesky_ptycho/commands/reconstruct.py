"""``bluesky-ptycho reconstruct INPUT.cxi``: ML_grad reconstruction of a CXI scan to HDF5."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._options import (
    D4_ORIENTATIONS,
    POSITION_CONVENTIONS,
    PRECISIONS,
    accept_negative_numbers,
    direction,
    non_negative_int,
    positive_int,
)

#: distances tried with --probe-search-range and no --probe-search-steps
DEFAULT_RANGE_STEPS = 21

NAME = "reconstruct"
#: frames read from the file and handed to the engine at a time
DEFAULT_CHUNK_FRAMES = 256
#: calibration's option names (bluesky_ptycho.calibration.advice) as this command's flags
ADVICE_FLAGS: dict[str, str | None] = {
    "probe_propagation_m": "--probe-propagation-m",
    "probe": "--probe",
    "defocus_search": "--probe-search",
    "distances_m": "--probe-search-range MIN MAX",
    "trial_frames": "--probe-search-frames",
    "trial_iterations": "--probe-search-iterations",
    "defocus_sign": None,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="reconstruct a CXI scan (ML_grad, Poisson) and write object and probe to HDF5",
        description=(
            "Reconstruct object and probe from a CXI scan with the streaming ML_grad engine. "
            "Positions in the file are metres. If the file holds a simulation's true object, "
            "the NRMSE of the result against it is printed."
        ),
    )
    accept_negative_numbers(parser)
    parser.add_argument("input", metavar="INPUT.cxi", help="CXI file (see docs/cli.md)")
    parser.add_argument(
        "--iterations", type=non_negative_int, default=150, help="ML_grad iterations (150)"
    )
    parser.add_argument(
        "--output",
        metavar="OUT.h5",
        help="HDF5 file to write (default: INPUT with suffix .recon.h5)",
    )
    parser.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto", help="array module (auto)"
    )
    parser.add_argument(
        "--dp-orient",
        choices=D4_ORIENTATIONS,
        default="identity",
        metavar="NAME",
        help="D4 transform applied to every frame first: "
        + ", ".join(D4_ORIENTATIONS)
        + " (identity)",
    )
    parser.add_argument(
        "--x-direction", type=direction, default=1, help="sign of x positions: +1 or -1 (+1)"
    )
    parser.add_argument(
        "--y-direction", type=direction, default=1, help="sign of y positions: +1 or -1 (+1)"
    )
    parser.add_argument(
        "--probe",
        metavar="FILE",
        help="warm-start probe: .npy, or HDF5/CXI (FILE or FILE:/dataset); default: cold start",
    )
    parser.add_argument(
        "--positions",
        choices=POSITION_CONVENTIONS,
        default=None,
        help="what the file's translation holds: sample-translation (the CXI specification, "
        "CDTools; probe position = -translation) or probe-position (PyNX, ptychodus); default: "
        "the file's own 'positions' attribute, else the specification (docs/real-data.md)",
    )
    parser.add_argument(
        "--no-position-check",
        action="store_true",
        help="with --probe: skip the short trials that report whether the negated positions "
        "(the other convention) fit the data clearly better",
    )
    parser.add_argument(
        "--subset",
        choices=("all", "even", "odd"),
        default="all",
        help="reconstruct all frames, or only the even / odd ones (two half-scans for "
        "`bluesky-ptycho frc`)",
    )
    parser.add_argument(
        "--beam-center",
        nargs=2,
        type=float,
        metavar=("ROW", "COL"),
        help="beam axis on the frames as recorded, detector pixels (cold start only; default: "
        "the frame centre; see docs/engine.md)",
    )
    parser.add_argument(
        "--object-smoothness",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of a Gaussian smoothness prior on the object relative to the maximum "
        "illumination (0: none; ~0.01 reduces noise grain)",
    )
    parser.add_argument(
        "--remove-object-ramp",
        action="store_true",
        help="remove the object's mean phase gradient from the written object (display only)",
    )
    parser.add_argument(
        "--probe-propagation-m",
        type=float,
        default=0.0,
        metavar="Z",
        help="propagate the initial probe by Z metres (0)",
    )
    search = parser.add_argument_group(
        "probe defocus search",
        "Before reconstructing, try probe propagation distances on the frames nearest the "
        "scan centre and keep the one with the lowest Poisson NLL (see docs/real-data.md).",
    )
    search.add_argument(
        "--probe-search",
        action="store_true",
        help="search the probe propagation distance first (replaces --probe-propagation-m)",
    )
    search.add_argument(
        "--probe-search-range",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="distances to try, metres (default: +-the defocus at which the probe fills 3/4 "
        "of the field of view, from the bright-field disc of the data)",
    )
    search.add_argument(
        "--probe-search-steps",
        type=positive_int,
        default=None,
        metavar="K",
        help="number of distances in the range (default: half a depth of focus apart; "
        "with --probe-search-range: 21)",
    )
    search.add_argument(
        "--probe-search-frames",
        type=positive_int,
        default=None,
        metavar="N",
        help="frames per trial (48)",
    )
    search.add_argument(
        "--probe-search-iterations",
        type=positive_int,
        default=None,
        metavar="K",
        help="ML_grad iterations per trial distance (10)",
    )
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="single",
        help="single (complex64) or double (complex128) object and probe (single)",
    )
    parser.add_argument(
        "--chunk-frames",
        type=positive_int,
        default=DEFAULT_CHUNK_FRAMES,
        help=f"frames read from the file at a time ({DEFAULT_CHUNK_FRAMES})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def default_output(input_path: str | Path) -> Path:
    """``scan.cxi`` -> ``scan.recon.h5`` next to it."""
    return Path(input_path).with_suffix(".recon.h5")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .. import Reconstructor
    from ..cxi import positions_convention, read_cxi, read_cxi_truth
    from ..metrics import snapshot_nrmse
    from ..results import write_result

    overrides: dict[str, Any] = {
        "dp_orient": args.dp_orient,
        "x_direction": args.x_direction,
        "y_direction": args.y_direction,
        "probe_propagation_m": args.probe_propagation_m,
        "dtype": PRECISIONS[args.precision],
        "object_smoothness": args.object_smoothness,
        "remove_object_ramp": args.remove_object_ramp,
    }
    if args.beam_center is not None:
        overrides["beam_center_px"] = tuple(args.beam_center)
    if args.probe:
        overrides["probe_path"] = args.probe
    if args.probe_search and args.probe_propagation_m:
        raise ValueError(
            "--probe-propagation-m and --probe-search exclude each other (the search chooses "
            "the distance; --probe-search-range Z Z tries one value)"
        )
    if not args.probe_search and (
        args.probe_search_range is not None
        or args.probe_search_steps is not None
        or args.probe_search_frames is not None
        or args.probe_search_iterations is not None
    ):
        raise ValueError("the --probe-search-* options need --probe-search")
    output = Path(args.output) if args.output else default_output(args.input)
    convention = positions_convention(args.input, args.positions)
    frames, x, y, config = read_cxi(args.input, lazy=True, positions=convention, **overrides)
    reading_attrs: dict[str, Any] = {"positions": convention, "subset": args.subset}
    search_attrs: dict[str, Any] = {}
    try:
        if frames.shape[0] == 0:
            raise ValueError(f"{args.input}: the CXI file holds no frames")
        selected = subset_indices(args.subset, frames.shape[0])
        n_frames = len(selected)
        x, y = x[selected], y[selected]
        if args.probe and not args.no_position_check:
            reading_attrs.update(position_check(args, frames, x, y, config, convention, selected))
        if args.probe_search:
            best_m, search_attrs = probe_search(args, frames, x, y, config)
            config = config.replace(probe_propagation_m=best_m)
        rec = Reconstructor(config, backend=args.backend)
        for start in range(0, n_frames, args.chunk_frames):
            stop = min(start + args.chunk_frames, n_frames)
            rec.add_frames(read_chunk(frames, selected[start:stop]), x[start:stop], y[start:stop])
    finally:
        frames.file.close()
    print(
        f"{args.input}: {n_frames} frames of {config.frame_shape[0]}x{config.frame_shape[1]}, "
        f"backend {rec.backend}"
    )
    with tqdm(
        total=args.iterations, desc="ML_grad", unit="it", disable=args.quiet, dynamic_ncols=True
    ) as bar:
        for _ in range(args.iterations):
            nll = rec.iterate(1)
            bar.set_postfix_str(f"NLL {nll:.6g}", refresh=False)
            bar.update()
    if args.iterations == 0:
        rec.iterate(0)  # initialises the probe, so the output holds the starting point
    snapshot = rec.snapshot(live=False)
    attrs: dict[str, Any] = {
        "input": str(Path(args.input).resolve()),
        "iterations": rec.iteration,
        "backend": rec.backend,
        **reading_attrs,
        **search_attrs,
    }
    truth = read_cxi_truth(args.input)
    if truth is not None and rec.iteration > 0:
        attrs["nrmse"] = snapshot_nrmse(snapshot, *truth)
    write_result(output, snapshot, config, attrs)
    nll = snapshot.metrics.get("poisson_nll", float("nan"))
    print(f"wrote {output}: {rec.iteration} iterations, Poisson NLL {nll:.6g}")
    if search_attrs:
        print(
            f"probe propagation distance {config.probe_propagation_m * 1e6:+.3f} um "
            "(chosen by --probe-search)"
        )
    if "nrmse" in attrs:
        print(f"NRMSE vs true object: {attrs['nrmse']:.4f}")
    return 0


def subset_indices(subset: str, n_frames: int) -> Any:
    """Frame indices of ``--subset`` ("all", "even" or "odd") of ``n_frames`` frames."""
    import numpy as np

    first, step = {"all": (0, 1), "even": (0, 2), "odd": (1, 2)}[subset]
    return np.arange(first, n_frames, step)


def read_chunk(frames: Any, indices: Any) -> Any:
    """``frames[indices]`` for sorted ``indices``, read as one slice of the (h5py) stack."""
    return frames[indices[0] : indices[-1] + 1][indices - indices[0]]


def position_check(
    args: argparse.Namespace,
    frames: Any,
    x: Any,
    y: Any,
    config: Any,
    convention: str,
    selected: Any,
) -> dict[str, Any]:
    """Trials with the warm probe: do the negated positions fit clearly better? Print it."""
    from ..calibration.positions import check_position_sign
    from ..calibration.trials import read_frames

    check = check_position_sign(
        read_frames(frames, selected), x, y, config, backend=args.backend
    )
    other = "probe-position" if convention == "sample-translation" else "sample-translation"
    print(
        f"position check with the warm probe: NLL/pixel {check.nll_as_given:.4f} as read "
        f"({convention}), {check.nll_negated:.4f} negated ({other})"
    )
    if check.negated_fits_better:
        print(
            f"WARNING: the negated positions fit clearly better: this file's translation "
            f"probably holds the {other.replace('-', ' ')}; rerun with --positions {other}"
        )
    return {
        "position_check_nll_as_read": check.nll_as_given,
        "position_check_nll_negated": check.nll_negated,
        "position_check_negated_fits_better": check.negated_fits_better,
    }


def probe_search(
    args: argparse.Namespace, frames: Any, x: Any, y: Any, config: Any
) -> tuple[float, dict[str, Any]]:
    """Run the defocus search of ``--probe-search``; print its table.

    Returns the chosen distance (m) and the attributes stored in the output:
    ``probe_search_m``, ``probe_search_distances_m``, ``probe_search_nll_per_pixel``,
    ``probe_search_iterations``.
    """
    import numpy as np

    from ..calibration import CalibrationError, format_defocus_table, search_probe_propagation
    from ..calibration.defocus import (
        DEFAULT_SEARCH_ITERATIONS,
        SCREEN_ITERATIONS,
        SCREEN_KEEP,
        defocus_grid,
    )
    from ..calibration.trials import DEFAULT_TRIAL_FRAMES

    distances = None
    if args.probe_search_range is not None:
        low, high = args.probe_search_range
        steps = args.probe_search_steps or (1 if low == high else DEFAULT_RANGE_STEPS)
        distances = defocus_grid(low, high, steps)
    n_frames = args.probe_search_frames or DEFAULT_TRIAL_FRAMES
    iterations = args.probe_search_iterations or DEFAULT_SEARCH_ITERATIONS
    print(
        f"probe search: {n_frames} frames nearest the centre, {iterations} iterations for the "
        f"best {SCREEN_KEEP} grid distances and the refinement, at most {SCREEN_ITERATIONS} "
        "for the others"
    )
    try:
        best_m, table = search_probe_propagation(
            frames,
            x,
            y,
            config,
            distances_m=distances,
            steps=args.probe_search_steps,
            n_frames=n_frames,
            iterations=iterations,
            backend=args.backend,
            report=None if args.quiet else print,
        )
    except CalibrationError as error:
        raise ValueError(error.render(ADVICE_FLAGS)) from None
    print(format_defocus_table(table, best_m))
    print(f"probe search: best distance {best_m * 1e6:+.3f} um")
    return best_m, {
        "probe_search_m": best_m,
        "probe_search_distances_m": np.array([row.distance_m for row in table]),
        "probe_search_nll_per_pixel": np.array([row.nll_per_pixel for row in table]),
        "probe_search_iterations": np.array([row.iterations for row in table]),
    }
