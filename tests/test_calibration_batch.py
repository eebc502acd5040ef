"""Batched calibration trials and the screened defocus search.

A batch of trials (calibration.batch) must compute what one Reconstructor per
trial computes (the engine itself), trial by trial; its per-trial reductions
(calibration.batch_terms) must equal their engine twins. The screened defocus
search must find the true defocus of a beamline-like scan while the engine
runs fewer iterations than the plain grid: counted by wrapping
``Reconstructor.iterate``.
"""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.calibration import batch_terms as terms
from bluesky_ptycho.calibration import (
    detect_orientation,
    format_defocus_table,
    prepare_trials,
    search_probe_propagation,
)
from bluesky_ptycho.calibration.batch import TrialBatch, run_trials
from bluesky_ptycho.engine import elementwise, gauge, poisson
from bluesky_ptycho.engine.backend import cupy_device_available
from bluesky_ptycho.engine.reconstructor import Reconstructor
from bluesky_ptycho.sim.sample import BEAMLINE_LIKE, HOT_PIXEL_COUNTS, default_config, simulate_scan

#: relative agreement of batched and one-by-one trials in double precision
#: (measured: 1e-10 after 12 iterations)
SAME = 1e-8
DEFOCUS_M = -120e-6
SEMIANGLE_RAD = 2e-3


@pytest.fixture(scope="module")
def beamline_scan():
    """BEAMLINE_LIKE (phase gradient, central stop, hot pixels, 2e5 photons) with a
    2 mrad zone plate 3.5 depths of focus upstream of the sample; hot pixels excluded."""
    options = {**BEAMLINE_LIKE, "defocus_m": DEFOCUS_M, "semiangle_rad": SEMIANGLE_RAD}
    scan = simulate_scan(default_config(64), n_frames=100, seed=4, **options)
    return scan, scan.config.replace(saturation_counts=HOT_PIXEL_COUNTS)


@pytest.fixture(scope="module")
def small_trials(beamline_scan):
    scan, config = beamline_scan
    return prepare_trials(scan.frames, scan.x_motor, scan.y_motor, config, n_frames=20)


VARIANTS = [
    {"probe_propagation_m": -120e-6},
    {"probe_propagation_m": 0.0},
    {"probe_propagation_m": 60e-6, "dp_orient": "transpose", "x_direction": -1},
    {"dp_orient": "rot90_cw", "y_direction": -1},
]


@pytest.fixture(autouse=True)
def engine_without_early_poisson(monkeypatch):
    """The batch runs all ``amplitude_iterations`` (its docstring): the engine it is
    compared with does too."""
    from bluesky_ptycho.engine import reconstructor

    monkeypatch.setattr(reconstructor, "AMPLITUDE_STALL_RELATIVE", 0.0)


def one_by_one(trials, iterations, variants, **common):
    # the batch keeps each trial's far fields and moves them along every step, as the
    # engine does with frame_storage="stacks"; its default storage recomputes them,
    # which rounds differently (3e-6 apart after 12 iterations in double precision)
    return run_trials(
        trials, iterations, variants, "numpy", batched=False, frame_storage="stacks", **common
    )


@pytest.mark.parametrize("round_positions", [False, True])
def test_batch_computes_what_the_engine_computes(small_trials, round_positions):
    # 12 iterations: the probe hold (2), drift-triggered gauge moves and the refresh at 10
    common = {"dtype": "complex128", "round_positions": round_positions}
    batched = run_trials(small_trials, 12, VARIANTS, "numpy", batched=True, **common)
    reference = one_by_one(small_trials, 12, VARIANTS, **common)
    np.testing.assert_allclose(batched, reference, rtol=SAME)
    assert len(set(np.round(reference, 6))) == len(VARIANTS)  # the variants differ


