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
import math
from dataclasses import dataclass, field
from typing import Any

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

DTYPES: tuple[str, ...] = ("complex64", "complex128")
POSITION_INTERPOLATIONS: tuple[str, ...] = ("cubic", "linear", "nearest")


def _fail(name: str, expected: str, got: Any) -> None:
    raise ValueError(f"ReconConfig.{name}: expected {expected}, got {got!r}")


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

    def __post_init__(self) -> None:
        for name in ("energy_kev", "distance_m", "detector_pixel_m", "position_scale_m"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                _fail(name, "a finite number > 0", value)
        shape = self.frame_shape
        if (
            not isinstance(shape, (tuple, list))
            or len(shape) != 2
            or not all(isinstance(s, int) and s >= 8 for s in shape)
        ):
            _fail("frame_shape", "(rows, columns), two integers >= 8", shape)
        object.__setattr__(self, "frame_shape", (int(shape[0]), int(shape[1])))
        if self.dp_orient not in D4_ORIENTATIONS:
            _fail("dp_orient", f"one of {', '.join(D4_ORIENTATIONS)}", self.dp_orient)
        if self.dp_orient in TRANSPOSING and self.frame_shape[0] != self.frame_shape[1]:
            _fail(
                "dp_orient",
                f"a non-transposing orientation for non-square frames {self.frame_shape} "
                "(crop the frames to a square to use " + ", ".join(TRANSPOSING) + ")",
                self.dp_orient,
            )
        for name in ("x_direction", "y_direction"):
            if getattr(self, name) not in (1, -1):
                _fail(name, "+1 or -1", getattr(self, name))
        if self.dtype not in DTYPES:
            _fail("dtype", "'complex64' or 'complex128'", self.dtype)
        if not isinstance(self.probe_hold_iterations, int) or self.probe_hold_iterations < 0:
            _fail("probe_hold_iterations", "an integer >= 0", self.probe_hold_iterations)
        if not math.isfinite(self.probe_propagation_m):
            _fail("probe_propagation_m", "a finite distance in metres", self.probe_propagation_m)
        if self.saturation_counts is not None and not self.saturation_counts > 0:
            _fail("saturation_counts", "None or a count > 0", self.saturation_counts)
        if not 0 < self.alpha_relative < 1:
            _fail("alpha_relative", "a number in (0, 1)", self.alpha_relative)
        if not isinstance(self.object_margin_px, int) or self.object_margin_px < 0:
            _fail("object_margin_px", "an integer >= 0", self.object_margin_px)
        if self.position_interpolation not in POSITION_INTERPOLATIONS:
            _fail(
                "position_interpolation",
                f"one of {', '.join(POSITION_INTERPOLATIONS)}",
                self.position_interpolation,
            )
        self._check_beam_center()
        if not isinstance(self.remove_object_ramp, bool):
            _fail("remove_object_ramp", "True or False", self.remove_object_ramp)
        smoothness = self.object_smoothness
        if (
            isinstance(smoothness, bool)
            or not isinstance(smoothness, (int, float))
            or not math.isfinite(smoothness)
            or smoothness < 0
        ):
            _fail("object_smoothness", "a finite number >= 0", smoothness)
        if self.probe is not None and self.probe_path is not None:
            _fail("probe", "either probe or probe_path, not both", "both given")
        if self.mask is not None and tuple(getattr(self.mask, "shape", ())) != self.frame_shape:
            _fail(
                "mask",
                f"an array of shape {self.frame_shape}",
                getattr(self.mask, "shape", self.mask),
            )

    def _check_beam_center(self) -> None:
        centre = self.beam_center_px
        if centre is None or centre == "data":
            return
        expected = (
            f"None, 'data' or (row, col) inside the {self.frame_shape} frame, in detector pixels"
        )
        if not isinstance(centre, (tuple, list)) or len(centre) != 2:
            _fail("beam_center_px", expected, centre)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in centre):
            _fail("beam_center_px", expected, centre)
        if not all(0 <= v <= s - 1 for v, s in zip(centre, self.frame_shape, strict=True)):
            _fail("beam_center_px", expected, centre)
        object.__setattr__(self, "beam_center_px", (float(centre[0]), float(centre[1])))

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
