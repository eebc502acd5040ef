"""Closed value checks shared by ``ReconConfig``, the callback's run settings and options.

One written rule for every setting, wherever it comes from (Python keywords,
a start document's ``ptycho`` metadata, a YAML file, a GUI):

* a number must be a number: ``bool`` is not a number (``True`` is refused where
  an ``int`` or ``float`` belongs), and a *numeric string* such as ``"1e-3"`` is
  refused, never converted (the message says to give the number itself);
* an integer setting takes an integer (Python or NumPy), not ``2.0``;
* out-of-range values are refused, never clamped or adjusted.

Each check returns the value normalised to a plain Python type (``float``,
``int``, ``str``), so that the settings are JSON-safe, or raises
:class:`ValueError` naming the field, what was expected and what was given.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any

#: a check: (field name, value) -> normalised value, or ValueError
Check = Callable[[str, Any], Any]


def fail(name: str, expected: str, got: Any) -> None:
    """Raise the one error format: ``name: expected ..., got ...`` (with a hint for strings)."""
    hint = ""
    if isinstance(got, str) and _looks_numeric(got):
        hint = f" (a string: give the number itself, {got.strip()}, not {got!r})"
    elif isinstance(got, bool):
        hint = " (a boolean is not a number)"
    raise ValueError(f"{name}: expected {expected}, got {got!r}{hint}")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_real(value: Any) -> bool:
    """A real number that is not a bool (Python or NumPy int/float)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """An integer that is not a bool (Python or NumPy)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def real(
    expected: str = "a finite number", ok: Callable[[float], bool] = lambda v: True
) -> Check:
    """Check for a finite real number accepted by ``ok`` (described by ``expected``)."""

    def check(name: str, value: Any) -> float:
        if not is_real(value) or not math.isfinite(value) or not ok(value):
            fail(name, expected, value)
        return float(value)

    return check


def integer(expected: str = "an integer", ok: Callable[[int], bool] = lambda v: True) -> Check:
    """Check for an integer accepted by ``ok`` (described by ``expected``)."""

    def check(name: str, value: Any) -> int:
        if not is_integer(value) or not ok(value):
            fail(name, expected, value)
        return int(value)

    return check


def boolean() -> Check:
    """Check for ``True`` or ``False`` (not 0/1, not "yes")."""

    def check(name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            fail(name, "True or False", value)
        return value

    return check


def choice(options: Sequence[Any]) -> Check:
    """Check for one of ``options`` (compared by type and value: ``True`` is not ``1``)."""

    def check(name: str, value: Any) -> Any:
        for option in options:
            if _same(value, option):
                return option
        fail(name, "one of " + ", ".join(map(repr, options)), value)

    return check


def _same(value: Any, option: Any) -> bool:
    if is_integer(option):
        return is_integer(value) and value == option
    if isinstance(option, str):
        return isinstance(value, str) and value == option
    return value is option  # None, True, False


def text(expected: str = "a non-empty string") -> Check:
    """Check for a non-empty string."""

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            fail(name, expected, value)
        return value

    return check


def path() -> Check:
    """Check for a file path (``str`` or ``os.PathLike``); returned as ``str``."""

    def check(name: str, value: Any) -> str:
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            fail(name, "a file path", value)
        return os.fspath(value)

    return check


def optional(inner: Check) -> Check:
    """``None`` or whatever ``inner`` accepts."""

    def check(name: str, value: Any) -> Any:
        return None if value is None else inner(name, value)

    return check


def anything() -> Check:
    """No check (arrays and objects validated elsewhere)."""
    return lambda name, value: value