@pytest.mark.parametrize(
    "setting",
    ["warm_probe", "mask_and_prior", "beam_center", "single_precision"],
)
def test_batch_matches_the_engine_with_other_settings(beamline_scan, setting):
    scan, config = beamline_scan
    common: dict = {"dtype": "complex128"}
    rtol = SAME
    if setting == "warm_probe":
        config = config.replace(probe=scan.sample.probe)  # held: its own beam axis
    elif setting == "mask_and_prior":
        mask = np.ones(config.frame_shape)
        mask[30:34, 40:] = 0
        config = config.replace(mask=mask, object_smoothness=1e-3)
    elif setting == "beam_center":
        config = config.replace(beam_center_px=(32.4, 31.7))
    else:  # complex64 rounds differently per trial; agreement over the first iterations
        common, rtol = {}, 1e-6
    trials = prepare_trials(scan.frames, scan.x_motor, scan.y_motor, config, n_frames=16)
    if setting == "beam_center":  # recorded pixels moved to the crop's
        offset = 32 - trials.crop_px // 2
        assert trials.config.beam_center_px == pytest.approx((32.4 - offset, 31.7 - offset))
    iterations = 4 if setting == "single_precision" else 8
    batched = run_trials(trials, iterations, VARIANTS[:3], "numpy", batched=True, **common)
    np.testing.assert_allclose(
        batched, one_by_one(trials, iterations, VARIANTS[:3], **common), rtol=rtol
    )


def test_dropped_trials_leave_the_others_unchanged(small_trials):
    batch = TrialBatch(small_trials, VARIANTS, "numpy", dtype="complex128")
    batch.iterate(3)
    batch.keep(np.array([1, 3]))
    batch.iterate(7)
    assert batch.size == 2
    reference = one_by_one(small_trials, 10, [VARIANTS[1], VARIANTS[3]], dtype="complex128")
    np.testing.assert_allclose(batch.nll_per_pixel(), reference, rtol=SAME)


def test_batch_terms_equal_their_engine_twins():
    rng = np.random.default_rng(3)
    shape = (3, 5, 12, 10)  # trials, frames, M, N

    def field():
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

    a, b, c = field() * 3, field(), field() * 0.1
    counts = rng.poisson(np.abs(a) ** 2).astype(np.float64)
    counts[:, :, 0, :3] = -1  # excluded
    tau = np.array([[0.2, 0.4], [0.7, 0.1], [1.3, 2.0]])  # each trial's own steps
    nll, gradient = terms.nll_and_gradient(a, counts)
    slope, curvature = terms.line_search_terms(a, b, c, counts, tau)
    for k in range(shape[0]):
        assert nll[k] == pytest.approx(poisson.negative_log_likelihood(a[k], counts[k]), rel=1e-12)
        np.testing.assert_allclose(gradient[k], poisson.farfield_gradient(a[k], counts[k]))
        expected = poisson.line_search_terms(a[k], b[k], c[k], counts[k], list(tau[k]))
        np.testing.assert_allclose([slope[k], curvature[k]], expected, rtol=1e-12)
    # each trial's line search is the engine's on that trial
    slopes = np.array([2 * np.vdot(-b[k], a[k]).real for k in range(3)])  # any negative slope
    slopes = -np.abs(slopes)
    scales = np.array([0.5, 1.0, 4.0])
    steps, next_scales = terms.line_search(a, b, c, counts, slopes, scales)
    for k in range(3):
        state = elementwise.line_search_state(np, scales[k])
        sums = np.stack(
            poisson.line_search_terms(a[k], b[k], c[k], counts[k], list(state[2:])), axis=1
        )
        engine = elementwise.line_search_step(np.asarray(slopes[k]), sums, state)
        assert steps[k] > 0
        assert [steps[k], next_scales[k]] == pytest.approx(engine[:2], rel=1e-12)
    # disc centres and ramps
    patterns = np.abs(rng.standard_normal((3, 16, 14))) + 5 * (
        np.hypot(*np.meshgrid(np.fft.fftfreq(16) * 16, np.fft.fftfreq(14) * 14, indexing="ij")) < 4
    )
    patterns[2] = 0  # empty: centre 0
    centres = terms.disc_centres(np, np.roll(patterns, (0, 1, -2), axis=(0, 1, 2)))
    for k in range(3):
        expected = gauge.disc_centre(np, np.roll(patterns, (0, 1, -2), axis=(0, 1, 2))[k])
        np.testing.assert_allclose(centres[k], expected, atol=1e-12)
    cycles, starts = rng.standard_normal((3, 2)) * 0.01, np.array([[0, 0], [-5, 7], [3, -2]])
    stack = terms.ramps(np, (9, 11), cycles, "complex128", starts)
    for k in range(3):
        np.testing.assert_allclose(
            stack[k], gauge.ramp(np, (9, 11), cycles[k], "complex128", starts[k])
        )


