"""Many trials at once: short ML_grad reconstructions advanced together on a trial axis.

A calibration compares dozens of short trials (:mod:`.trials`) on the same few
cropped frames. One such trial is far too small to keep a GPU busy: its
iterations are bound by kernel launches and host round trips, so trials run
one after another cost their number times that latency. :class:`TrialBatch`
holds K trials in arrays with a leading trial axis - objects (K, H, W), probes
(K, M, N), far fields (K, n, M, N) - uploads the frames once and advances all
trials with the same array operations: on a GPU, one batched iteration in
place of K (the same arithmetic, which on a CPU is faster trial by trial:
the default there, see :func:`start_trials`).

Every trial computes what the :class:`~bluesky_ptycho.Reconstructor` of
:func:`.trials.run_trial` computes - the engine's model, probe hold,
preconditioner, Polak-Ribiere directions, the engine's line search and
beam-axis gauge, with the engine's constants - only with every reduction
taken per trial (:mod:`.batch_terms`); the tests compare the two trial by
trial. Trials differ in the ``VARIED`` fields only: the probe propagation
distance (defocus search) and the orientation and motor directions
(orientation detection); every other setting is common.

:meth:`TrialBatch.keep` drops trials between iterations: a search screens many
candidates for a few iterations and continues the best. :func:`start_trials`
splits a long list of trials into batches of at most ``BATCH_PIXELS`` frame
pixels (bounded memory) and runs them through one interface, or - with
``batched=False`` - runs each trial by its own Reconstructor, one after another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ..config import ReconConfig
from ..engine import patches, shift, smoothness
from ..engine.backend import get_array_module, is_cupy, to_host
from ..engine.orientation import orient_frames, oriented_point
from ..engine.probe_init import cold_start_probe, scale_to_photons
from ..engine.propagation import propagate
from ..engine.reconstructor import (
    BEAM_CHECK_EVERY,
    BEAM_DRIFT_PX,
    RAMP_TOLERANCE_PX,
    REFRESH_EVERY,
)
from . import batch_terms as terms
from .trials import (
    ReconstructorTrial,
    TrialSet,
    check_iterations,
    nll_per_valid_pixel,
    trial_config,
    trial_positions,
)

#: the ReconConfig fields that may differ between the trials of one batch
VARIED = ("probe_propagation_m", "dp_orient", "x_direction", "y_direction")
#: most frame pixels (trials x frames x M x N) held in one batch
BATCH_PIXELS = 2**24


class TrialRunner(Protocol):
    """What a search needs from its trials: advance, read the NLLs, drop some."""

    size: int

    def iterate(self, n_iterations: int) -> None:
        """``n_iterations`` more ML_grad iterations of every trial."""

    def nll_per_pixel(self) -> np.ndarray:
        """(size,) Poisson NLL of each trial's last iteration per valid pixel."""

    def keep(self, indices: np.ndarray) -> None:
        """Keep only the trials at ``indices`` (sorted positions in the current order)."""


