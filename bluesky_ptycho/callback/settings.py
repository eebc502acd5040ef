"""Per-run settings: constructor keywords merged with the start document's ``ptycho`` dict.

Two kinds of keys configure a reconstruction:

* every :class:`~bluesky_ptycho.config.ReconConfig` field (``energy_kev``,
  ``distance_m``, ``detector_pixel_m``, ``dp_orient``, ...);
* the run keys of :class:`RunKeys` (which data keys hold the frames and the
  positions, how many iterations follow the last frame, ...).

Both may be given to :class:`~bluesky_ptycho.callback.PtychoCallback` and per scan
in the start document (``RE(plan, ptycho={...})``); the start document wins.
Unknown keys are an error (a typo must not be silently ignored), and so are
values of the wrong type or out of range (the rule: :mod:`bluesky_ptycho.validation`;
nothing is converted or clamped). ``frame_shape`` may be left out: it is taken
from the detector's data key (or the first frame).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import validation
from ..config import CALIBRATE_CHOICES, ReconConfig, check_field


@dataclass(frozen=True)
class RunKeys:
    """The run keys (settings that are not ReconConfig fields) and their defaults.

    image_key, x_key, y_key : data keys of the detector image and the positions
        (motor units); no default.
    refine_iterations : iterations after the stop document (>= 0).
    refine_seconds : time budget of those iterations, seconds from the stop
        document (> 0), or None: no budget. An iteration that would end past it is
        not started (its duration is taken as the last one's); the first iteration
        after the last frames joined always runs.
    min_frames : frames needed before the first iteration while the scan runs (>= 1).
    calibrate : data-driven calibration on the first frames
        (:func:`bluesky_ptycho.calibration.calibrate`): "off", "orientation",
        "defocus" or "both".
    calibrate_frames : frames collected before calibrating, then the engine starts (>= 8).
    defocus_sign : +1 sample downstream of the focus, -1 upstream, None unknown.
    tiled_path : Tiled live nodes go to ``<tiled_path>/<raw uid>`` (None: the
        callback's ``tiled_path``; docs/outputs.md).
    """

    image_key: str | None = None
    x_key: str | None = None
    y_key: str | None = None
    refine_iterations: int = 100
    refine_seconds: float | None = None
    min_frames: int = 8
    calibrate: str = "off"
    calibrate_frames: int = 48
    defocus_sign: int | None = None
    tiled_path: str | None = None


#: every run key with its default (from :class:`RunKeys`: each default is defined once)
RUN_DEFAULTS: dict[str, Any] = dataclasses.asdict(RunKeys())

_DATA_KEY = validation.text("the data key name (a non-empty string)")

#: the check of every run key (rule: :mod:`bluesky_ptycho.validation`)
RUN_KEY_CHECKS: dict[str, validation.Check] = {
    "image_key": _DATA_KEY,
    "x_key": _DATA_KEY,
    "y_key": _DATA_KEY,
    "refine_iterations": validation.integer("an integer >= 0", lambda v: v >= 0),
    "refine_seconds": validation.optional(validation.real("seconds > 0", lambda v: v > 0)),
    "min_frames": validation.integer("an integer >= 1", lambda v: v >= 1),
    "calibrate": validation.choice(CALIBRATE_CHOICES),
    "calibrate_frames": validation.integer("an integer >= 8", lambda v: v >= 8),
    "defocus_sign": validation.choice((None, 1, -1)),
    "tiled_path": validation.optional(validation.text("a Tiled container path")),
}


def check_setting(name: str, value: Any) -> Any:
    """One setting (run key or ReconConfig field) on its own, normalised; ValueError if bad."""
    if name in RUN_KEY_CHECKS:
        return RUN_KEY_CHECKS[name](name, value)
    return check_field(name, value)


def allowed_keys() -> tuple[str, ...]:
    """Every key accepted in constructor keywords and in ``ptycho`` metadata."""
    return (*ReconConfig.field_names(), *RUN_DEFAULTS)


def required_recon_keys() -> tuple[str, ...]:
    """ReconConfig fields without a default, except ``frame_shape`` (taken from the data)."""
    return tuple(
        f.name
        for f in dataclasses.fields(ReconConfig)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name != "frame_shape"
    )


def check_keys(settings: Mapping[str, Any], where: str) -> None:
    """Raise ValueError naming any key that is not a setting."""
    unknown = sorted(set(settings) - set(allowed_keys()))
    if unknown:
        raise ValueError(
            f"{where}: unknown setting(s) {', '.join(map(repr, unknown))}; allowed: "
            f"{', '.join(allowed_keys())}"
        )


@dataclass(frozen=True)
class RunSettings(RunKeys):
    """Settings of one run after merging (see module docstring).

    recon : ReconConfig keywords (``frame_shape`` possibly missing).
    """

    recon: dict[str, Any] = field(default_factory=dict, repr=False)

    def config(self, frame_shape: tuple[int, int]) -> ReconConfig:
        """The engine configuration; ``frame_shape`` fills in when not given explicitly."""
        recon = dict(self.recon)
        recon.setdefault("frame_shape", tuple(int(s) for s in frame_shape))
        return ReconConfig(**recon)

    def check_config(self) -> None:
        """Validate the engine keywords now (a stand-in frame shape if none is known yet)."""
        missing = [name for name in required_recon_keys() if name not in self.recon]
        if missing:
            raise ValueError(
                f"missing setting(s) {', '.join(missing)}: give them to PtychoCallback(...) "
                "or in the start document's 'ptycho' metadata"
            )
        shape = self.recon.get("frame_shape")
        mask = self.recon.get("mask")
        if shape is None:
            shape = tuple(np.shape(mask)) if mask is not None else (64, 64)
        self.config(shape)

    def describe(self) -> dict[str, Any]:
        """A JSON-safe summary (arrays are described, not copied) for derived documents."""
        out: dict[str, Any] = {}
        for key, value in {**self.recon, **self.run_keys()}.items():
            out[key] = json_safe(value)
        return out

    def run_keys(self) -> dict[str, Any]:
        """The run keys and their values."""
        return {name: getattr(self, name) for name in RUN_DEFAULTS}


def json_safe(value: Any) -> Any:
    """``value`` as JSON-friendly data; arrays become a short description."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return f"<array {value.dtype} {list(value.shape)}>"
    return repr(value)


def merge(defaults: Mapping[str, Any], metadata: Mapping[str, Any] | None) -> RunSettings:
    """Constructor ``defaults`` overridden by start-document ``metadata``.

    Raises ValueError naming the key, where it came from, what was expected and
    what was given: unknown keys, missing keys, wrong types, out-of-range values,
    ReconConfig values that fail validation together.
    """
    metadata = dict(metadata or {})
    check_keys(metadata, "start document 'ptycho' metadata")
    merged: dict[str, Any] = {**RUN_DEFAULTS, **defaults, **metadata}
    checked: dict[str, Any] = {}
    for name, value in merged.items():
        try:
            checked[name] = check_setting(name, value)
        except ValueError as error:
            raise ValueError(f"{error} [{_source(name, defaults, metadata)}]") from None
    recon = {k: v for k, v in checked.items() if k not in RUN_DEFAULTS}
    run_keys = {k: checked[k] for k in RUN_DEFAULTS}
    settings = RunSettings(recon=recon, **run_keys)
    settings.check_config()
    return settings


def _source(name: str, defaults: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
    if name in metadata:
        return f"start document 'ptycho' metadata key {name!r}"
    if name in defaults:
        return f"PtychoCallback({name}=...)"
    return (
        f"no {name!r} given: pass PtychoCallback({name}=...) or put it in the start "
        "document's 'ptycho' metadata"
    )
