"""Streaming ML_grad (maximum likelihood, Poisson) ptychography engine.

One object and probe estimate improved by :meth:`Reconstructor.iterate`, with
frames joining through :meth:`Reconstructor.add_frames` between any two
iterations. The same code runs on NumPy and CuPy arrays.

Forward model for frame ``j`` (docs/engine.md): ``a_j = FFT_ortho(P_j * O_j)``
with ``O_j`` the M x N object window at the integer corner of the probe
position and ``P_j`` the probe shifted by the fractional remainder
(``position_interpolation``, :mod:`.shift`).

Each iteration: model far fields -> far-field gradient -> one inverse FFT ->
preconditioned object and probe gradients -> Polak-Ribiere conjugate direction
-> forward FFTs of the direction's first- and second-order exit-wave terms ->
line search of the likelihood (several steps per read of the far fields) ->
update of object and probe. The likelihood is Poisson's, except for up to
``ReconConfig.amplitude_iterations`` iterations after frames were last added,
which fit the better-conditioned amplitude model (:mod:`.poisson`) until it
stops lowering the Poisson NLL (``AMPLITUDE_STALL_ITERATIONS`` iterations in a row
that lower it by less than ``AMPLITUDE_STALL_RELATIVE``; an iteration's NLL reaches
the host while the next one is queued, so the test acts one iteration later). What is
kept per frame between these passes, and so how many transforms an iteration
takes, is ``ReconConfig.frame_storage`` (:mod:`.passes`); with ``"stacks"``
the stored far fields follow the update by linearity and are recomputed every
``REFRESH_EVERY`` iterations to bound rounding drift.

A linear phase ramp moved from the probe to the object leaves every exit wave
unchanged up to a constant phase: the data cannot fix it. The engine fixes it
by convention: the probe's far field is held on the beam axis (:mod:`.gauge`:
a warm probe's own far-field centre, else ``beam_center_px``, else the frame
centre), never on the mean pattern's centroid, which a sample with a mean
phase gradient moves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import ReconConfig
from . import elementwise, gauge, passes, shift, smoothness, workspace
from .backend import Readback, array_module_of, get_array_module, is_cupy, to_host
from .collectives import make_collectives
from .frames import FrameStore, route, stripe_edges
from .operators import ArrayOperators, EngineOperators, frame_chunks
from .orientation import orient_frames, oriented_point
from .probe_init import cold_start_probe, first_mode, load_probe, scale_to_photons
from .propagation import propagate
from .transforms import TRANSFORMS

#: iterations between full recomputations of the stored far fields
REFRESH_EVERY = 10
#: far-field centre offset (detector pixels) below which the probe is not re-tilted
RAMP_TOLERANCE_PX = 1e-3
#: probe tilt (detector pixels off the beam axis) that triggers an early refresh: the
#: probe must not absorb the object's phase gradients while the object is still flat
BEAM_DRIFT_PX = 0.02
#: a store holding more than this times the mean number of frames redraws the stripes
REBALANCE_RATIO = 1.25
#: iterations between checks of that tilt (2 ms a check at 256 x 256 on an H200, 5-12 %
#: of an iteration), and at every refresh
BEAM_CHECK_EVERY = 5
#: pixels of a batch preprocessed at once by add_frames (128 frames of 256 x 256)
ADD_CHUNK_PIXELS = 2**23
#: an amplitude-model iteration that lowers the Poisson NLL by less than this fraction
#: counts as stalled; ``AMPLITUDE_STALL_ITERATIONS`` of them in a row end the amplitude
#: iterations: that model has reached its own optimum, which at low counts is worse
#: than Poisson's (0: always run all ``amplitude_iterations``). The NLL's noise floor
#: (~0.5 a pixel) dwarfs what is left to gain long before the image stops improving,
#: so only an iteration that no longer lowers it at all counts.
AMPLITUDE_STALL_RELATIVE = 1e-4
#: stalled amplitude iterations in a row that end them. One is not enough: the first
#: step that moves the probe (after ``probe_hold_iterations``) often raises the Poisson
#: NLL once while the amplitude fit goes on converging (a cold start that switched to
#: Poisson there was at NRMSE 0.20 after 60 iterations at 256 x 256 x 4,096; docs/engine.md)
AMPLITUDE_STALL_ITERATIONS = 3
#: illumination (relative to its maximum) below which a pixel counts as unreached
UNREACHED_RELATIVE = 1e-9


@dataclass(frozen=True)
class Snapshot:
    """Host copy of the reconstruction state.

    object : (H, W) complex, NaN where no probe reached when taken ``live``.
    probe : (M, N) complex, centred, same scale as the data (photons).
    coverage : (H, W) float32, illumination sum |P_j|^2 over frames / its maximum.
    origin_m : (y, x) position in metres of object pixel [0, 0] in probe coordinates.
    pixel_m : (dy, dx) object pixel size in metres.
    metrics : poisson_nll, step, n_frames_active, ... and histories.
    """

    object: np.ndarray
    probe: np.ndarray
    coverage: np.ndarray
    iteration: int
    n_frames: int
    origin_m: tuple[float, float]
    pixel_m: tuple[float, float]
    metrics: dict[str, Any] = field(default_factory=dict)


class Reconstructor:
    """Streaming ML_grad reconstruction (see module docstring).

    Parameters
    ----------
    config : geometry, conventions and algorithm settings.
    backend : "numpy", "cupy", or "auto" (CuPy when a CUDA device is present).
    operators : "fused" (CUDA kernels, CuPy only), "array" (array-module code) or
        "auto" (fused on CuPy, array on NumPy).
    transforms : the fused operators' FFTs: "cufft" (default) or "fused"
        (kernels/transforms.cu for square 128, 256 or 512 pixel single-precision
        frames, the gradient pass's far-field work inside the column passes; cuFFT
        for other frames). Needs the fused operators.
    gpus : CUDA devices to partition the frames over (CuPy; default: the current
        device only). Frames go to position stripes, one per GPU; gradients and
        line-search sums are summed with NCCL (:mod:`.collectives`). A device may
        be named twice (two partitions on one GPU, with copies instead of NCCL).
    partitions : on NumPy, this many partitions with host copies as collectives
        (the stand-in that tests the partitioned algorithm without GPUs).
    collectives : "auto" (NCCL for distinct GPUs, else copies), "nccl" or "copy".
    """

    def __init__(
        self,
        config: ReconConfig,
        backend: str = "auto",
        operators: str = "auto",
        *,
        transforms: str = "cufft",
        gpus: Sequence[int] | None = None,
        partitions: int | None = None,
        collectives: str = "auto",
    ) -> None:
        self.config = config
        self.xp = get_array_module(backend)
        self.backend = self.xp.__name__
        self._complex = config.dtype
        self._real = "float32" if config.dtype == "complex64" else "float64"

        def make_ops() -> EngineOperators:
            return make_operators(
                self.xp,
                config.frame_shape,
                self._real,
                config.position_interpolation,
                operators,
                passes.CHUNK_PIXELS.get(config.frame_storage),
                transforms,
            )

        devices = _devices(self.xp, gpus, partitions)
        keep_farfields = passes.FRAME_STORAGE_STACKS[config.frame_storage] > 0
        self._stores = [
            FrameStore(self.xp, device, config.frame_shape, self._complex, make_ops, keep_farfields)
            for device in devices
        ]
        self._passes = [
            passes.FramePasses(store, config.frame_storage, config.line_search_frames)
            for store in self._stores
        ]
        self._collectives = make_collectives(self._stores, collectives)
        self._stripe_edges: np.ndarray | None = None  # partition boundaries (object rows)
        self._balanced_frames = 0  # frames when the stripes were last drawn
        self._replicas_stale = True  # object/probe changed outside an iteration's update
        self._shape = config.frame_shape
        self._pixel_m = config.object_pixel_m
        self._mask = None
        if config.mask is not None:
            oriented = orient_frames(np.asarray(config.mask), config.dp_orient)
            self._mask = self.xp.asarray(np.fft.ifftshift(oriented != 0))
        self._warm_probe = self._requested_probe()
        self._n = 0  # frames in all stores
        self._photons_per_frame = 0.0
        self._pattern_sum = self.xp.zeros(self._shape, "float64")  # valid counts, DC at corner
        self._valid_frames = self.xp.zeros(self._shape, "int64")  # frames valid per pixel
        # beam axis: far-field centre (row, col) from DC the probe is held on, and its source
        self._beam_offset_px: np.ndarray | None = None
        self._beam_source = ""
        # linear phase ramp the object carries (cycles per pixel, global pixel coordinates):
        # grown canvas regions continue it
        self._object_cycles = np.zeros(2)
        self._excluded_pixels = 0
        # Object canvas.
        self._origin_px = np.zeros(2, dtype=np.int64)  # global pixel of canvas [0, 0]
        self.object = self.xp.ones((0, 0), self._complex)
        self.probe: Any = None
        # Iteration state.
        self.iteration = 0
        self._first_step = 1.0  # scale of a new line-search state (a restore damps it)
        self._search: list[Any] | None = None  # line-search state per store (device)
        self._previous_step: Any = None  # the last iteration's step (0-d, device)
        # (NLL and step on their way to the host, the iteration's history entry)
        self._pending: list[tuple[Readback, dict[str, Any]]] = []
        self._since_refresh = 0
        self._amplitude_left = 0  # iterations of the amplitude model still to run
        self._amplitude_nll: float | None = None
        self._amplitude_stalls = 0  # stalled amplitude iterations in a row
        self._noise_model = "amplitude"  # of the last iteration
        # (dir_O, dir_P, <g, s>, s_O, s_P) of the last iteration, None to restart
        self._previous: tuple[Any, Any, float, Any, Any] | None = None
        self._history: list[dict[str, Any]] = []
        self._illumination: Any = None

    # ------------------------------------------------------------------ input
    def add_frames(self, frames: Any, x: Any, y: Any) -> None:
        """Append frames and their motor readings; they join at the next iteration.

        frames : (n, M, N) photon counts, DC centred, as the detector recorded them.
        x, y : (n,) motor readings (units of ``position_scale_m``).
        Non-finite, negative or saturated pixels are excluded from the likelihood.
        """
        frames = np.asarray(frames) if not hasattr(frames, "__cuda_array_interface__") else frames
        x_read = np.asarray(x, dtype=np.float64).reshape(-1)
        y_read = np.asarray(y, dtype=np.float64).reshape(-1)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3 or tuple(frames.shape[1:]) != self._shape:
            raise ValueError(
                f"add_frames: frames must have shape (n, {self._shape[0]}, {self._shape[1]}) "
                f"(ReconConfig.frame_shape), got {tuple(frames.shape)}"
            )
        n_new = frames.shape[0]
        if x_read.shape != (n_new,) or y_read.shape != (n_new,):
            raise ValueError(
                f"add_frames: x and y need one reading per frame ({n_new}), "
                f"got {x_read.size} and {y_read.size}"
            )
        if not (np.isfinite(x_read).all() and np.isfinite(y_read).all()):
            raise ValueError("add_frames: x and y positions must be finite numbers")
        if n_new == 0:
            return
        cfg = self.config
        centres = np.stack(
            [
                y_read * cfg.position_scale_m * cfg.y_direction / self._pixel_m[0],
                x_read * cfg.position_scale_m * cfg.x_direction / self._pixel_m[1],
            ],
            axis=1,
        )
        total_valid = 0.0
        # in parts, so the preprocessing's temporaries stay small whatever the batch
        for part in frame_chunks(0, n_new, self._shape, ADD_CHUNK_PIXELS):
            counts = self._preprocess(frames[part])
            self._distribute(counts, centres[part])
            valid_counts = self.xp.where(counts >= 0, counts, 0)
            self._pattern_sum += valid_counts.sum(axis=0)
            self._valid_frames += (counts >= 0).sum(axis=0)
            total_valid += float(valid_counts.sum())
            del counts, valid_counts
        self._photons_per_frame = (self._photons_per_frame * self._n + total_valid) / (
            self._n + n_new
        )
        self._n += n_new
        self._fit_canvas(centres)
        self._previous = None  # the objective changed: restart conjugate directions
        self._amplitude_left = cfg.amplitude_iterations  # (poisson.py: why amplitudes first)
        self._amplitude_nll: float | None = None  # Poisson NLL of the last amplitude iteration
        self._amplitude_stalls = 0

    def _preprocess(self, frames: Any) -> Any:
        """Orient, exclude bad pixels (-1), move DC to the corner; returns (n, M, N)."""
        xp = self.xp
        counts = xp.asarray(orient_frames(xp.asarray(frames), self.config.dp_orient), self._real)
        bad = ~xp.isfinite(counts) | (counts < 0)
        if self.config.saturation_counts is not None:
            bad |= counts >= self.config.saturation_counts
        counts = xp.fft.ifftshift(xp.where(bad, -1, counts), axes=(-2, -1))
        if self._mask is not None:
            counts = xp.where(self._mask, counts, -1)
        self._excluded_pixels += int((counts < 0).sum())
        return counts.astype(self._real)

    def _distribute(self, counts: Any, centres: np.ndarray, rebalance: bool = True) -> None:
        """Hand frames to the stores: by position stripe when there are several.

        The first frames fix the stripes; later frames go to the stripe their
        probe centre falls in. When one store holds more than
        ``REBALANCE_RATIO`` times the mean (a spiral growing past the first
        stripes), the stripes are drawn again from all frames and frames move
        (at most once per growth of the scan by that ratio).
        """
        stores = self._stores
        if len(stores) == 1:
            stores[0].append(counts, centres, self._real)
            return
        if self._stripe_edges is None:
            self._stripe_edges = stripe_edges(centres[:, 0], len(stores))
        parts = route(centres[:, 0], self._stripe_edges)
        for index, store in enumerate(stores):
            chosen = np.flatnonzero(parts == index)
            if chosen.size:
                selected = counts[self.xp.asarray(chosen)]
                store.append(store.here(selected), centres[chosen], self._real)
        loads = [store.n for store in stores]
        grown = sum(loads) >= max(4 * len(stores), REBALANCE_RATIO * self._balanced_frames)
        if rebalance and grown and max(loads) > REBALANCE_RATIO * np.mean(loads):
            self._rebalance()

    def _rebalance(self) -> None:
        """Stripes drawn again from every frame's position; frames move to their store."""
        master = self._stores[0]
        taken = [store.take_all() for store in self._stores]
        with master.active():
            counts = self.xp.concatenate([master.here(part) for part, _ in taken])
        centres = np.concatenate([positions for _, positions in taken])
        self._stripe_edges = stripe_edges(centres[:, 0], len(self._stores))
        self._balanced_frames = len(centres)
        self._distribute(counts, centres, rebalance=False)

    def _fit_canvas(self, centres: np.ndarray) -> None:
        """Grow the object canvas so the windows at ``centres`` fit with a margin.

        A canvas that must grow grows by at least a quarter of its size on each
        side that overflows, so a scan spiralling outwards reallocates rarely.
        """
        half = np.array(self._shape) // 2
        corners = np.floor(centres - half).astype(np.int64)
        margin = self.config.object_margin_px
        low = corners.min(axis=0) - margin
        high = corners.max(axis=0) + np.array(self._shape) + 1 + margin
        if self.object.size:
            old_low = self._origin_px
            old_high = self._origin_px + np.array(self.object.shape)
            if (low >= old_low).all() and (high <= old_high).all():
                return
            slack = np.array(self.object.shape) // 4
            low = np.where(low < old_low, np.minimum(low, old_low - slack), old_low)
            high = np.where(high > old_high, np.maximum(high, old_high + slack), old_high)
        grown = gauge.ramp(
            self.xp, tuple(int(v) for v in high - low), self._object_cycles, self._complex, low
        )
        if self.object.size:
            r0, c0 = (self._origin_px - low).astype(int)
            grown[r0 : r0 + self.object.shape[0], c0 : c0 + self.object.shape[1]] = self.object
        self.object = grown
        self._origin_px = low
        self._replicas_stale = True
        for store in self._stores:
            store.geometry_frames = -1

    # ------------------------------------------------------------- probe init
    def _requested_probe(self) -> np.ndarray | None:
        cfg = self.config
        if cfg.probe is not None:
            probe = first_mode(np.asarray(cfg.probe), "ReconConfig.probe")
        elif cfg.probe_path is not None:
            probe = load_probe(cfg.probe_path)
        else:
            return None
        if probe.shape != self._shape:
            raise ValueError(
                f"ReconConfig.probe: expected shape {self._shape} (frame_shape), got {probe.shape}"
            )
        return probe

    def _ensure_probe(self) -> None:
        if self.probe is None and self._n:
            self.probe = self._initial_probe()
            self._beam_offset_px, self._beam_source = self._beam_axis()
            # the mean deflection the data show beyond the beam axis is the object's mean
            # phase gradient: start the object with it instead of building it slowly
            self._tilt_object((self._measured_beam_axis() - self._beam_offset_px) / self._shape)

    def _tilt_object(self, cycles: np.ndarray) -> Any:
        """Multiply the object by a linear phase ramp of ``cycles`` per pixel; returns it."""
        shape = self.object.shape
        tilt = gauge.ramp(self.xp, shape, cycles, self._complex, self._origin_px)
        self.object *= tilt
        self._object_cycles = self._object_cycles + cycles
        self._replicas_stale = True
        return tilt

    def _beam_axis(self) -> tuple[np.ndarray, str]:
        """Far-field centre (row, col) from DC that the probe is held on, and its source."""
        cfg = self.config
        if self._warm_probe is not None:
            return self._probe_farfield_centre(), "warm_probe"
        if cfg.beam_center_px == "data":
            return self._measured_beam_axis(), "data"
        if cfg.beam_center_px is None:  # dp_orient keeps the centre pixel in place
            return np.zeros(2), "frame_centre"
        # (transposing orientations need square frames: the recorded shape is the same)
        point = oriented_point(cfg.beam_center_px, self._shape, cfg.dp_orient)
        return point - np.array(self._shape) // 2, "configured"

    def _measured_beam_axis(self) -> np.ndarray:
        mean = self._pattern_sum / self.xp.maximum(self._valid_frames, 1)
        return gauge.disc_centre(self.xp, mean)

    def _initial_probe(self) -> Any:
        xp = self.xp
        if self._warm_probe is not None:
            probe = xp.asarray(self._warm_probe, self._complex)
        else:
            # the mean valid pattern as a one-frame stack: no frame-stack temporaries
            mean = self._pattern_sum / xp.maximum(self._valid_frames, 1)
            mean = xp.where(self._valid_frames > 0, mean, -1)[None].astype(self._real)
            probe = cold_start_probe(xp, mean, self._complex)
        if self.config.probe_propagation_m:
            probe = propagate(
                probe, self.config.probe_propagation_m, self._pixel_m, self.config.wavelength_m
            )
        return scale_to_photons(xp, probe, self._photons_per_frame).astype(self._complex)

    # -------------------------------------------------------------- operators
    def _update_geometry(self) -> None:
        """Hand window corners and probe fractions of each store's frames to its operators."""
        for store in self._stores:
            if store.geometry_frames == store.n:
                continue
            top_left = store.positions_px[: store.n] - np.array(self._shape) // 2 - self._origin_px
            corners, fractions = shift.split_positions(top_left, self.config.position_interpolation)
            with store.active():
                store.ops.set_geometry(corners, fractions, self.object.shape)
            store.geometry_frames = store.n

    def _sync_replicas(self) -> None:
        """Copy the object and probe to the other stores' devices (after changes outside
        an iteration's update: new canvas, probe start, beam-axis hold, restore)."""
        master = self._stores[0]
        master.object, master.probe = self.object, self.probe
        if len(self._stores) > 1:
            objects = self._collectives.broadcast(self.object)
            probes = self._collectives.broadcast(self.probe)
            for store, obj, probe in zip(self._stores[1:], objects[1:], probes[1:], strict=True):
                store.object, store.probe = obj, probe
        self._replicas_stale = False

    def _probe_farfield_centre(self) -> np.ndarray:
        """Bright-field disc centre (row, col) of the probe's far field, px from DC."""
        return gauge.disc_centre(self.xp, self.xp.abs(self.xp.fft.fft2(self.probe)) ** 2)

    # -------------------------------------------------------------- iterating
    def iterate(self, n_iterations: int = 1) -> float:
        """Run ML_grad iterations over all frames added so far; returns the last NLL."""
        if self._n == 0:
            raise ValueError("iterate: no frames yet; call add_frames(frames, x, y) first")
        if not isinstance(n_iterations, int) or n_iterations < 0:
            raise ValueError(f"iterate: n_iterations must be an integer >= 0, got {n_iterations!r}")
        self._ensure_probe()
        for _ in range(n_iterations):
            self._step()
        self._settle()
        return self._history[-1]["poisson_nll"] if n_iterations else math.nan

    def _step(self) -> None:
        """Queue one iteration. Nothing in it waits for the device (on CuPy the host
        prepares the next iteration while the device runs this one): its NLL and step
        reach the history one iteration later (:meth:`_settle`). Every
        ``BEAM_CHECK_EVERY`` iterations the beam check reads the probe's far-field
        centre, and with ``object_smoothness`` the prior reads its weight."""
        cfg, stores, xp = self.config, self._stores, self.xp
        started = time.perf_counter()
        self._update_geometry()
        refresh = self._since_refresh >= REFRESH_EVERY
        if refresh or self._since_refresh % BEAM_CHECK_EVERY == 0:
            tilt = self._probe_tilt_px()
            if refresh or np.abs(tilt).max() > BEAM_DRIFT_PX:
                self._since_refresh = 0
                for store in stores:
                    store.n_fresh = 0
                self._hold_beam_axis(tilt)
        if self._replicas_stale:
            self._sync_replicas()
        update_probe = self.iteration >= cfg.probe_hold_iterations
        noise_model = "amplitude" if self._amplitude_left > 0 else "poisson"
        if noise_model != self._noise_model:  # the objective changed: restart directions
            self._previous = None
        self._noise_model = noise_model
        self._amplitude_left = max(0, self._amplitude_left - 1)
        self._illumination = None  # replaced below (a snapshot in between makes its own)
        # every device's work is queued before any result is read
        parts = []
        for store, frame_passes in zip(stores, self._passes, strict=True):
            with store.active():
                parts.append(frame_passes.gradient(update_probe, noise_model))
        nll_sum, grad_obj, illum, grad_probe, power = (
            None if part[0] is None else self._collectives.reduce_sum(part)
            for part in zip(*parts, strict=True)
        )
        self._illumination = illum
        peak = illum.max()
        damping, damping_scale = peak, cfg.alpha_relative  # alpha max(illumination)
        mu = cfg.object_smoothness * float(peak) if cfg.object_smoothness else 0.0
        if mu:
            grad_obj += smoothness.gradient(self.object, mu)
            damping, damping_scale = cfg.alpha_relative * peak + 4 * mu, 1.0
        step_obj = elementwise.preconditioned(grad_obj, illum, damping, damping_scale)
        step_probe = None
        if update_probe:
            step_probe = elementwise.preconditioned(
                grad_probe, power, power.max(), cfg.alpha_relative
            )

        dir_obj, dir_probe, slope = self._conjugate_direction(
            grad_obj, step_obj, grad_probe, step_probe
        )
        del grad_obj, grad_probe, step_obj, step_probe, parts  # object-sized: free them now
        obj_dirs = self._collectives.broadcast(dir_obj)
        probe_dirs = [None] * len(stores)
        if dir_probe is not None:
            probe_dirs = self._collectives.broadcast(dir_probe)
        for store, frame_passes, obj_dir, probe_dir in zip(
            stores, self._passes, obj_dirs, probe_dirs, strict=True
        ):
            with store.active():
                frame_passes.set_direction(probe_dir, obj_dir)

        # the line search: one pass at the state's steps, the step chosen on the device
        states = self._line_search_states()
        parts = []
        for store, frame_passes, state in zip(stores, self._passes, states, strict=True):
            with store.active():
                parts.append(frame_passes.line_search_sums(state[2:], noise_model))
        total = self._collectives.reduce_sum(parts)
        if mu:
            total = total + _prior_terms(self.object, dir_obj, mu, states[0][2:])
        state = elementwise.line_search_step(slope, total, states[0])
        states = self._collectives.broadcast(state)
        for index, (store, state_here) in enumerate(zip(stores, states, strict=True)):
            tau = state_here[:1]
            with store.active():
                if index:  # replicas follow the same update (the first store's are ours)
                    elementwise.add_scaled(store.object, tau, obj_dirs[index])
                    if probe_dirs[index] is not None:
                        elementwise.add_scaled(store.probe, tau, probe_dirs[index])
                self._passes[index].advance(tau)
        elementwise.add_scaled(self.object, state[:1], dir_obj)
        if dir_probe is not None:
            elementwise.add_scaled(self.probe, state[:1], dir_probe)
        self._search, self._previous_step = states, state[0]
        self.iteration += 1
        self._since_refresh += 1
        entry: dict[str, Any] = {
            "iteration": self.iteration, "noise_model": noise_model, "n_frames": self._n
        }
        self._pending.append((Readback(xp.stack([nll_sum[0], state[0]])), entry))
        self._settle(keep=1)  # the previous iteration's: the device runs this one meanwhile
        entry["seconds"] = time.perf_counter() - started

    def _line_search_states(self) -> list[Any]:
        """Each store's line-search state (:func:`.elementwise.line_search_state`, on
        its device); the first at a scale of 1 (the object's and probe's units)."""
        if self._search is None:
            with self._stores[0].active():
                self._search = self._collectives.broadcast(
                    elementwise.line_search_state(self.xp, self._first_step)
                )
        return self._search

    def _settle(self, keep: int = 0) -> None:
        """Complete the history of all but the last ``keep`` iterations queued (their NLL
        and step, read from the device when it has sent them) and the amplitude model's
        stall test on them."""
        while len(self._pending) > keep:
            results, entry = self._pending.pop(0)
            nll, tau = (float(value) for value in results.result())
            if entry["noise_model"] == "amplitude":
                last, stall = self._amplitude_nll, AMPLITUDE_STALL_RELATIVE
                stalled = stall > 0 and last is not None and last - nll < stall * abs(nll)
                self._amplitude_stalls = self._amplitude_stalls + 1 if stalled else 0
                if self._amplitude_stalls >= AMPLITUDE_STALL_ITERATIONS:
                    self._amplitude_left = 0
                self._amplitude_nll = nll
            entry.update(poisson_nll=nll, step=tau)
            self._history.append(entry)

    def _probe_tilt_px(self) -> np.ndarray:
        """(row, col) of the probe's far-field centre relative to the beam axis, in px."""
        return self._probe_farfield_centre() - self._beam_offset_px

    def _hold_beam_axis(self, tilt: np.ndarray) -> None:
        """Move the probe's far field back onto the beam axis (:mod:`.gauge`).

        Called when the stored far fields are recomputed: the move changes every
        exit wave by a constant phase.
        """
        xp = self.xp
        if self._beam_source == "data":  # more frames: a better estimate
            previous = self._beam_offset_px
            self._beam_offset_px = self._measured_beam_axis()
            tilt = tilt + previous - self._beam_offset_px
        if np.abs(tilt).max() < RAMP_TOLERANCE_PX:
            return
        cycles = -tilt / np.array(self._shape)  # per object pixel
        probe_tilt = gauge.ramp(xp, self._shape, cycles, self._complex)
        self.probe *= probe_tilt
        object_tilt = self._tilt_object(-cycles)
        if self._previous is not None:
            # a gauge move is unitary and leaves the NLL unchanged: carry the conjugate
            # directions into the new gauge instead of restarting them
            # (in place: these arrays belong to the previous iteration alone)
            dir_obj, dir_probe, _, step_obj, step_probe = self._previous
            for array, tilt in ((dir_obj, object_tilt), (step_obj, object_tilt),
                                (dir_probe, probe_tilt), (step_probe, probe_tilt)):  # fmt: skip
                if array is not None:
                    array *= tilt

    def _conjugate_direction(
        self, grad_obj: Any, step_obj: Any, grad_probe: Any, step_probe: Any
    ) -> tuple[Any, Any, Any]:
        """Polak-Ribiere direction on the preconditioned gradient, restarted as needed.

        Gradients are dL/dz*; returns (dir_obj, dir_probe or None, L'(0) along them),
        with ``L'(0) = 2 Re <g, d>`` a 0-d float64 array on the device. The inner
        products, ``beta`` and the restart test stay on the device too; ``L'(0)``
        follows from the inner products by linearity.
        """
        update = grad_probe is not None
        previous, self._previous = self._previous, None
        xp = self.xp
        pairs = [(step_obj, step_probe)]
        usable = previous is not None and (previous[1] is None) == (not update)
        if usable:
            prev_obj, prev_probe, prev_g_dot_s, prev_step_obj, prev_step_probe = previous
            pairs += [(prev_step_obj, prev_step_probe), (prev_obj, prev_probe)]
            del prev_step_obj, prev_step_probe
        dots = self._real_dots(grad_obj, grad_probe, pairs)
        del pairs, previous
        g_dot_s = dots[0]
        if usable:  # (restarted where beta <= 0 or the direction would not descend)
            beta, slope = elementwise.polak_ribiere(dots, prev_g_dot_s, self._previous_step)
            # d = beta d_prev - s (or -s), in the previous direction's memory
            dir_obj = elementwise.conjugate(prev_obj, step_obj, beta)
            dir_probe = elementwise.conjugate(prev_probe, step_probe, beta) if update else None
        else:
            slope = -2 * g_dot_s  # steepest descent's
            dir_obj = xp.negative(step_obj)
            dir_probe = xp.negative(step_probe) if update else None
        self._previous = (dir_obj, dir_probe, g_dot_s, step_obj, step_probe)
        return dir_obj, dir_probe, slope

    def _real_dots(self, grad_obj: Any, grad_probe: Any, pairs: list[tuple[Any, Any]]) -> Any:
        """``Re <g_O, a> + Re <g_P, b>`` for each (a, b) of ``pairs`` (the probe term only
        with ``grad_probe``): a float64 array on the device."""
        dots = elementwise.real_inners(grad_obj, [obj for obj, _ in pairs])
        if grad_probe is not None:
            elementwise.real_inners(grad_probe, [probe for _, probe in pairs], dots)
        return dots

    # -------------------------------------------------------------- snapshots
    def snapshot(self, live: bool = True) -> Snapshot:
        """Host copies of object, probe, coverage and metrics.

        With ``live`` (default) object pixels no probe has reached are NaN (display
        only); ``live=False`` keeps the finite values (for stored results).
        """
        xp, shape = self.xp, self.object.shape
        self._settle()
        self._ensure_probe()
        if self._n and (self._illumination is None or self._illumination.shape != shape):
            self._update_geometry()
            if self._replicas_stale:
                self._sync_replicas()
            parts = []
            for store in self._stores:
                with store.active():
                    parts.append(store.ops.illumination(store.ops.taps(store.probe)))
            self._illumination = self._collectives.reduce_sum(parts)
        # coverage, ramp removal and masking on the device: one transfer of each image
        illum = self._illumination if self._illumination is not None else xp.zeros(shape)
        peak = float(illum.max()) if illum.size else 0.0
        coverage = (illum / peak if peak > 0 else illum).astype(np.float32)
        obj = self.object
        if self.config.remove_object_ramp and obj.size:
            obj = gauge.remove_mean_ramp(xp, obj, xp.where(coverage >= 0.1, coverage, 0))
        if live:
            obj = xp.where(coverage <= UNREACHED_RELATIVE, xp.asarray(np.nan, obj.dtype), obj)
        obj = to_host(obj)
        if obj is self.object:  # NumPy, nothing masked: a copy, not the engine's array
            obj = obj.copy()
        coverage = to_host(coverage)
        probe = (
            to_host(self.probe) if self.probe is not None else np.zeros(self._shape, self._complex)
        )
        last = self._history[-1] if self._history else {}
        metrics: dict[str, Any] = {
            "poisson_nll": last.get("poisson_nll", math.nan),
            "step": last.get("step", math.nan),
            "n_frames_active": last.get("n_frames", 0),
            "excluded_pixels": self._excluded_pixels,
            "probe_propagation_m": self.config.probe_propagation_m,
            "beam_center_offset_px": (
                None if self._beam_offset_px is None else [float(v) for v in self._beam_offset_px]
            ),
            "beam_center_source": self._beam_source,
            "beam_center_measured_px": (
                [float(v) for v in self._measured_beam_axis()] if self._n else None
            ),
            "object_smoothness": self.config.object_smoothness,
            "backend": self.backend,
            "history": list(self._history),
        }
        origin = tuple(float(o * p) for o, p in zip(self._origin_px, self._pixel_m, strict=True))
        return Snapshot(
            object=obj,
            probe=probe.copy(),
            coverage=coverage,
            iteration=self.iteration,
            n_frames=self._n,
            origin_m=origin,  # type: ignore[arg-type]
            pixel_m=self._pixel_m,
            metrics=metrics,
        )

    @property
    def n_frames(self) -> int:
        """Frames added so far."""
        return self._n

    def state_is_finite(self) -> bool:
        """Whether the object and probe hold finite values only (reads one flag each)."""
        xp = self.xp
        finite = bool(xp.isfinite(self.object).all())
        return finite and (self.probe is None or bool(xp.isfinite(self.probe).all()))

    def reserve(self, n_frames: int) -> None:
        """Allocate room for ``n_frames`` frames now, so a scan of known length never
        grows its stacks by doubling (which can hold up to twice the frames' memory).

        With several partitions each gets 1.25 times its share (the rebalancing
        bound of :data:`REBALANCE_RATIO`).
        """
        share = -(-int(n_frames) // len(self._stores))
        if len(self._stores) > 1:
            share = math.ceil(REBALANCE_RATIO * share)
        for store in self._stores:
            with store.active():
                store.reserve(share)

    def memory_estimate(self, n_frames: int, object_shape: tuple[int, int] | None = None) -> int:
        """Bytes of device (host on NumPy) memory iterating over ``n_frames`` frames needs.

        With several partitions: what the largest one needs on its device (frames
        split evenly). ``object_shape`` defaults to the current canvas; counts are
        costed in their current storage (compact unless frames so far did not
        fit). See :mod:`.workspace` for what is counted.
        """
        per_store = -(-n_frames // len(self._stores))
        store, storage = self._stores[0], self.config.frame_storage
        limit = self.config.line_search_frames
        return workspace.memory_estimate(
            per_store,
            self._shape,
            self._complex,
            store.counts.dtype,
            object_shape if object_shape is not None else self.object.shape,
            store.ops.workspace_bytes(per_store),
            passes.FRAME_STORAGE_STACKS[storage],
            passes.CHUNK_STACKS[storage],
            store.ops.max_chunk_pixels,
            store.ops.object_temporaries,
            passes.SAMPLE_STACKS[storage],
            per_store if limit == 0 else min(per_store, limit),
        )

    # ------------------------------------------- rollback hook (callback/run.py)
    def restore(self, object_: Any, probe: Any, step_scale: float = 0.1) -> None:
        """Go back to an earlier ``object_`` and ``probe`` with a damped step.

        For a caller that kept them just before an iteration that went wrong
        (non-finite values). The canvas must not have changed since (no frames
        added in between); ``probe`` None re-initialises it. The next line search
        starts at ``step_scale`` times the last step; conjugate directions restart.
        """
        if tuple(object_.shape) != tuple(self.object.shape):
            raise ValueError(
                f"restore: object shape {tuple(object_.shape)} differs from the canvas "
                f"{tuple(self.object.shape)} (frames were added since it was kept)"
            )
        self._settle()
        scale = float(to_host(self._line_search_states()[0])[1])
        self.object = self.xp.asarray(object_, self._complex).copy()
        self.probe = None if probe is None else self.xp.asarray(probe, self._complex).copy()
        self._replicas_stale = True
        for store in self._stores:
            store.n_fresh = 0
        self._previous = None
        self._search, self._first_step = None, scale * step_scale


def _devices(xp: Any, gpus: Sequence[int] | None, partitions: int | None) -> list[int | None]:
    """The stores' devices: ``gpus`` on CuPy, ``partitions`` times the host on NumPy."""
    if gpus is not None and partitions is not None:
        raise ValueError("Reconstructor: give gpus (CuPy) or partitions (NumPy), not both")
    if gpus is not None:
        if not is_cupy(xp):
            raise ValueError("Reconstructor: gpus=[...] needs backend='cupy'")
        devices = list(gpus)
        count = xp.cuda.runtime.getDeviceCount()
        if not devices or any(
            isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < count for d in devices
        ):
            raise ValueError(
                f"Reconstructor: gpus must be a non-empty list of CUDA device numbers "
                f"0..{count - 1}, got {gpus!r}"
            )
        return devices  # type: ignore[return-value]
    if partitions is not None:
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"Reconstructor: partitions must be an integer >= 1: {partitions!r}")
        if is_cupy(xp) and partitions > 1:
            raise ValueError("Reconstructor: on CuPy name the devices: gpus=[0, 1, ...]")
        return [None] * partitions
    return [None]


def make_operators(
    xp: Any,
    frame_shape: tuple[int, int],
    real_dtype: str,
    interpolation: str,
    kind: str = "auto",
    max_chunk_pixels: int | None = None,
    transforms: str = "cufft",
) -> EngineOperators:
    """The operator implementation for ``xp``: "fused", "array" or "auto"; chunks of
    at most ``max_chunk_pixels`` pixels (None: ``operators.CHUNK_PIXELS``); the fused
    operators' ``transforms`` ("cufft" or "fused", :class:`Reconstructor`)."""
    if kind not in ("auto", "fused", "array"):
        raise ValueError(f"operators: expected 'auto', 'fused' or 'array', got {kind!r}")
    if transforms not in TRANSFORMS:
        raise ValueError(f"transforms: expected one of {TRANSFORMS}, got {transforms!r}")
    if kind == "fused" and not is_cupy(xp):
        raise ValueError("operators='fused' needs backend='cupy' (CUDA kernels)")
    if kind == "array" or not is_cupy(xp):
        if transforms != "cufft":
            raise ValueError(
                f"transforms={transforms!r} needs the fused operators (backend='cupy', "
                f"operators 'auto' or 'fused'), not the array operators on {xp.__name__}"
            )
        return ArrayOperators(xp, frame_shape, real_dtype, interpolation, max_chunk_pixels)
    from .cuda_operators import CudaOperators

    return CudaOperators(
        xp, frame_shape, real_dtype, interpolation, max_chunk_pixels, transforms=transforms
    )


def _prior_terms(obj: Any, direction: Any, mu: float, steps: Any) -> Any:
    """The smoothness prior's ``[R'(t), R''(t)]`` along ``direction`` at ``steps``: an
    (S, 2) float64 array to add to the line search's sums.

    ``R'(t) = 2 Re <g, d> + 2 t R_mu(d)`` is exact (R is quadratic).
    """
    xp = array_module_of(steps)
    slope_at_zero = 2 * elementwise.real_inners(smoothness.gradient(obj, mu), [direction])[0]
    curvature = 2 * smoothness.energy(direction, mu)
    return xp.stack([slope_at_zero + curvature * steps, xp.full_like(steps, curvature)], axis=1)