class TrialBatch:
    """K trials of one trial set advanced together (see module docstring).

    variants : per trial, the ``VARIED`` fields that differ from ``trials.config``.
    round_positions : positions on whole trial pixels (:func:`.trials.trial_positions`).
    common : ReconConfig fields changed for every trial (e.g. ``dtype``).
    """

    def __init__(
        self,
        trials: TrialSet,
        variants: Sequence[Mapping[str, Any]],
        backend: str = "auto",
        round_positions: bool = False,
        **common: Any,
    ) -> None:
        if not variants:
            raise ValueError("trial batch: no trials")
        for changes in variants:
            if not set(changes) <= set(VARIED):
                raise ValueError(
                    f"trial batch: trials may differ in {', '.join(VARIED)} only, got "
                    f"{sorted(set(changes) - set(VARIED))}"
                )
        configs = [trial_config(trials, **common, **changes) for changes in variants]
        xp = self.xp = get_array_module(backend)
        self.config = cfg = configs[0]
        self.size = len(configs)
        self._shape = cfg.frame_shape
        self._real = "float32" if cfg.dtype == "complex64" else "float64"
        self._complex = cfg.dtype
        self._pixels = int(trials.frames.size)
        # counts per orientation: shared (1, n, M, N) when every trial has the same one
        names = sorted({c.dp_orient for c in configs})
        oriented = [oriented_counts(xp, trials.frames, cfg, name, self._real) for name in names]
        group = np.array([names.index(c.dp_orient) for c in configs])
        self._excluded = np.array([oriented[g][1] for g in group])
        counts = xp.stack([o[0] for o in oriented])
        self._counts = counts if len(names) == 1 else counts[xp.asarray(group)]
        self._set_geometry(trials, configs, round_positions)
        self.object = xp.ones((self.size, *self._canvas), self._complex)
        self.probe = self._initial_probes(configs, counts, group)
        # beam axes: a warm probe's far-field centre, the data's disc, or the configured point
        data_axes = terms.disc_centres(xp, xp.stack([mean_pattern(xp, c) for c in counts]))
        probe_axes = terms.disc_centres(xp, xp.abs(xp.fft.fft2(self.probe)) ** 2)
        self._beam_offset_px = np.stack(
            [
                self._beam_axis(c, probe_axes[k], data_axes[g])
                for k, (c, g) in enumerate(zip(configs, group, strict=True))
            ]
        )
        # the deflection the data show beyond the beam axis is the objects' mean phase gradient
        tilt = (data_axes[group] - self._beam_offset_px) / self._shape
        self._tilt_objects(np.arange(self.size), tilt)
        self._farfield = self._farfields(np.arange(self.size))
        self.iteration = 0
        self._since_refresh = np.zeros(self.size, int)
        self._search_scale = np.ones(self.size)  # of the next line search, per trial
        self._nll = xp.full(self.size, np.nan)  # of the last iteration, on the device
        # (dir_O, dir_P or None, <g, s>, s_O, s_P) of the last iteration, and which trials
        # may continue it (the others restart from steepest descent)
        self._previous: tuple[Any, Any, np.ndarray, Any, Any] | None = None
        self._continues = np.zeros(self.size, bool)

    # ---------------------------------------------------------------- set-up
    def _set_geometry(
        self, trials: TrialSet, configs: list[ReconConfig], round_positions: bool
    ) -> None:
        """Canvas of every trial (one common shape, each its own origin) and window geometry."""
        xp, half = self.xp, np.array(self._shape) // 2
        centres = []
        for c in configs:
            x, y = trial_positions(trials, c, round_positions)
            scale = c.position_scale_m
            centres.append(
                np.stack(
                    [
                        y * scale * c.y_direction / c.object_pixel_m[0],
                        x * scale * c.x_direction / c.object_pixel_m[1],
                    ],
                    axis=1,
                )
            )
        corners = np.floor(np.stack(centres) - half).astype(np.int64)  # (K, n, 2)
        margin = self.config.object_margin_px
        self._origin_px = corners.min(axis=1) - margin
        high = corners.max(axis=1) + np.array(self._shape) + 1 + margin
        self._canvas_px = high - self._origin_px  # each trial's own canvas (the engine's)
        self._canvas = tuple(int(v) for v in self._canvas_px.max(axis=0))
        top_left = np.stack(centres) - half - self._origin_px[:, None, :]
        whole, fractions = shift.split_positions(top_left, self.config.position_interpolation)
        self._weights = xp.stack(
            [
                shift.interpolation_weights(
                    xp.asarray(f, dtype=self._real), self.config.position_interpolation
                )
                for f in fractions
            ]
        )  # (K, n, T)
        self._indices = self._flat_indices(whole)

    def _flat_indices(self, whole: np.ndarray) -> Any:
        """(K, n, M, N) indices of every window pixel into the flattened (K, H, W) objects."""
        xp, size = self.xp, self._canvas[0] * self._canvas[1]
        return xp.stack(
            [
                patches.window_flat_indices(xp.asarray(corners), self._shape, self._canvas[1])
                + k * size
                for k, corners in enumerate(whole)
            ]
        )

    def _initial_probes(self, configs: list[ReconConfig], counts: Any, group: np.ndarray) -> Any:
        """(K, M, N) initial probes: the warm probe or each orientation's cold start,
        propagated by each trial's distance and scaled to the photons per frame."""
        xp, first = self.xp, configs[0]
        if first.probe is not None:
            bases = [xp.asarray(np.asarray(first.probe), self._complex)] * len(counts)
        else:
            bases = [
                cold_start_probe(xp, mean_pattern(xp, c, -1)[None], self._complex) for c in counts
            ]
        photons = [float(xp.where(c >= 0, c, 0).sum()) / c.shape[0] for c in counts]
        probes = []
        for config, g in zip(configs, group, strict=True):
            probe = bases[g]
            if config.probe_propagation_m:
                probe = propagate(
                    probe, config.probe_propagation_m, config.object_pixel_m, config.wavelength_m
                )
            probes.append(scale_to_photons(xp, probe, photons[g]).astype(self._complex))
        return xp.stack(probes)

    def _beam_axis(
        self, config: ReconConfig, probe_axis: np.ndarray, data_axis: np.ndarray
    ) -> np.ndarray:
        """Far-field centre (row, col) from DC a trial's probe is held on (the engine's rule)."""
        if config.probe is not None:
            return probe_axis
        if config.beam_center_px == "data":
            return data_axis
        point = oriented_point(config.beam_center_px, self._shape, config.dp_orient)
        return point - np.array(self._shape) // 2

    # -------------------------------------------------------------- operators
    def _probes(self, probe: Any, weights: Any) -> Any:
        """(k, n, M, N) sub-pixel-shifted probes of every frame of k trials."""
        taps = shift.tap_stack(probe, self.config.position_interpolation).swapaxes(0, 1)
        out = terms.batched_weighted_sum(weights, taps)
        return out.reshape(*weights.shape[:2], *self._shape)

    def _views(self, obj: Any, chosen: Any = slice(None)) -> Any:
        """(k, n, M, N) object windows of every frame of the ``chosen`` trials (device index)."""
        return patches.extract(obj, self._indices[chosen])

    def _farfields(self, chosen: np.ndarray) -> Any:
        on = self.xp.asarray(chosen)
        probes = self._probes(self.probe[on], self._weights[on])
        return self.xp.fft.fft2(probes * self._views(self.object, on), norm="ortho")

    def _scatter(self, values: Any) -> Any:
        shape = (self.size * self._canvas[0], self._canvas[1])
        return patches.scatter_add(values, self._indices, shape).reshape(self.object.shape)

    def _tap_sums(self, values: Any) -> Any:
        """(K, M, N) adjoint of the probe shifts: ``sum_j shift_j^T values_j`` per trial."""
        per_tap = terms.batched_weighted_sum(self._weights.swapaxes(1, 2), values)
        per_tap = per_tap.reshape(self.size, -1, *self._shape).swapaxes(0, 1)
        return shift.combine_taps(per_tap, self.config.position_interpolation)

    # -------------------------------------------------------------- iterating
    def iterate(self, n_iterations: int) -> None:
        """``n_iterations`` ML_grad iterations of every trial."""
        if not isinstance(n_iterations, int) or n_iterations < 0:
            raise ValueError(f"iterate: n_iterations must be an integer >= 0, got {n_iterations!r}")
        for _ in range(n_iterations):
            self._step()

    def nll_per_pixel(self) -> np.ndarray:
        """(K,) Poisson NLL of each trial's last iteration per valid pixel."""
        return nll_per_valid_pixel(to_host(self._nll), self._pixels, self._excluded)

    def _step(self) -> None:
        xp, cfg = self.xp, self.config
        due = self._since_refresh >= REFRESH_EVERY
        checked = due | (self._since_refresh % BEAM_CHECK_EVERY == 0)
        refresh = due
        if checked.any():
            tilt = self._probe_tilt_px()
            refresh = due | (checked & (np.abs(tilt).max(axis=1) > BEAM_DRIFT_PX))
        if refresh.any():
            chosen = np.flatnonzero(refresh)
            self._since_refresh[chosen] = 0
            self._hold_beam_axis(chosen, tilt[chosen])
            self._farfield[xp.asarray(chosen)] = self._farfields(chosen)
        update_probe = self.iteration >= cfg.probe_hold_iterations
        # every trial's frames came at the start: the engine's amplitude iterations first
        # (all of them: trials run a few iterations, so without the engine's early end)
        model = "amplitude" if self.iteration < cfg.amplitude_iterations else "poisson"
        if self.iteration == cfg.amplitude_iterations:
            self._continues[:] = False  # the objective changed: restart, as the engine does

        nll, chi = terms.nll_and_gradient(self._farfield, self._counts, model)
        chi = xp.fft.ifft2(chi, norm="ortho")
        probes = self._probes(self.probe, self._weights)
        grad_obj = self._scatter(xp.conj(probes) * chi)
        illum = self._scatter(terms.power(probes))
        peak = illum.max(axis=(1, 2), keepdims=True)
        damping = cfg.alpha_relative * peak
        mu = np.zeros(self.size)
        if cfg.object_smoothness:
            mu = cfg.object_smoothness * to_host(peak).reshape(-1).astype(np.float64)
            grad_obj += self._per_canvas(smoothness.gradient, self.object, mu)
            damping += xp.asarray(4 * mu, self._real)[:, None, None]
        step_obj = grad_obj / (illum + damping)
        grad_probe = step_probe = views = None
        if update_probe:
            views = self._views(self.object)
            grad_probe = self._tap_sums(xp.conj(views) * chi)
            power = self._tap_sums(terms.power(views))
            peak_power = power.max(axis=(1, 2), keepdims=True)
            step_probe = grad_probe / (power + cfg.alpha_relative * peak_power)
        del chi
        dir_obj, dir_probe, slope = self._conjugate_direction(
            grad_obj, step_obj, grad_probe, step_probe
        )
        dviews = self._views(dir_obj)
        linear = probes * dviews
        quadratic = None
        if dir_probe is not None:
            dprobes = self._probes(dir_probe, self._weights)
            linear += dprobes * views
            quadratic = xp.fft.fft2(dprobes * dviews, norm="ortho")
        linear = xp.fft.fft2(linear, norm="ortho")
        prior = None
        if cfg.object_smoothness:
            prior = self._prior_terms(dir_obj, mu)
        tau, self._search_scale = terms.line_search(
            self._farfield, linear, quadratic, self._counts, slope, self._search_scale, prior, model
        )
        moved = tau > 0
        self._continues &= moved
        if moved.any():
            t = xp.asarray(np.where(moved, tau, 0), self._real)
            self.object += t[:, None, None] * dir_obj
            if dir_probe is not None:
                self.probe += t[:, None, None] * dir_probe
            self._farfield += t[:, None, None, None] * linear
            if quadratic is not None:
                square = xp.asarray(np.where(moved, tau * tau, 0), self._real)
                self._farfield += square[:, None, None, None] * quadratic
        self._nll = nll
        self.iteration += 1
        self._since_refresh += 1

    def _per_canvas(self, function: Any, obj: Any, mu: np.ndarray) -> Any:
        """``function(obj_k, mu_k)`` on each trial's own canvas (zero outside it)."""
        out = self.xp.zeros_like(obj)
        for k, (rows, cols) in enumerate(self._canvas_px):
            out[k, :rows, :cols] = function(obj[k, :rows, :cols], float(mu[k]))
        return out

    def _prior_terms(self, direction: Any, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slope at 0 and curvature of the smoothness prior along ``direction``, per trial."""
        gradient = self._per_canvas(smoothness.gradient, self.object, mu)
        slope = 2 * terms.per_trial_sum((direction.conj() * gradient).real)
        curvature = np.array(
            [
                2 * smoothness.energy(direction[k, :rows, :cols], float(mu[k]))
                for k, (rows, cols) in enumerate(self._canvas_px)
            ]
        )
        return slope, curvature

    def _probe_tilt_px(self) -> np.ndarray:
        """(K, 2) far-field centres of the probes relative to their beam axes, in px."""
        xp = self.xp
        return terms.disc_centres(xp, xp.abs(xp.fft.fft2(self.probe)) ** 2) - self._beam_offset_px

    def _tilt_objects(self, chosen: np.ndarray, cycles: np.ndarray) -> Any:
        """Multiply the chosen objects by linear phase ramps (cycles per pixel); returns them."""
        ramp = terms.ramps(self.xp, self._canvas, cycles, self._complex, self._origin_px[chosen])
        self.object[self.xp.asarray(chosen)] *= ramp
        return ramp

    def _hold_beam_axis(self, chosen: np.ndarray, tilt: np.ndarray) -> None:
        """Move the chosen probes' far fields back onto their beam axes (as the engine does)."""
        moving = np.abs(tilt).max(axis=1) >= RAMP_TOLERANCE_PX
        chosen, tilt = chosen[moving], tilt[moving]
        if not chosen.size:
            return
        cycles = -tilt / np.array(self._shape)
        probe_ramp = terms.ramps(self.xp, self._shape, cycles, self._complex, np.zeros_like(tilt))
        on = self.xp.asarray(chosen)
        self.probe[on] *= probe_ramp
        object_ramp = self._tilt_objects(chosen, -cycles)
        if self._previous is not None:
            # a gauge move is unitary and leaves the NLL unchanged: carry the conjugate
            # directions into the new gauge
            dir_obj, dir_probe, _, step_obj, step_probe = self._previous
            dir_obj[on] *= object_ramp
            step_obj[on] *= object_ramp
            if dir_probe is not None:
                dir_probe[on] *= probe_ramp
                step_probe[on] *= probe_ramp

    def _conjugate_direction(
        self, grad_obj: Any, step_obj: Any, grad_probe: Any, step_probe: Any
    ) -> tuple[Any, Any, np.ndarray]:
        """Polak-Ribiere directions per trial, restarted as the engine restarts them."""
        xp = self.xp
        update = grad_probe is not None

        def dots(*pairs: tuple[Any, Any, Any, Any]) -> np.ndarray:
            """(len(pairs), K) ``Re <a, b>`` over object and (with probe terms) probe."""
            sums = []
            for obj_a, obj_b, probe_a, probe_b in pairs:
                total = terms.per_trial_sum((obj_a.conj() * obj_b).real)
                if update:
                    total = total + terms.per_trial_sum((probe_a.conj() * probe_b).real)
                sums.append(total)
            return to_host(xp.stack(sums))

        previous = self._previous
        continues = self._continues.copy()
        if previous is not None and (previous[1] is not None) == update:
            prev_obj, prev_probe, prev_g_dot_s, prev_step_obj, prev_step_probe = previous
            g_dot_s, crossed = dots(
                (grad_obj, step_obj, grad_probe, step_probe),
                (grad_obj, prev_step_obj, grad_probe, prev_step_probe),
            )
            continues &= prev_g_dot_s > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                beta = np.where(continues, np.maximum(0.0, (g_dot_s - crossed) / prev_g_dot_s), 0)
        else:
            (g_dot_s,) = dots((grad_obj, step_obj, grad_probe, step_probe))
            beta = np.zeros(self.size)
        dir_obj, dir_probe = -step_obj, (-step_probe if update else None)
        if (beta > 0).any():
            b = xp.asarray(beta, self._real)[:, None, None]
            dir_obj = dir_obj + b * prev_obj
            if update:
                dir_probe = dir_probe + b * prev_probe
        (slope,) = 2 * dots((grad_obj, dir_obj, grad_probe, dir_probe))
        restart = slope >= 0  # not a descent direction
        if restart.any():
            r = xp.asarray(restart)[:, None, None]
            dir_obj = xp.where(r, -step_obj, dir_obj)
            if update:
                dir_probe = xp.where(r, -step_probe, dir_probe)
            slope = np.where(restart, -2 * g_dot_s, slope)
        self._previous = (dir_obj, dir_probe, g_dot_s, step_obj, step_probe)
        self._continues = np.ones(self.size, bool)
        return dir_obj, dir_probe, slope

    # -------------------------------------------------------------- dropping
    def keep(self, indices: np.ndarray) -> None:
        """Keep only the trials at ``indices``."""
        chosen = np.asarray(indices, int)
        picked = self.xp.asarray(chosen)
        for name in ("object", "probe", "_farfield", "_weights"):
            setattr(self, name, getattr(self, name)[picked])
        if self._counts.shape[0] > 1:
            self._counts = self._counts[picked]
        for name in (
            "_excluded", "_origin_px", "_canvas_px", "_beam_offset_px", "_since_refresh",
            "_search_scale", "_continues",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name)[chosen])
        self._nll = self._nll[picked]
        if self._previous is not None:
            dir_obj, dir_probe, g_dot_s, step_obj, step_probe = self._previous
            self._previous = (
                dir_obj[picked],
                None if dir_probe is None else dir_probe[picked],
                g_dot_s[chosen],
                step_obj[picked],
                None if step_probe is None else step_probe[picked],
            )
        size = self._canvas[0] * self._canvas[1]
        offsets = self.xp.asarray((np.arange(chosen.size) - chosen) * size)
        self._indices = self._indices[picked] + offsets[:, None, None, None]
        self.size = int(chosen.size)


