"""A simulated ptychography beamline for Bluesky: motors and three detectors.

The detectors record the diffraction pattern of a known object
(:class:`~bluesky_ptycho.sim.sample.SimulatedSample`) at the current motor
positions, with Poisson noise, in the three ways Bluesky carries images:

* :meth:`SimBeamline.inline_detector` - the image inline in each event
  (ophyd.sim ``DirectImage``-like), data key ``{name}_image``;
* :meth:`SimBeamline.file_detector` - one ``.npy`` file per frame, referenced by
  Resource/Datum (spec ``NPY_SEQ``, ophyd.sim ``SynSignalWithRegistry``),
  data key ``{name}_image``;
* :meth:`SimBeamline.hdf5_detector` - an ophyd-async detector writing SWMR HDF5
  and emitting StreamResource/StreamDatum for the image (data key ``{name}``)
  and for the positions it recorded (``{name}-x``, ``{name}-y``); it works in
  step scans and in fly scans (:func:`~bluesky_ptycho.sim.hdf5_detector.fly_scan`,
  no events at all).

Motors (``sx``, ``sy``, ophyd.sim ``SynAxis``) are in micrometres, matching
``position_scale_m = 1e-6``. :meth:`SimBeamline.metadata` gives the ``ptycho``
start-document dict for a detector.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from ophyd import Component, Device
from ophyd.sim import SynAxis, SynSignal, SynSignalWithRegistry

from ..config import ReconConfig
from .sample import (
    SimulatedSample,
    default_config,
    fermat_spiral,
    ptycho_metadata,
    simulate_scan,
)

FrameFunction = Callable[[float, float], np.ndarray]

#: scan step as a fraction of the frame width: the same overlap as ``simulate_scan``
DEFAULT_STEP_FRACTION: float = inspect.signature(simulate_scan).parameters["step_fraction"].default


class DescribesFrames:
    """Mixin for ophyd.sim signals: ``describe`` reports the frame shape and ``dtype_numpy``
    (ophyd.sim reports neither, and TiledWriter would then store float64)."""

    frame_shape: tuple[int, int] | None = None
    dtype_numpy: str = "<u4"

    def describe(self) -> dict[str, Any]:
        description = super().describe()  # type: ignore[misc]
        for entry in description.values():
            if self.frame_shape is not None:
                entry.update(dtype="array", shape=list(self.frame_shape))
            entry["dtype_numpy"] = self.dtype_numpy
        return description


class FrameSignal(DescribesFrames, SynSignal):
    """SynSignal whose ``describe`` reports the frame shape and ``dtype_numpy``."""


class InlineImageDetector(Device):
    """Triggers a :class:`FrameSignal` whose value (the frame) travels in the event."""

    image = Component(FrameSignal, kind="hinted")

    def trigger(self) -> Any:
        return self.image.trigger()


class NpySeqImage(DescribesFrames, SynSignalWithRegistry):
    """``NPY_SEQ`` file-backed image (Resource/Datum) that describes its shape and dtype."""


@dataclass
class SimBeamline:
    """A known sample on two motors, and detectors that image it (see module docstring)."""

    sample: SimulatedSample
    sx: SynAxis
    sy: SynAxis
    rng: np.random.Generator
    step_m: float
    exposure_s: float = 0.0  # simulated exposure time per frame (sleeps)

    @property
    def config(self) -> ReconConfig:
        return self.sample.config

    def frame_at(self, x_um: float, y_um: float) -> np.ndarray:
        """One recorded frame (uint32 counts) with the probe at these motor readings."""
        return self.sample.frame(x_um, y_um, self.rng)

    def frame(self) -> np.ndarray:
        """One recorded frame at the motors' current readback (after ``exposure_s``)."""
        if self.exposure_s > 0:
            time.sleep(self.exposure_s)
        return self.frame_at(float(self.sx.readback.get()), float(self.sy.readback.get()))

    def positions_um(self, n_points: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) motor positions of an ``n_points`` Fermat spiral, in micrometres."""
        x_m, y_m = fermat_spiral(n_points, self.step_m)
        scale = self.config.position_scale_m
        return x_m / (scale * self.config.x_direction), y_m / (scale * self.config.y_direction)

    def metadata(self, image_key: str, x_key: str = "sx", y_key: str = "sy", **extra: Any) -> dict:
        """The ``ptycho`` start-document dict that describes this beamline
        (:func:`~bluesky_ptycho.sim.sample.ptycho_metadata`)."""
        return ptycho_metadata(self.config, image_key, x_key, y_key, **extra)

    # ------------------------------------------------------------ detectors
    def inline_detector(self, name: str = "det") -> InlineImageDetector:
        """Images inline in events; data key ``{name}_image``."""
        detector = InlineImageDetector(name=name)
        detector.image.frame_shape = self.config.frame_shape
        detector.image.sim_set_func(self.frame)
        return detector

    def file_detector(self, directory: str | Path, name: str = "fdet") -> NpySeqImage:
        """One ``.npy`` per frame in ``directory`` (NPY_SEQ Resource/Datum): ``{name}_image``."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        detector = NpySeqImage(self.frame, name=f"{name}_image", save_path=str(directory))
        detector.frame_shape = self.config.frame_shape
        return detector

    def hdf5_detector(self, directory: str | Path, name: str = "xdet") -> Any:
        """ophyd-async HDF5 StreamResource detector (create it after the RunEngine exists).

        Returns a :class:`~bluesky_ptycho.sim.hdf5_detector.SimPtychoHDF5Detector`.
        """
        from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices

        from .hdf5_detector import SimPtychoHDF5Detector

        Path(directory).mkdir(parents=True, exist_ok=True)
        provider = StaticPathProvider(UUIDFilenameProvider(), PurePath(Path(directory).resolve()))
        with init_devices():
            xdet = SimPtychoHDF5Detector(
                provider,
                self.frame_at,
                lambda: (float(self.sx.readback.get()), float(self.sy.readback.get())),
                self.config.frame_shape,
                exposure_s=self.exposure_s,
                name=name,
            )
        return xdet


def make_beamline(
    frame_size: int = 64,
    step_fraction: float = DEFAULT_STEP_FRACTION,
    max_points: int = 1000,
    photons_per_frame: float = 1e6,
    seed: int = 0,
    config: ReconConfig | None = None,
    **sample_options: Any,
) -> SimBeamline:
    """A beamline whose sample covers a Fermat spiral of up to ``max_points`` points.

    step_fraction : mean step between points as a fraction of the frame width.
    sample_options : :meth:`SimulatedSample.create` keywords (``phase_gradient_rad_px``
        and the probe's ``defocus_m``, ``central_stop``...).
    """
    config = config or default_config(frame_size)
    step_m = step_fraction * config.frame_shape[1] * config.object_pixel_m[1]
    x_m, y_m = fermat_spiral(max_points, step_m)
    extent_m = 2 * float(max(np.abs(x_m).max(), np.abs(y_m).max()))
    sample = SimulatedSample.create(config, extent_m, photons_per_frame, seed, **sample_options)
    return SimBeamline(
        sample=sample,
        sx=SynAxis(name="sx"),
        sy=SynAxis(name="sy"),
        rng=np.random.default_rng(seed + 1),
        step_m=step_m,
    )
