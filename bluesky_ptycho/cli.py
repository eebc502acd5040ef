"""The ``bluesky-ptycho`` command line.

Each subcommand lives in its own module under :mod:`bluesky_ptycho.commands`
with two functions: ``register(subparsers)`` adds its parser (and sets
``run`` as the handler), ``run(args) -> int`` does the work. To add a
command, add its module name to :data:`COMMANDS`.

Keep command modules light at import time (standard library only at module
top; import NumPy, h5py, the engine, Bluesky... inside ``run``): building the
parser imports every command module, and ``bench`` must run on machines that
have no Bluesky stack. ``tests/test_cli.py`` checks this.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: modules under bluesky_ptycho.commands, in the order ``--help`` lists them
COMMANDS: tuple[str, ...] = (
    "simulate",
    "reconstruct",
    "detect_orientation",
    "frc",
    "bench",
    "demo",
    "bench_callback",
    "bench_live",
    "serve",
    "view",
    "replay",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command of :data:`COMMANDS` registered."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="bluesky-ptycho",
        description="Live ML_grad ptychography: simulate, reconstruct and benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"{__package__}.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"bluesky-ptycho {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