def oriented_counts(
    xp: Any, frames: np.ndarray, config: ReconConfig, dp_orient: str, real: str
) -> tuple[Any, int]:
    """Counts as the engine stores them for ``dp_orient`` (DC at the corner, -1 excluded).

    Returns the (n, M, N) counts and the number of excluded pixels.
    """
    counts = xp.asarray(orient_frames(xp.asarray(frames), dp_orient), real)
    bad = ~xp.isfinite(counts) | (counts < 0)
    if config.saturation_counts is not None:
        bad |= counts >= config.saturation_counts
    counts = xp.fft.ifftshift(xp.where(bad, -1, counts), axes=(-2, -1))
    if config.mask is not None:
        mask = np.fft.ifftshift(orient_frames(np.asarray(config.mask), dp_orient) != 0)
        counts = xp.where(xp.asarray(mask), counts, -1)
    return counts.astype(real), int((counts < 0).sum())


def mean_pattern(xp: Any, counts: Any, unseen: float | None = None) -> Any:
    """Mean valid pattern (DC at the corner) of (n, M, N) counts; ``unseen`` where none is valid."""
    valid = counts >= 0
    n_valid = valid.sum(axis=0)
    # summed in the counts' precision, as the engine's running pattern sum
    mean = xp.where(valid, counts, 0).sum(axis=0).astype("float64") / xp.maximum(n_valid, 1)
    if unseen is None:
        return mean
    return xp.where(n_valid > 0, mean, unseen).astype(counts.dtype)


