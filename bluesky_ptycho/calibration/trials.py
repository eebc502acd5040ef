"""Short trial reconstructions on a subset of frames: the common step of every calibration.

A *trial* answers "how well does this configuration explain the data?" cheaply:

1. take the ``n_frames`` frames nearest the centre of the scan (a compact,
   fully overlapped patch: every frame constrains its neighbours);
2. crop every frame to an odd ``crop_px`` square centred on the zero frequency
   (pixel ``M//2``), wide enough to hold the bright-field disc and a rim of dark
   field. Cropping the far field keeps the field of view (the probe still fits)
   and only coarsens the object pixel, so the physics a trial tests - detector
   orientation, motor signs, probe defocus - is unchanged. An *odd* crop keeps
   the zero frequency on the centre pixel with the same number of pixels on
   each side, so every D4 transform is an exact mirror or rotation of the
   cropped data;
3. build a :class:`~bluesky_ptycho.Reconstructor` with the configuration under
   test, start cold (or warm, from the configured probe resampled to the crop),
   run ``iterations`` ML_grad iterations and return the Poisson NLL per valid
   pixel the engine reports for the last one.

The NLL is the engine's, relative to the saturated model: about 0.5 per pixel
for a converged fit at the noise level, larger while a trial is still
converging. Trials are compared with each other, never with that floor.

:func:`estimate_beam` reads the convergence angle of the focusing optic off the
mean diffraction pattern: its bright-field disc has radius
``semiangle_rad * distance_m`` on the detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ReconConfig

#: frames in a trial (nearest the scan centre)
DEFAULT_TRIAL_FRAMES = 48
#: smallest automatic crop (pixels, odd)
MIN_CROP_PX = 25
#: automatic crop = this many bright-field disc diameters (plus two pixels), rounded up to odd
CROP_DISC_DIAMETERS = 1.5
#: a defocused probe may fill this fraction of the field of view (sets the defocus range)
PROBE_FILL = 0.75
#: the disc edge is where the radial profile falls to this fraction of its plateau
EDGE_LEVEL = 0.5


@dataclass(frozen=True)
class BeamEstimate:
    """The illumination as the mean diffraction pattern shows it.

    disc_radius_px : outer radius of the bright-field disc, detector pixels.
    semiangle_rad : convergence semi-angle, ``disc_radius_px * detector_pixel_m / distance_m``.
    depth_of_focus_m : ``wavelength_m / semiangle_rad**2``: the defocus change that
        visibly changes the probe.
    max_defocus_m : distance from focus at which the geometric probe (diameter
        ``2 * semiangle_rad * |z|``) fills ``PROBE_FILL`` of the field of view.
    """

    disc_radius_px: float
    semiangle_rad: float
    depth_of_focus_m: float
    max_defocus_m: float


@dataclass(frozen=True)
class TrialSet:
    """The frames and configuration trials run on.

    frames : (n, m, m) counts as recorded (detector orientation), cropped to ``crop_px``.
    x, y : (n,) motor readings of those frames.
    config : the caller's configuration with ``frame_shape=(m, m)``, the mask
        cropped, a configured ``beam_center_px`` in pixels of the crop, a
        warm-start probe resampled to the crop (``probe``, never ``probe_path``).
    indices : (n,) positions of these frames in the caller's arrays.
    beam : what the mean pattern says about the illumination (None if no disc was found).
    probe_model : the caller's probe model in words ("cold start", "warm start (FILE)").
    """

    frames: np.ndarray
    x: np.ndarray
    y: np.ndarray
    config: ReconConfig
    indices: np.ndarray
    beam: BeamEstimate | None
    probe_model: str = "cold start"

    @property
    def crop_px(self) -> int:
        return int(self.frames.shape[-1])


def central_subset(x: Any, y: Any, n_frames: int) -> np.ndarray:
    """Indices (sorted) of the ``n_frames`` positions nearest the median position."""
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    distance = np.hypot(x - np.median(x), y - np.median(y))
    return np.sort(np.argsort(distance, kind="stable")[: max(1, n_frames)])


def crop_centre(frames: Any, size: int) -> Any:
    """The ``size`` x ``size`` square of the last two axes centred on pixel (M//2, N//2)."""
    rows, cols = frames.shape[-2:]
    if size > min(rows, cols):
        raise ValueError(f"crop: {size} pixels is larger than the {rows}x{cols} frame")
    top, left = rows // 2 - size // 2, cols // 2 - size // 2
    return frames[..., top : top + size, left : left + size]


def resample_probe(probe: np.ndarray, size: int) -> np.ndarray:
    """A centred (M, N) probe on the grid of a far field cropped to ``size`` x ``size``.

    Crops the probe's centred spectrum to the same pixels as :func:`crop_centre`
    crops the frames; the result samples the same field of view with coarser
    pixels (scale irrelevant: the engine rescales every initial probe).
    """
    spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(probe)))
    cropped = crop_centre(spectrum, size)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(cropped))).astype(probe.dtype)


