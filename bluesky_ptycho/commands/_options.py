"""Argument types shared by several commands (no NumPy-heavy or Bluesky imports)."""

from __future__ import annotations

import argparse
import re

from ..config import D4_ORIENTATIONS, POSITION_CONVENTIONS

__all__ = [
    "D4_ORIENTATIONS",
    "POSITION_CONVENTIONS",
    "PRECISIONS",
    "accept_negative_numbers",
    "default_step_fraction",
    "device_list",
    "direction",
    "non_negative_int",
    "positive_float",
    "positive_int",
]

PRECISIONS = {"single": "complex64", "double": "complex128"}


def direction(text: str) -> int:
    """+1 or -1 (accepts '1', '+1', '-1')."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value not in (1, -1):
        raise argparse.ArgumentTypeError(f"expected +1 or -1, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def device_list(text: str) -> tuple[int, ...]:
    """CUDA device numbers, comma-separated ("0,1,2,3")."""
    try:
        devices = tuple(int(part) for part in text.split(","))
    except ValueError:
        devices = ()
    if not devices or min(devices) < 0:
        raise argparse.ArgumentTypeError(f"expected CUDA device numbers like 0,1, got {text!r}")
    return devices


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def default_step_fraction() -> float:
    """``simulate_scan``'s default scan step (fraction of the frame width)."""
    import inspect

    from ..sim.sample import simulate_scan

    return float(inspect.signature(simulate_scan).parameters["step_fraction"].default)


#: what argparse takes for a negative number rather than an option: also 1e-6 forms
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def accept_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` read ``-60e-6`` as a number (argparse alone takes it for an option).

    Needed for two-value options such as ``--probe-search-range -100e-6 200e-6``,
    where the ``--option=value`` spelling is not available.
    """
    parser._negative_number_matcher = _NEGATIVE_NUMBER  # type: ignore[attr-defined]
