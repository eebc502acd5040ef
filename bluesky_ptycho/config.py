"""Reconstruction configuration: one frozen, validated dataclass.

Conventions (see docs/engine.md):

* arrays are (row, column) = (y, x);
* a motor reading ``x`` becomes the probe position on the object
  ``x * position_scale_m * x_direction`` metres (same for y);
* the object pixel size is ``wavelength_m * distance_m / (M * detector_pixel_m)``
  along each axis of an ``M``-pixel frame;
* ``dp_orient`` (one of the eight D4 names) is applied to every detector frame
  before anything else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import validation

#: hc in keV * m: wavelength_m = HC_KEV_M / energy_kev
HC_KEV_M = 1.23984198e-9

D4_ORIENTATIONS: tuple[str, ...] = (
    "identity",
    "rot90_cw",
    "rot90_ccw",
    "rot180",
    "fliplr",
    "flipud",
    "transpose",
    "antitranspose",
)

#: orientations that swap rows and columns
TRANSPOSING: tuple[str, ...] = ("rot90_cw", "rot90_ccw", "transpose", "antitranspose")

#: what a file's position record may hold: the sample's translation (the CXI
#: specification; probe position = minus it) or the probe's position (bluesky_ptycho.cxi)
POSITION_CONVENTIONS: tuple[str, ...] = ("sample-translation", "probe-position")

DTYPES: tuple[str, ...] = ("complex64", "complex128")
POSITION_INTERPOLATIONS: tuple[str, ...] = ("cubic", "linear", "nearest")
#: the callback's calibrate setting: calibration on a live scan's first frames
CALIBRATE_CHOICES: tuple[str, ...] = ("off", "orientation", "defocus", "both")
#: what the engine keeps per frame (bluesky_ptycho.engine.passes)
FRAME_STORAGE: tuple[str, ...] = ("farfields", "counts", "stacks")


def _fail(name: str, expected: str, got: Any) -> None:
    validation.fail(f"ReconConfig.{name}", expected, got)


def _frame_shape(name: str, value: Any) -> tuple[int, int]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(validation.is_integer(s) and s >= 8 for s in value)
    ):
        _fail(name, "(rows, columns), two integers >= 8", value)
    return (int(value[0]), int(value[1]))


def _beam_center(name: str, value: Any) -> tuple[float, float] | str | None:
    if value is None or value == "data":
        return value
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        _fail(name, "None, 'data' or (row, col) in detector pixels", value)
    coordinate = validation.real("(row, col): two finite numbers, detector pixels")
    return (coordinate(name, value[0]), coordinate(name, value[1]))


_POSITIVE = validation.real("a finite number > 0", lambda v: v > 0)
_DIRECTION = validation.choice((1, -1))

#: the check of every field (see :mod:`bluesky_ptycho.validation` for the rule);
#: a new field needs an entry here (tests/test_callback_settings.py checks that every
#: field has one)
FIELD_CHECKS: dict[str, validation.Check] = {
    "energy_kev": _POSITIVE,
    "distance_m": _POSITIVE,
    "detector_pixel_m": _POSITIVE,
    "frame_shape": _frame_shape,
    "dp_orient": validation.choice(D4_ORIENTATIONS),
    "x_direction": _DIRECTION,
    "y_direction": _DIRECTION,
    "position_scale_m": _POSITIVE,
    "dtype": validation.choice(DTYPES),
    "probe_hold_iterations": validation.integer("an integer >= 0", lambda v: v >= 0),
    "amplitude_iterations": validation.integer("an integer >= 0", lambda v: v >= 0),
    "probe": validation.anything(),
    "probe_path": validation.optional(validation.path()),
    "probe_propagation_m": validation.real("a finite distance in metres"),
    "mask": validation.anything(),
    "saturation_counts": validation.optional(validation.real("a count > 0", lambda v: v > 0)),
    "alpha_relative": validation.real("a number in (0, 1)", lambda v: 0 < v < 1),
    "object_margin_px": validation.integer("an integer >= 0", lambda v: v >= 0),
    "position_interpolation": validation.choice(POSITION_INTERPOLATIONS),
    "beam_center_px": _beam_center,
    "remove_object_ramp": validation.boolean(),
    "object_smoothness": validation.real("a finite number >= 0", lambda v: v >= 0),
    "frame_storage": validation.choice(FRAME_STORAGE),
    "line_search_frames": validation.integer("an integer >= 0", lambda v: v >= 0),
}


def check_field(name: str, value: Any) -> Any:
    """One field's value on its own (normalised), or ValueError naming the field."""
    check = FIELD_CHECKS.get(name)
    if check is None:
        if name not in ReconConfig.field_names():
            raise ValueError(f"ReconConfig has no field {name!r}")
        return value  # a field without a check yet: tests/test_callback_settings.py fails
    try:
        return check(name, value)
    except ValueError as error:
        if str(error).startswith("ReconConfig."):
            raise
        raise ValueError(f"ReconConfig.{error}") from None