def valid_pixels(frames: np.ndarray, config: ReconConfig) -> np.ndarray:
    """Boolean (n, M, N): pixels the engine keeps (finite, >= 0, unsaturated, mask != 0)."""
    good = np.isfinite(frames) & (frames >= 0)
    if config.saturation_counts is not None:
        good &= frames < config.saturation_counts
    if config.mask is not None:
        good &= np.asarray(config.mask) != 0
    return good


def mean_pattern(frames: np.ndarray, config: ReconConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the valid pixels over frames, and where any frame had a valid value."""
    frames = np.asarray(frames, np.float64)
    good = valid_pixels(frames, config)
    counts = good.sum(axis=0)
    total = np.where(good, frames, 0).sum(axis=0)
    return total / np.maximum(counts, 1), counts > 0


def bright_field_radius_px(pattern: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Outer radius (pixels) of the bright-field disc of a DC-centred mean pattern.

    Azimuthal average about pixel (M//2, N//2); the plateau is the median of
    the profile where it exceeds a tenth of its peak; the edge is the outermost
    radius where the profile is still ``EDGE_LEVEL`` of the plateau, interpolated
    linearly to the next radius. Works for a disc with a central stop (annulus).
    """
    rows, cols = pattern.shape
    if valid is None:
        valid = np.isfinite(pattern)
    r = np.hypot(
        *np.meshgrid(np.arange(rows) - rows // 2, np.arange(cols) - cols // 2, indexing="ij")
    )
    limit = min(rows, cols) // 2
    bins = np.round(r).astype(int)
    use = valid & (bins < limit)
    sums = np.bincount(bins[use], weights=pattern[use], minlength=limit)
    counts = np.bincount(bins[use], minlength=limit)
    profile = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    peak = float(profile.max())
    if not peak > 0:
        raise ValueError("bright-field disc: the mean diffraction pattern is empty")
    plateau = float(np.median(profile[profile >= 0.1 * peak]))
    level = EDGE_LEVEL * plateau
    inside = np.flatnonzero(profile >= level)
    edge = int(inside[-1])
    if edge + 1 >= limit:
        return float(edge)  # the disc fills the frame: a lower bound
    high, low = profile[edge], profile[edge + 1]
    return float(edge + (high - level) / (high - low))


def estimate_beam(frames: Any, config: ReconConfig) -> BeamEstimate:
    """Convergence angle, depth of focus and defocus range from the mean pattern.

    frames : (n, M, N) counts as recorded (DC centred); masked, saturated and
        negative pixels are ignored.
    """
    pattern, valid = mean_pattern(np.asarray(frames), config)
    radius = bright_field_radius_px(pattern, valid)
    if radius < 1:
        raise ValueError(
            f"bright-field disc: radius {radius:.2f} pixels is too small to measure a "
            "convergence angle; give the defocus range explicitly"
        )
    semiangle = radius * config.detector_pixel_m / config.distance_m
    field_of_view_m = config.wavelength_m * config.distance_m / config.detector_pixel_m
    return BeamEstimate(
        disc_radius_px=radius,
        semiangle_rad=semiangle,
        depth_of_focus_m=config.wavelength_m / semiangle**2,
        max_defocus_m=PROBE_FILL * field_of_view_m / (2 * semiangle),
    )


def auto_crop_px(frame_shape: tuple[int, int], beam: BeamEstimate | None) -> int:
    """Odd crop of ``CROP_DISC_DIAMETERS`` disc diameters (>= ``MIN_CROP_PX``, <= the frame)."""
    largest = min(frame_shape)
    largest -= 1 - largest % 2  # odd
    if beam is None:
        return largest
    wanted = max(MIN_CROP_PX, math.ceil(CROP_DISC_DIAMETERS * 2 * beam.disc_radius_px) + 2)
    wanted += 1 - wanted % 2
    return int(min(wanted, largest))


def prepare_trials(
    frames: Any,
    x: Any,
    y: Any,
    config: ReconConfig,
    n_frames: int = DEFAULT_TRIAL_FRAMES,
    crop_px: int | None = None,
) -> TrialSet:
    """Select, read and crop the frames trials run on (see module docstring).

    frames : (n, M, N) counts as recorded: an array or an h5py dataset (only
        the selected frames are read).
    x, y : (n,) motor readings.
    crop_px : odd crop size in pixels, or None for :func:`auto_crop_px`.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if frames.ndim != 3 or frames.shape[0] != x.size or y.size != x.size:
        raise ValueError(
            f"calibration: need (n, M, N) frames with n x and n y readings, got frames "
            f"{tuple(frames.shape)}, {x.size} x and {y.size} y"
        )
    if tuple(frames.shape[1:]) != config.frame_shape:
        raise ValueError(
            f"calibration: frames are {tuple(frames.shape[1:])}, ReconConfig.frame_shape is "
            f"{config.frame_shape}"
        )
    if not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"calibration: n_frames must be an integer >= 1, got {n_frames!r}")
    indices = central_subset(x, y, n_frames)
    subset = read_frames(frames, indices)
    try:
        beam: BeamEstimate | None = estimate_beam(subset, config)
    except ValueError:
        beam = None
    size = auto_crop_px(config.frame_shape, beam) if crop_px is None else int(crop_px)
    if size % 2 == 0 or size < 8 or size > min(config.frame_shape):
        raise ValueError(
            f"calibration: crop_px must be odd, >= 9 and at most the frame size "
            f"{min(config.frame_shape)}, got {crop_px!r}"
        )
    changes: dict[str, Any] = {"frame_shape": (size, size), "probe_path": None}
    if isinstance(config.beam_center_px, tuple):  # recorded pixels -> pixels of the crop
        offset = np.array(config.frame_shape) // 2 - size // 2
        centre = tuple(float(v) for v in np.array(config.beam_center_px) - offset)
        if not all(0 <= v <= size - 1 for v in centre):
            raise ValueError(
                f"calibration: beam_center_px {config.beam_center_px} lies outside the "
                f"{size}x{size} trial crop around the frame centre; give a larger crop_px"
            )
        changes["beam_center_px"] = centre
    if config.mask is not None:
        changes["mask"] = np.ascontiguousarray(crop_centre(np.asarray(config.mask), size))
    probe = warm_probe(config)
    if probe is not None:
        if probe.shape != config.frame_shape:
            raise ValueError(
                f"ReconConfig.probe: expected shape {config.frame_shape} (frame_shape), "
                f"got {probe.shape}"
            )
        changes["probe"] = resample_probe(probe.astype(np.complex128), size)
    return TrialSet(
        frames=np.ascontiguousarray(crop_centre(subset, size)),
        x=x[indices],
        y=y[indices],
        config=config.replace(**changes),
        indices=indices,
        beam=beam,
        probe_model=describe_probe_model(config),
    )


def describe_probe_model(config: ReconConfig) -> str:
    """'cold start' or 'warm start (FILE)', without the propagation distance."""
    if config.probe is not None:
        return "warm start (array)"
    if config.probe_path is not None:
        return f"warm start ({config.probe_path})"
    return "cold start"


def read_frames(frames: Any, indices: np.ndarray) -> np.ndarray:
    """``frames[indices]`` as a NumPy array from a NumPy, CuPy or h5py (n, M, N) stack."""
    if isinstance(frames, np.ndarray):
        return frames[indices]
    if hasattr(frames, "__cuda_array_interface__"):
        from ..engine.backend import to_host

        return to_host(frames[indices])
    return np.asarray(frames[list(indices)])  # h5py: sorted index lists only


def warm_probe(config: ReconConfig) -> np.ndarray | None:
    """The configured warm-start probe (first mode), or None for a cold start."""
    from ..engine.probe_init import first_mode, load_probe

    if config.probe is not None:
        return first_mode(np.asarray(config.probe), "ReconConfig.probe")
    if config.probe_path is not None:
        return load_probe(config.probe_path)
    return None


def trial_config(trials: TrialSet, **changes: Any) -> ReconConfig:
    """The configuration a trial runs: ``trials.config`` with ``changes``.

    A cold start without ``beam_center_px`` holds the probe where the data put it
    (``"data"``): a trial compares NLLs, which the phase-ramp convention does not
    change, so no candidate starts with a ramp to build.
    """
    config = trials.config.replace(**changes)
    if config.beam_center_px is None:
        config = config.replace(beam_center_px="data")
    return config


def trial_positions(
    trials: TrialSet, config: ReconConfig, round_positions: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The trial's motor readings, moved to whole trial pixels with ``round_positions``.

    Rounded, mirror-image candidates see exactly mirrored problems (no sub-pixel
    interpolation, see :mod:`.orientation`).
    """
    if not round_positions:
        return trials.x, trials.y
    dy, dx = config.object_pixel_m
    scale = config.position_scale_m
    return (
        np.round(trials.x * scale / dx) * dx / scale,
        np.round(trials.y * scale / dy) * dy / scale,
    )


def check_iterations(iterations: Any) -> None:
    """ValueError unless ``iterations`` is an integer >= 1."""
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"calibration: iterations must be an integer >= 1, got {iterations!r}")


def nll_per_valid_pixel(nll: Any, n_pixels: int, excluded: Any) -> np.ndarray:
    """NLL divided by the valid pixels (``n_pixels - excluded``); ValueError if none are."""
    valid = n_pixels - np.asarray(excluded, np.float64)
    if (valid <= 0).any():
        raise ValueError("calibration: every pixel of the trial frames is excluded")
    return np.asarray(nll, np.float64) / valid


class ReconstructorTrial:
    """One trial run by its own :class:`~bluesky_ptycho.Reconstructor` (the engine itself).

    The runner interface of :mod:`.batch` for a single trial: ``iterate``,
    ``nll_per_pixel`` and ``keep``, with ``size`` trials (1, or 0 once dropped).
    """

    def __init__(
        self,
        trials: TrialSet,
        changes: dict[str, Any],
        backend: str = "auto",
        round_positions: bool = False,
    ) -> None:
        from ..engine.reconstructor import Reconstructor

        config = trial_config(trials, **changes)
        self._rec = Reconstructor(config, backend=backend)
        self._rec.add_frames(trials.frames, *trial_positions(trials, config, round_positions))
        self._pixels = int(trials.frames.size)
        self._nll = math.nan
        self.size = 1

    def iterate(self, n_iterations: int) -> None:
        self._nll = self._rec.iterate(n_iterations)

    def nll_per_pixel(self) -> np.ndarray:
        """(1,) Poisson NLL of the last iteration per valid pixel."""
        excluded = self._rec.snapshot(live=False).metrics["excluded_pixels"]
        return nll_per_valid_pixel([self._nll], self._pixels, excluded)

    def keep(self, indices: np.ndarray) -> None:
        self.size = int(0 in indices)


def run_trial(
    trials: TrialSet,
    iterations: int,
    backend: str = "auto",
    round_positions: bool = False,
    **changes: Any,
) -> float:
    """Poisson NLL per valid pixel after ``iterations`` on ``trials`` with ``changes``.

    One :class:`~bluesky_ptycho.Reconstructor` (see :mod:`.batch` for many trials at once).
    round_positions : move every probe position to the nearest whole object pixel
        of the trial grid (:func:`trial_positions`).
    changes : ReconConfig fields to try, e.g. ``probe_propagation_m=z`` or
        ``dp_orient="rot90_cw", x_direction=-1``.
    """
    check_iterations(iterations)
    trial = ReconstructorTrial(trials, changes, backend, round_positions)
    trial.iterate(iterations)
    return float(trial.nll_per_pixel()[0])
