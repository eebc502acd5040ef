"""Subcommands of the ``bluesky-ptycho`` command line (see :mod:`bluesky_ptycho.cli`).

Each module defines ``register(subparsers)`` and ``run(args) -> int`` and imports
only the standard library at module top.
"""