@dataclass(frozen=True, kw_only=True)
class ReconConfig:
    """Geometry, conventions and algorithm settings of one reconstruction.

    Parameters
    ----------
    energy_kev : photon energy in keV (> 0).
    distance_m : sample-detector distance in metres (> 0).
    detector_pixel_m : detector pixel pitch in metres (> 0), square pixels.
    frame_shape : (rows, columns) of a detector frame, each >= 8.
    dp_orient : D4 transform applied to each frame as recorded (default identity).
    x_direction, y_direction : +1 or -1, sign of motor axis vs. object axis.
    position_scale_m : metres per motor unit (default 1e-6: motors in micrometres).
    dtype : "complex64" (default) or "complex128" for object and probe.
    probe_hold_iterations : iterations with the probe held fixed (default 2).
    amplitude_iterations : most iterations that fit the amplitude model (Gaussian
        noise on sqrt(counts): better conditioned far from the solution) after frames
        were last added, before the Poisson likelihood; they end sooner once they
        stop lowering the Poisson NLL (default 100, a cap: the stall usually ends
        them first; 0: Poisson throughout).
    probe : warm-start probe (complex, frame_shape; first mode of a stack).
    probe_path : ``.npy`` or HDF5/CXI file holding a warm-start probe.
    probe_propagation_m : propagate the initial probe by this distance (m).
    mask : detector mask as recorded (frame_shape, nonzero = good pixel).
    saturation_counts : pixels at or above this count are excluded per frame.
    alpha_relative : preconditioner regulariser relative to its maximum (1e-3).
    object_margin_px : free border kept around the scanned area, in object pixels.
    position_interpolation : sub-pixel probe shift, "cubic" (default), "linear" or
        "nearest" (positions rounded to whole object pixels).
    beam_center_px : (row, col) of the beam axis (the direct beam) on a frame as
        recorded, detector pixels from pixel [0, 0]; a cold-start probe's far field
        is held there. None (default): the frame centre (M // 2, N // 2); "data":
        the centre of the bright-field disc of the mean pattern. Ignored with a
        warm-start probe, whose own far field defines the convention.
    remove_object_ramp : remove the object's mean phase gradient from snapshots
        (display only; default False: the image as reconstructed).
    object_smoothness : weight of a Gaussian (squared-gradient) prior on the object,
        relative to the maximum illumination (default 0: none; ~0.01 smooths noise).
    frame_storage : what the engine keeps per frame between an iteration's passes
        (device memory against transforms an iteration; single precision, 256 x 256):
        "farfields" (default: counts, 0.13 MB a frame, and the model far fields of the
        line search's frames, at most ``line_search_frames`` of 0.52 MB; four
        transforms), "counts" (counts only, 0.13 MB; four transforms and one for each
        frame the line search reads) or "stacks" (far fields and the search
        direction's too, 1.70 MB, three transforms).
    line_search_frames : most frames of a partition the line search reads (default
        256; 0: all). With more frames it reads every k-th (``k = ceil(n /
        line_search_frames)``, the offset moving on each iteration) and scales its sums
        to all frames; the gradient and the likelihood always cover every frame. With
        "farfields" or "counts" this saves most of the search direction's two
        transforms an iteration (256 x 256 x 4096 on an H200: 169,500 frame-iterations/s
        reading all, 285,200 reading 512, 305,700 reading 256, the same NRMSE after 50
        iterations).
    """

    energy_kev: float
    distance_m: float
    detector_pixel_m: float
    frame_shape: tuple[int, int]
    dp_orient: str = "identity"
    x_direction: int = 1
    y_direction: int = 1
    position_scale_m: float = 1e-6
    dtype: str = "complex64"
    probe_hold_iterations: int = 2
    amplitude_iterations: int = 100
    probe: Any = field(default=None, compare=False, repr=False)
    probe_path: str | None = None
    probe_propagation_m: float = 0.0
    mask: Any = field(default=None, compare=False, repr=False)
    saturation_counts: float | None = None
    alpha_relative: float = 1e-3
    object_margin_px: int = 8
    position_interpolation: str = "cubic"
    beam_center_px: tuple[float, float] | str | None = None
    remove_object_ramp: bool = False
    object_smoothness: float = 0.0
    frame_storage: str = "farfields"
    line_search_frames: int = 256

    def __post_init__(self) -> None:
        for name in FIELD_CHECKS:
            object.__setattr__(self, name, check_field(name, getattr(self, name)))
        if self.dp_orient in TRANSPOSING and self.frame_shape[0] != self.frame_shape[1]:
            _fail(
                "dp_orient",
                f"a non-transposing orientation for non-square frames {self.frame_shape} "
                "(crop the frames to a square to use " + ", ".join(TRANSPOSING) + ")",
                self.dp_orient,
            )
        self._check_beam_center_inside()
        if self.probe is not None and self.probe_path is not None:
            _fail("probe", "either probe or probe_path, not both", "both given")
        if self.mask is not None and tuple(getattr(self.mask, "shape", ())) != self.frame_shape:
            _fail(
                "mask",
                f"an array of shape {self.frame_shape}",
                getattr(self.mask, "shape", self.mask),
            )

    def _check_beam_center_inside(self) -> None:
        centre = self.beam_center_px
        if isinstance(centre, tuple) and not all(
            0 <= v <= s - 1 for v, s in zip(centre, self.frame_shape, strict=True)
        ):
            _fail("beam_center_px", f"(row, col) inside the {self.frame_shape} frame", centre)

    @property
    def wavelength_m(self) -> float:
        """Photon wavelength in metres."""
        return HC_KEV_M / self.energy_kev

    @property
    def object_pixel_m(self) -> tuple[float, float]:
        """Object pixel size (dy, dx) in metres."""
        rows, cols = self.frame_shape
        scale = self.wavelength_m * self.distance_m / self.detector_pixel_m
        return scale / rows, scale / cols

    def replace(self, **changes: Any) -> ReconConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all configuration fields."""
        return tuple(f.name for f in dataclasses.fields(cls))