def test_batched_orientation_detection_ranks_as_one_by_one(beamline_scan):
    scan, config = beamline_scan
    config = config.replace(probe_propagation_m=DEFOCUS_M)
    args = (scan.frames, scan.x_motor, scan.y_motor, config)
    options = {"n_frames": 20, "iterations": 6, "backend": "numpy"}
    batched = detect_orientation(*args, batched=True, **options)
    reference = detect_orientation(*args, batched=False, **options)
    assert [c.key for c in batched.candidates] == [c.key for c in reference.candidates]
    np.testing.assert_allclose(
        [c.nll_per_pixel for c in batched.candidates],
        [c.nll_per_pixel for c in reference.candidates],
        rtol=SAME,
    )
    assert {c.key for c in batched.tied} == {c.key for c in reference.tied}


def test_screened_search_finds_the_defocus_with_fewer_engine_iterations(beamline_scan, monkeypatch):
    """The screened search (default) against the plain grid (every distance runs all
    iterations), both one Reconstructor per trial: the engine's iterations are counted."""
    scan, config = beamline_scan
    iterate = Reconstructor.iterate
    counted = {"iterations": 0}

    def counting(self, n_iterations=1):
        counted["iterations"] += n_iterations
        return iterate(self, n_iterations)

    monkeypatch.setattr(Reconstructor, "iterate", counting)
    args = (scan.frames, scan.x_motor, scan.y_motor, config)
    options = {"n_frames": 32, "iterations": 8, "backend": "numpy", "batched": False}
    found = {}
    for label, screen in (("screened", 3), ("plain grid", None)):
        counted["iterations"] = 0
        best_m, table = search_probe_propagation(*args, screen_iterations=screen, **options)
        found[label] = (best_m, table, counted["iterations"])
        assert sum(row.iterations for row in table) == counted["iterations"]
    depth_of_focus = config.wavelength_m / SEMIANGLE_RAD**2  # 34 um
    for best_m, table, _ in found.values():
        assert abs(best_m - DEFOCUS_M) <= 0.5 * depth_of_focus, format_defocus_table(table, best_m)
    screened, plain = found["screened"], found["plain grid"]
    assert screened[0] == plain[0]  # the winner survived the screen: same refinement
    assert screened[2] <= 0.6 * plain[2], (screened[2], plain[2])
    # the trials that ran every iteration give the plain grid's NLLs exactly
    full = {row.distance_m: row.nll_per_pixel for row in plain[1]}
    for row in screened[1]:
        if row.iterations == 8:
            assert row.nll_per_pixel == full[row.distance_m]
        else:
            assert row.iterations == 3 and row.nll_per_pixel > full[row.distance_m]


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_device_available(), reason="needs CuPy and a CUDA device")
def test_batch_on_cupy_matches_numpy(small_trials):
    # 4 iterations: the engine amplifies rounding about tenfold an iteration, and the
    # GPU's float atomics round differently from NumPy's sums
    common = {"dtype": "complex128", "round_positions": True}
    on_gpu = run_trials(small_trials, 4, VARIANTS, "cupy", batched=True, **common)
    on_cpu = run_trials(small_trials, 4, VARIANTS, "numpy", batched=True, **common)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-6)
    batch = TrialBatch(small_trials, VARIANTS, "cupy")
    batch.iterate(3)
    batch.keep(np.array([0, 2]))
    batch.iterate(3)
    assert batch.size == 2 and np.isfinite(batch.nll_per_pixel()).all()