class TrialChain:
    """Several runners (batches or single trials) run one after another as one."""

    def __init__(self, parts: list[Any]) -> None:
        self._parts = parts

    @property
    def size(self) -> int:
        return sum(part.size for part in self._parts)

    def iterate(self, n_iterations: int) -> None:
        for part in self._parts:
            part.iterate(n_iterations)

    def nll_per_pixel(self) -> np.ndarray:
        return np.concatenate([part.nll_per_pixel() for part in self._parts])

    def keep(self, indices: np.ndarray) -> None:
        indices = np.asarray(indices, int)
        start, parts = 0, []
        for part in self._parts:
            mine = indices[(indices >= start) & (indices < start + part.size)] - start
            start += part.size
            if mine.size:
                part.keep(mine)
                parts.append(part)
        self._parts = parts


def start_trials(
    trials: TrialSet,
    variants: Sequence[Mapping[str, Any]],
    backend: str = "auto",
    batched: bool | None = None,
    round_positions: bool = False,
    **common: Any,
) -> TrialChain:
    """Trials of ``variants`` ready to iterate: batched, or each by its own Reconstructor.

    batched : :class:`TrialBatch` es of at most ``BATCH_PIXELS`` frame pixels (at
        least one trial each), or one Reconstructor per trial; None: batched on
        CuPy only. On a GPU a trial is bound by launches and round trips and a
        batch of K costs about one trial; on a CPU the arithmetic is the same and
        a trial's arrays fit the caches, so one by one is faster.
    """
    if batched is None:
        batched = is_cupy(get_array_module(backend))
    if not batched:
        return TrialChain(
            [
                ReconstructorTrial(trials, {**common, **changes}, backend, round_positions)
                for changes in variants
            ]
        )
    per_batch = max(1, BATCH_PIXELS // max(1, trials.frames.size))
    return TrialChain(
        [
            TrialBatch(trials, variants[i : i + per_batch], backend, round_positions, **common)
            for i in range(0, len(variants), per_batch)
        ]
    )


def run_trials(
    trials: TrialSet,
    iterations: int,
    variants: Sequence[Mapping[str, Any]],
    backend: str = "auto",
    batched: bool | None = None,
    round_positions: bool = False,
    **common: Any,
) -> np.ndarray:
    """(len(variants),) NLL per valid pixel after ``iterations`` of each trial."""
    check_iterations(iterations)
    runner = start_trials(trials, variants, backend, batched, round_positions, **common)
    runner.iterate(iterations)
    return runner.nll_per_pixel()
