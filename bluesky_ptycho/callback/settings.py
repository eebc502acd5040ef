"""Per-run settings: constructor keywords merged with the start document's ``ptycho`` dict.

Two kinds of keys configure a reconstruction:

* every :class:`~bluesky_ptycho.config.ReconConfig` field (``energy_kev``,
  ``distance_m``, ``detector_pixel_m``, ``dp_orient``, ...);
* the run keys in :data:`RUN_DEFAULTS` (which data keys hold the frames and the
  positions, how many iterations follow the last frame, ...).

Both may be given to :class:`~bluesky_ptycho.callback.PtychoCallback` and per scan
in the start document (``RE(plan, ptycho={...})``); the start document wins.
Unknown keys are an error (a typo must not be silently ignored). ``frame_shape``
may be left out: it is taken from the detector's data key (or the first frame).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import ReconConfig

#: keys that are not ReconConfig fields, with their defaults
RUN_DEFAULTS: dict[str, Any] = {
    "image_key": None,  # data key of the detector image, e.g. "det_image"
    "x_key": None,  # data key of the horizontal position (motor units)
    "y_key": None,  # data key of the vertical position (motor units)
    "refine_iterations": 100,  # iterations after the stop document (0: none)
    "min_frames": 8,  # frames needed before the first iteration while the scan runs
    # data-driven calibration on the first frames (bluesky_ptycho.calibration.calibrate):
    "calibrate": "off",  # "off", "orientation", "defocus" or "both"
    "calibrate_frames": 48,  # frames collected before calibrating (then the engine starts)
    "defocus_sign": None,  # +1: sample downstream of the focus, -1: upstream, None: unknown
    "tiled_path": None,  # Tiled live nodes go to <tiled_path>/<raw uid> (None: the callback's)
}

CALIBRATE_CHOICES = ("off", "orientation", "defocus", "both")

_KEY_NAMES = ("image_key", "x_key", "y_key")
_COUNT_NAMES = ("refine_iterations", "min_frames", "calibrate_frames")


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
class RunSettings:
    """Settings of one run after merging (see module docstring).

    recon : ReconConfig keywords (``frame_shape`` possibly missing).
    """

    recon: dict[str, Any] = field(repr=False)
    image_key: str
    x_key: str
    y_key: str
    refine_iterations: int
    min_frames: int
    calibrate: str = "off"
    calibrate_frames: int = 48
    defocus_sign: int | None = None
    tiled_path: str | None = None

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

    Raises ValueError naming the key for unknown keys, missing data keys, bad
    counts, or ReconConfig values that fail validation.
    """
    metadata = dict(metadata or {})
    check_keys(metadata, "start document 'ptycho' metadata")
    merged: dict[str, Any] = {**RUN_DEFAULTS, **defaults, **metadata}
    if isinstance(merged.get("frame_shape"), list):
        merged["frame_shape"] = tuple(merged["frame_shape"])
    for name in _KEY_NAMES:
        value = merged[name]
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"{name}: expected the data key name (a non-empty string), got {value!r}; give "
                f"it to PtychoCallback({name}=...) or in the start document's 'ptycho' metadata"
            )
    for name in _COUNT_NAMES:
        value = merged[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    if merged["calibrate"] not in CALIBRATE_CHOICES:
        choices = ", ".join(CALIBRATE_CHOICES)
        raise ValueError(f"calibrate: expected one of {choices}, got {merged['calibrate']!r}")
    if merged["defocus_sign"] not in (None, 1, -1):
        raise ValueError(f"defocus_sign: expected +1, -1 or None, got {merged['defocus_sign']!r}")
    recon = {k: v for k, v in merged.items() if k not in RUN_DEFAULTS}
    settings = RunSettings(
        recon=recon,
        image_key=merged["image_key"],
        x_key=merged["x_key"],
        y_key=merged["y_key"],
        refine_iterations=int(merged["refine_iterations"]),
        min_frames=max(1, int(merged["min_frames"])),
        calibrate=merged["calibrate"],
        calibrate_frames=max(8, int(merged["calibrate_frames"])),
        defocus_sign=merged["defocus_sign"],
        tiled_path=merged["tiled_path"],
    )
    settings.check_config()
    return settings
