"""``bluesky-ptycho frc A.h5 B.h5``: Fourier ring correlation of two reconstructions."""

from __future__ import annotations

import argparse

NAME = "frc"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="resolution without a reference: FRC of two reconstructions of one area",
        description=(
            "Fourier ring correlation of the objects of two `reconstruct` results of the same "
            "area, typically of the even and the odd frames of one scan (reconstruct --subset "
            "even / odd). The objects are placed on one grid by their origin_m, aligned "
            "(sub-pixel shift, global complex factor), windowed over their common covered "
            "region; prints the mean FRC over 0.1-0.5 of the Nyquist frequency and the curve."
        ),
    )
    parser.add_argument("first", metavar="A.h5", help="reconstruct output")
    parser.add_argument("second", metavar="B.h5", help="reconstruct output of the same area")
    parser.add_argument(
        "--csv", metavar="FILE", help="write the curve (frequency / Nyquist, FRC) as CSV"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..metrics import FRC_BAND, common_region, frc
    from ..results import read_result

    a, b = read_result(args.first), read_result(args.second)
    if not np.allclose(a["pixel_m"], b["pixel_m"], rtol=1e-6):
        raise ValueError(
            f"object pixel sizes differ ({a['pixel_m']} m vs {b['pixel_m']} m): FRC needs "
            "reconstructions on one grid"
        )
    obj_a, obj_b, region = common_region(
        a["object"], a["coverage"], tuple(a["origin_m"]),
        b["object"], b["coverage"], tuple(b["origin_m"]),
        tuple(a["pixel_m"]),
    )  # fmt: skip
    mean, frequency, correlation = frc(obj_a, obj_b, region)
    print(f"FRC mean over {FRC_BAND[0]}-{FRC_BAND[1]} of Nyquist: {mean:.4f}")
    for fraction in (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0):
        k = int(np.argmin(np.abs(frequency - fraction)))
        print(f"  {frequency[k]:.2f} Nyquist: {correlation[k]:+.4f}")
    if args.csv:
        np.savetxt(
            args.csv,
            np.stack([frequency, correlation], axis=1),
            delimiter=",",
            header="frequency_over_nyquist,frc",
            comments="",
        )
        print(f"wrote {args.csv}")
    return 0
