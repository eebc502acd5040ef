"""Simulated ptychography data with a known object and probe.

Frames are produced the way a detector records them: Poisson photon counts, DC
in the centre, in detector orientation (the inverse of ``dp_orient`` applied),
with motor readings that map to probe positions through the configuration's
``position_scale_m`` and directions. Sub-pixel positions are modelled exactly
(Fourier shift of the probe), independently of the engine's bilinear shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..config import ReconConfig
from ..engine.orientation import inverse_orientation, orient_frames
from ..engine.propagation import propagate

GOLDEN_ANGLE = np.pi * (3 - np.sqrt(5))
#: bytes of complex128 work per simulation batch
SIM_BATCH_BYTES = 256 * 2**20
#: counts of a stuck ("hot") detector pixel in simulated frames
HOT_PIXEL_COUNTS = 1_000_000
#: settings of :func:`simulate_scan` that make a scan look like beamline data: a sample
#: with a mean phase gradient, a centrally stopped probe defocused by 60 um, a low dose
#: and stuck pixels (positions of a spiral are sub-pixel already)
BEAMLINE_LIKE: dict[str, Any] = {
    "phase_gradient_rad_px": (0.04, -0.06),
    "photons_per_frame": 2e5,
    "hot_pixels": 3,
    "central_stop": 0.35,
    "defocus_m": 60e-6,
}


def smooth_field(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise, rank-transformed to a uniform spread over [0, 1]."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    field = np.fft.ifft2(
        np.fft.fft2(noise) * np.exp(-2 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))
    )
    ranks = np.argsort(np.argsort(field.real, axis=None)).reshape(shape)
    return ranks / (ranks.size - 1)


def make_object(
    shape: tuple[int, int],
    seed: int = 0,
    feature_px: float = 2.0,
    phase_rad: float = 1.5,
    phase_gradient_rad_px: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """A complex test object: amplitude 0.5..1, phase within +-``phase_rad`` / 2.

    Features are ~``feature_px`` object pixels wide. ``phase_gradient_rad_px``
    (row, col) adds a mean phase gradient in radians per object pixel, as a wedge
    or a tilted substrate gives almost every real sample (it deflects the beam).
    """
    rng = np.random.default_rng(seed)
    amplitude = 0.5 + 0.5 * smooth_field(shape, feature_px, rng)
    phase = phase_rad * (smooth_field(shape, feature_px, rng) - 0.5)
    rows = (np.arange(shape[0]) - shape[0] / 2)[:, None]
    cols = (np.arange(shape[1]) - shape[1] / 2)[None, :]
    phase = phase + phase_gradient_rad_px[0] * rows + phase_gradient_rad_px[1] * cols
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def make_probe(
    config: ReconConfig,
    semiangle_rad: float = 0.96e-3,
    defocus_m: float = 60e-6,
    central_stop: float = 0.0,
) -> np.ndarray:
    """A zone-plate-like probe, centred, unit power.

    semiangle_rad : convergence semi-angle of the focusing optic (its pupil radius
        on the detector is ``semiangle_rad * distance_m`` metres, independent of M).
    defocus_m : distance from focus to the sample (angular spectrum).
    central_stop : radius of the central stop as a fraction of the pupil radius.

    The defaults give a probe ~1/3 of the field of view wide at any frame size.
    """
    rows, cols = config.frame_shape
    pupil_px = semiangle_rad * config.distance_m / config.detector_pixel_m
    fy = np.fft.fftfreq(rows)[:, None] * rows
    fx = np.fft.fftfreq(cols)[None, :] * cols
    radius = np.hypot(fy, fx) / pupil_px
    pupil = ((radius <= 1) & (radius >= central_stop)).astype(np.complex64)
    focus = np.fft.fftshift(np.fft.ifft2(pupil))
    probe = propagate(
        focus.astype(np.complex64), defocus_m, config.object_pixel_m, config.wavelength_m
    )
    return (probe / np.sqrt((np.abs(probe) ** 2).sum())).astype(np.complex64)


def fermat_spiral(n_points: int, step_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(x_m, y_m) of a Fermat spiral with mean nearest-neighbour distance ~``step_m``."""
    k = np.arange(n_points)
    radius = step_m * np.sqrt(k) * 0.55
    return radius * np.cos(k * GOLDEN_ANGLE), radius * np.sin(k * GOLDEN_ANGLE)


