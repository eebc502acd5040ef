"""``bluesky-ptycho bench``: the command line of :mod:`bluesky_ptycho.tools.bench_engine`.

Engine throughput, convergence, device memory and (``--profile``) the time per
operator stage on a simulated scan. Light at import time (the CLI builds every
parser); the work is imported in :func:`run`. Needs no Bluesky packages.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import FRAME_STORAGE
from ..engine.transforms import TRANSFORMS
from ._options import (
    PRECISIONS,
    default_step_fraction,
    device_list,
    non_negative_int,
    positive_float,
    positive_int,
)

NAME = "bench"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="benchmark the engine on a simulated scan (frame-iterations/s, NRMSE)",
        description=(
            "Simulate a scan, reconstruct it from a cold start and report, per block of "
            "iterations, the elapsed iteration time, Poisson NLL and NRMSE against the true "
            "object, then frame-iterations per second (frames x iterations / time inside "
            "iterate(), device-synchronised; setup excluded)."
        ),
    )
    parser.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto", help="array module (auto)"
    )
    parser.add_argument(
        "--frame-size", type=positive_int, default=256, help="frame M x M pixels (256)"
    )
    parser.add_argument("--frames", type=positive_int, default=4096, help="scan points (4096)")
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        help="stop after this many iterations (50, or no limit when --seconds is given)",
    )
    parser.add_argument(
        "--seconds",
        type=positive_float,
        default=None,
        help="stop after the first block that brings iteration time to this many seconds",
    )
    parser.add_argument(
        "--block", type=positive_int, default=10, help="iterations per table row (10)"
    )
    parser.add_argument(
        "--photons", type=positive_float, default=1e6, help="mean photons per frame (1e6)"
    )
    parser.add_argument(
        "--scan", choices=("spiral", "raster"), default="spiral", help="scan pattern (spiral)"
    )
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="single",
        help="single (complex64) or double (complex128) (single)",
    )
    parser.add_argument(
        "--step-fraction",
        type=positive_float,
        default=None,
        help=f"scan step as a fraction of the frame width ({default_step_fraction():g})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--profile",
        type=positive_int,
        default=0,
        metavar="N",
        help="after the run, time each operator stage over N more iterations (0: off)",
    )
    parser.add_argument(
        "--gpus",
        type=device_list,
        metavar="N,N,...",
        help="partition the frames over these CUDA devices (NCCL between distinct ones)",
    )
    parser.add_argument(
        "--frame-storage",
        choices=FRAME_STORAGE,
        default="farfields",
        help="what the engine keeps per frame (ReconConfig.frame_storage; farfields)",
    )
    parser.add_argument(
        "--line-search-frames",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="most frames the line search reads (ReconConfig.line_search_frames; "
        "0: all; default: the configuration's)",
    )
    parser.add_argument(
        "--transforms",
        choices=TRANSFORMS,
        default="cufft",
        help="the CUDA operators' FFTs: cuFFT's, or kernels/transforms.cu's with the "
        "gradient pass fused around them (square 128/256/512 frames; cufft)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..tools.bench_engine import benchmark

    results = benchmark(
        backend=args.backend,
        frame_size=args.frame_size,
        n_frames=args.frames,
        iterations=args.iterations,
        seconds=args.seconds,
        block=args.block,
        photons_per_frame=args.photons,
        scan=args.scan,
        precision=args.precision,
        seed=args.seed,
        step_fraction=args.step_fraction,
        profile_iterations=args.profile,
        gpus=args.gpus,
        frame_storage=args.frame_storage,
        line_search_frames=args.line_search_frames,
        transforms=args.transforms,
    )
    if args.json:
        path = Path(args.json)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path}")
    return 0