def raster(
    nx: int, ny: int, step_m: float, jitter: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(x_m, y_m) of a centred raster, x fastest, with random jitter (fraction of a step)."""
    rng = np.random.default_rng(seed)
    y_grid, x_grid = np.meshgrid(
        (np.arange(ny) - (ny - 1) / 2) * step_m,
        (np.arange(nx) - (nx - 1) / 2) * step_m,
        indexing="ij",
    )
    shake = rng.uniform(-jitter, jitter, (2, ny * nx)) * step_m
    return x_grid.ravel() + shake[0], y_grid.ravel() + shake[1]


@dataclass
class SimulatedSample:
    """A known object and probe that turn motor readings into detector frames.

    ``object`` covers the scan; its pixel [0, 0] lies at ``origin_m`` (y, x), a
    whole number of object pixels, so it lines up with the engine's canvas grid.
    """

    config: ReconConfig
    object: np.ndarray
    probe: np.ndarray
    origin_m: tuple[float, float]
    photons_per_frame: float

    @classmethod
    def create(
        cls,
        config: ReconConfig,
        extent_m: float,
        photons_per_frame: float = 1e6,
        seed: int = 0,
        *,
        phase_gradient_rad_px: tuple[float, float] = (0.0, 0.0),
        **probe_options: float,
    ) -> SimulatedSample:
        """A sample covering probe positions within +-``extent_m`` / 2 of the origin.

        ``phase_gradient_rad_px``: see :func:`make_object`; ``probe_options``: see
        :func:`make_probe`.
        """
        dy, dx = config.object_pixel_m
        rows, cols = config.frame_shape
        half_y = int(np.ceil(extent_m / 2 / dy)) + rows
        half_x = int(np.ceil(extent_m / 2 / dx)) + cols
        obj = make_object(
            (2 * half_y, 2 * half_x), seed=seed, phase_gradient_rad_px=phase_gradient_rad_px
        )
        probe = make_probe(config, **probe_options) * np.sqrt(photons_per_frame)
        return cls(
            config, obj, probe.astype(np.complex64), (-half_y * dy, -half_x * dx), photons_per_frame
        )

    def expected_intensities(self, x_motor: Any, y_motor: Any, xp: ModuleType = np) -> Any:
        """Noise-free far-field intensities (n, M, N) on ``xp``, engine orientation, DC centred."""
        cfg = self.config
        dy, dx = cfg.object_pixel_m
        rows, cols = cfg.frame_shape
        x_motor = np.atleast_1d(np.asarray(x_motor, np.float64))
        y_motor = np.atleast_1d(np.asarray(y_motor, np.float64))
        top = (y_motor * cfg.position_scale_m * cfg.y_direction - self.origin_m[0]) / dy - rows // 2
        left = (
            x_motor * cfg.position_scale_m * cfg.x_direction - self.origin_m[1]
        ) / dx - cols // 2
        r0, c0 = np.floor(top).astype(np.int64), np.floor(left).astype(np.int64)
        outside = (r0 < 0) | (c0 < 0) | (r0 + rows > self.object.shape[0])
        outside |= c0 + cols > self.object.shape[1]
        if outside.any():
            k = int(np.argmax(outside))
            raise ValueError(
                f"position x={x_motor[k]}, y={y_motor[k]} lies outside the simulated sample"
            )
        # Exact sub-pixel shift of the probe: a phase ramp on its spectrum.
        fy = xp.asarray(np.fft.fftfreq(rows))[None, :, None]
        fx = xp.asarray(np.fft.fftfreq(cols))[None, None, :]
        frac_r = xp.asarray((top - r0)[:, None, None])
        frac_c = xp.asarray((left - c0)[:, None, None])
        spectrum = xp.fft.fft2(xp.asarray(self.probe, dtype=np.complex128))
        probes = xp.fft.ifft2(spectrum[None] * xp.exp(-2j * np.pi * (fy * frac_r + fx * frac_c)))
        rows_index = xp.asarray(r0[:, None, None] + np.arange(rows)[None, :, None])
        cols_index = xp.asarray(c0[:, None, None] + np.arange(cols)[None, None, :])
        far_field = xp.fft.fft2(
            probes * xp.asarray(self.object)[rows_index, cols_index], norm="ortho"
        )
        return xp.fft.fftshift(far_field.real**2 + far_field.imag**2, axes=(-2, -1))

    def expected_intensity(self, x_motor: float, y_motor: float) -> np.ndarray:
        """One noise-free (M, N) pattern: :meth:`expected_intensities` of a single position."""
        return self.expected_intensities([x_motor], [y_motor])[0]

    def frames(
        self, x_motor: Any, y_motor: Any, rng: int | np.random.Generator = 0, xp: ModuleType = np
    ) -> Any:
        """Detector frames (n, M, N) uint32 on ``xp`` as recorded at these motor readings.

        Poisson counts, DC centred, in detector orientation; generated in batches.
        ``rng`` is a seed, or a NumPy generator when ``xp`` is NumPy.
        """
        rows, cols = self.config.frame_shape
        x_motor, y_motor = np.atleast_1d(x_motor), np.atleast_1d(y_motor)
        batch = max(1, SIM_BATCH_BYTES // (16 * rows * cols))
        if not isinstance(rng, np.random.Generator):
            rng = xp.random.default_rng(rng)
        undo = inverse_orientation(self.config.dp_orient)
        out = xp.empty((len(x_motor), *self.config.frame_shape), np.uint32)
        for start in range(0, len(x_motor), batch):
            stop = start + batch
            intensity = self.expected_intensities(x_motor[start:stop], y_motor[start:stop], xp)
            out[start:stop] = orient_frames(rng.poisson(intensity).astype(np.uint32), undo)
        return out

    def frame(
        self, x_motor: float, y_motor: float, rng: int | np.random.Generator = 0
    ) -> np.ndarray:
        """One detector frame (uint32 photon counts) as recorded at these motor readings."""
        return self.frames([x_motor], [y_motor], rng)[0]


@dataclass
class SimulatedScan:
    """A whole simulated scan: frames as recorded, motor readings and the truth.

    hot_pixels : (k, 2) (row, col) of pixels stuck at ``HOT_PIXEL_COUNTS`` in every
        frame as recorded (exclude them with ``saturation_counts`` or a mask).
    """

    sample: SimulatedSample
    frames: np.ndarray
    x_motor: np.ndarray
    y_motor: np.ndarray
    hot_pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    @property
    def config(self) -> ReconConfig:
        return self.sample.config

    def write_cxi(self, path: str | Path, mask: np.ndarray | None = None) -> Path:
        """Write the scan as a CXI file (see :mod:`bluesky_ptycho.cxi`).

        mask : detector mask to store (nonzero = good pixel), e.g. the hot pixels.
        """
        from ..cxi import write_cxi

        cfg = self.config if mask is None else self.config.replace(mask=mask)
        positions_m = np.stack(
            [
                self.x_motor * cfg.position_scale_m * cfg.x_direction,
                self.y_motor * cfg.position_scale_m * cfg.y_direction,
            ],
            axis=1,
        )
        return write_cxi(
            path,
            self.frames,
            positions_m,
            cfg,
            truth_object=self.sample.object,
            truth_origin_m=self.sample.origin_m,
        )


def default_config(frame_size: int = 64, **changes: object) -> ReconConfig:
    """The geometry used by the simulations (9 keV, 0.5 m, 75 um pixels)."""
    base = {
        "energy_kev": 9.0,
        "distance_m": 0.5,
        "detector_pixel_m": 75e-6,
        "frame_shape": (frame_size, frame_size),
    }
    base.update(changes)
    return ReconConfig(**base)  # type: ignore[arg-type]


def ptycho_metadata(
    config: ReconConfig, image_key: str, x_key: str = "sx", y_key: str = "sy", **extra: Any
) -> dict[str, Any]:
    """The start document's ``ptycho`` dict for a scan of ``config``'s geometry.

    Geometry (``energy_kev``, ``distance_m``, ``detector_pixel_m``,
    ``position_scale_m``, ``dp_orient``), the data keys of the image and the
    motors, and any ``extra`` callback settings (``refine_iterations``...).
    """
    return {
        "energy_kev": config.energy_kev,
        "distance_m": config.distance_m,
        "detector_pixel_m": config.detector_pixel_m,
        "position_scale_m": config.position_scale_m,
        "dp_orient": config.dp_orient,
        "image_key": image_key,
        "x_key": x_key,
        "y_key": y_key,
        **extra,
    }


def scan_positions(
    config: ReconConfig,
    n_frames: int,
    step_fraction: float = 0.12,
    scan: str = "spiral",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(x_m, y_m) of ``n_frames`` positions spaced ``step_fraction`` of the field of view.

    scan : "spiral" (Fermat) or "raster" (jittered, x fastest).
    """
    step_m = step_fraction * config.frame_shape[1] * config.object_pixel_m[1]
    if scan == "spiral":
        return fermat_spiral(n_frames, step_m)
    if scan == "raster":
        side = int(np.ceil(np.sqrt(n_frames)))
        x_m, y_m = raster(side, side, step_m, seed=seed)
        return x_m[:n_frames], y_m[:n_frames]
    raise ValueError(f"scan: expected 'spiral' or 'raster', got {scan!r}")


def simulate_scan(
    config: ReconConfig | None = None,
    n_frames: int = 200,
    step_fraction: float = 0.12,
    scan: str = "spiral",
    photons_per_frame: float = 1e6,
    seed: int = 0,
    xp: ModuleType = np,
    *,
    phase_gradient_rad_px: tuple[float, float] = (0.0, 0.0),
    hot_pixels: int = 0,
    **probe_options: float,
) -> SimulatedScan:
    """Simulate a scan (see :func:`scan_positions`); frames on ``xp`` (NumPy or CuPy).

    ``phase_gradient_rad_px``: see :func:`make_object`. ``hot_pixels``: that many
    random pixels stuck at ``HOT_PIXEL_COUNTS``. ``probe_options``: see
    :func:`make_probe`. ``simulate_scan(config, n, **BEAMLINE_LIKE)`` looks like
    beamline data.
    """
    config = config or default_config()
    x_m, y_m = scan_positions(config, n_frames, step_fraction, scan, seed)
    extent = 2 * float(max(np.abs(x_m).max(), np.abs(y_m).max()))
    sample = SimulatedSample.create(
        config,
        extent,
        photons_per_frame,
        seed,
        phase_gradient_rad_px=phase_gradient_rad_px,
        **probe_options,
    )
    x_motor = x_m / (config.position_scale_m * config.x_direction)
    y_motor = y_m / (config.position_scale_m * config.y_direction)
    frames = sample.frames(x_motor, y_motor, seed + 1, xp)
    rng = np.random.default_rng(seed + 2)
    flat = rng.choice(frames.shape[1] * frames.shape[2], size=hot_pixels, replace=False)
    hot = np.stack(np.unravel_index(flat, frames.shape[1:]), axis=1)
    frames[:, xp.asarray(hot[:, 0]), xp.asarray(hot[:, 1])] = HOT_PIXEL_COUNTS
    return SimulatedScan(sample, frames, x_motor, y_motor, hot)
