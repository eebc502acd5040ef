"""Fused CUDA kernels against their array-code twins, and CuPy against NumPy.

Skipped without CuPy and a CUDA device (CI has none); run on a GPU machine with
``python -m pytest -m gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
from operator_support import (
    POLAK_RIBIERE_CASES,
    direction_farfields,
    line_search_step_cases,
    object_gradient,
)

from bluesky_ptycho import Reconstructor
from bluesky_ptycho.engine import poisson
from bluesky_ptycho.engine.backend import cupy_device_available
from bluesky_ptycho.engine.operators import ArrayOperators, EngineOperators
from bluesky_ptycho.metrics import snapshot_nrmse
from bluesky_ptycho.sim.sample import simulate_scan

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cupy_device_available(), reason="needs CuPy and a CUDA device"),
]

N_FRAMES, SHAPE, OBJECT_SHAPE = 37, (24, 20), (70, 64)


@pytest.fixture(
    params=[
        ("float32", "cubic"),
        ("float64", "cubic"),
        ("float32", "linear"),
        ("float32", "nearest"),
    ]
)
def pair(request):
    """(fused, array) operators on CuPy sharing one random geometry."""
    import cupy

    from bluesky_ptycho.engine.cuda_operators import CudaOperators

    real, interpolation = request.param
    rng = np.random.default_rng(7)
    corners = np.stack(
        [
            rng.integers(0, OBJECT_SHAPE[0] - SHAPE[0], N_FRAMES),
            rng.integers(0, OBJECT_SHAPE[1] - SHAPE[1], N_FRAMES),
        ],
        axis=1,
    )
    fractions = rng.uniform(0, 1, (N_FRAMES, 2))
    fused = CudaOperators(cupy, SHAPE, real, interpolation)
    array = ArrayOperators(cupy, SHAPE, real, interpolation)
    for ops in (fused, array):
        ops.set_geometry(corners, fractions, OBJECT_SHAPE)
    return fused, array, rng


def rand(rng, shape, real):
    import cupy

    dtype = "complex64" if real == "float32" else "complex128"
    data = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return cupy.asarray(data.astype(dtype))


def close(a, b, real, scale=None):
    import cupy

    tol = 2e-5 if real == "float32" else 1e-11
    scale = scale if scale is not None else float(cupy.abs(b).max())
    return float(cupy.abs(a - b).max()) <= tol * scale


def test_both_implement_the_declared_interface(pair):
    fused, array, _ = pair
    assert isinstance(fused, EngineOperators) and isinstance(array, EngineOperators)
    assert not isinstance(fused, ArrayOperators)


def test_taps_are_the_probe_shifted_by_each_tap(pair):
    from bluesky_ptycho.engine import shift

    fused, _, rng = pair
    probe = rand(rng, SHAPE, fused.real_dtype)
    want = shift.tap_stack(probe, fused.interpolation)
    assert bool((fused.taps(probe) == want).all())


def test_farfields_and_direction_farfields(pair):
    fused, array, rng = pair
    real = fused.real_dtype
    probe, dprobe = rand(rng, SHAPE, real), rand(rng, SHAPE, real)
    obj, dobj = rand(rng, OBJECT_SHAPE, real), rand(rng, OBJECT_SHAPE, real)
    for frames in (slice(5, None), slice(3, 11), slice(2, None, 3)):
        want = array.farfields(array.taps(probe), obj, frames)
        assert close(fused.farfields(fused.taps(probe), obj, frames), want, real)
    for dp in (None, dprobe):
        lin_f, quad_f = direction_farfields(fused, probe, dp, obj, dobj)
        lin_a, quad_a = direction_farfields(array, probe, dp, obj, dobj)
        assert close(lin_f, lin_a, real)
        assert (quad_f is None) == (quad_a is None)
        if quad_a is not None:
            assert close(quad_f, quad_a, real)
    # every third frame (the line search's sample): those frames of all
    taps, dtaps = fused.taps(probe), fused.taps(dprobe)
    lin_f, quad_f = fused.direction_farfields(taps, dtaps, obj, dobj, slice(1, None, 3))
    lin_a, quad_a = direction_farfields(array, probe, dprobe, obj, dobj)
    assert lin_f.shape[0] == len(range(1, N_FRAMES, 3))
    assert close(lin_f, lin_a[1::3], real) and close(quad_f, quad_a[1::3], real)


@pytest.mark.parametrize("model", poisson.NOISE_MODELS)
@pytest.mark.parametrize("compact", [False, True])
def test_poisson_gradient_and_line_search_terms(pair, compact, model):
    import cupy

    from bluesky_ptycho.engine import counts as count_store

    fused, array, rng = pair
    real = fused.real_dtype
    a, b, c = (rand(rng, (N_FRAMES, *SHAPE), real) for _ in range(3))
    counts = cupy.asarray(rng.poisson(3.0, (N_FRAMES, *SHAPE)).astype(real))
    counts[0, :2] = -1
    if compact:
        counts = count_store.encode(counts, count_store.COMPACT_DTYPE)
    nll_f, chi_f = fused.nll_and_chi(a, counts, noise_model=model)
    nll_a, chi_a = array.nll_and_chi(a, counts, noise_model=model)
    nll_f, nll_a = float(nll_f[0]), float(nll_a[0])
    assert abs(nll_f - nll_a) <= 1e-5 * abs(nll_a)
    total = cupy.full(1, 2.5)  # the kernel adds to a given total
    assert fused.nll_and_chi(a, counts, noise_model=model, total=total)[0] is total
    assert abs(float(total[0]) - 2.5 - nll_a) <= 1e-5 * abs(nll_a)
    assert close(chi_f, chi_a, real, scale=float(cupy.abs(chi_a).max()) * 10)
    for quad in (None, c):
        steps = [0.3 * sample for sample in poisson.LINE_SEARCH_SAMPLES]
        terms_f = fused.line_search_sums(a, b, quad, counts, steps, model).get()
        terms_a = array.line_search_sums(a, b, quad, counts, steps, model).get()
        np.testing.assert_allclose(terms_f, terms_a, rtol=1e-4)
        total = cupy.ones((len(steps), 2))  # added to a given total
        assert fused.line_search_sums(a, b, quad, counts, steps, model, total) is total
        np.testing.assert_allclose(total.get() - 1, terms_a, rtol=1e-4)


@pytest.mark.parametrize("layout", ["stacks", "farfields", "counts"])
def test_line_search_terms_on_every_kth_frame(pair, layout):
    # what each storage's sampled line search passes (frame_storage): views of every
    # third stored frame, the direction's made for those frames alone, a made anew
    import cupy

    from bluesky_ptycho.engine import counts as count_store

    fused, array, rng = pair
    real = fused.real_dtype
    a, b, c = (rand(rng, (N_FRAMES, *SHAPE), real) for _ in range(3))
    counts = cupy.asarray(rng.poisson(3.0, (N_FRAMES, *SHAPE)).astype(real))
    counts[3, :2] = -1
    counts = count_store.encode(counts, count_store.COMPACT_DTYPE)
    sample = slice(0, None, 3)
    views = {
        "stacks": (a[sample], b[sample], c[sample]),
        "farfields": (a[sample], b[sample].copy(), c[sample].copy()),
        "counts": (a[sample].copy(), b[sample].copy(), c[sample].copy()),
    }[layout]
    steps = [0.3 * value for value in poisson.LINE_SEARCH_SAMPLES]
    for model in poisson.NOISE_MODELS:
        got = fused.line_search_sums(*views, counts[sample], steps, model).get()
        copies = (a[sample].copy(), b[sample].copy(), c[sample].copy(), counts[sample].copy())
        want = array.line_search_sums(*copies, steps, model).get()
        np.testing.assert_allclose(got, want, rtol=1e-4)
    with pytest.raises(ValueError, match="one frame stride"):
        fused.line_search_sums(a[sample], b[sample], c[sample].copy(), counts[sample], steps)


@pytest.mark.parametrize("probe_terms", [False, True])
def test_object_gradient_and_illumination(pair, probe_terms):
    fused, array, rng = pair
    real = fused.real_dtype
    chi = rand(rng, (N_FRAMES, *SHAPE), real)
    probe, obj = rand(rng, SHAPE, real), rand(rng, OBJECT_SHAPE, real)
    out_a = object_gradient(array, chi.copy(), probe, obj, probe_terms)
    for chunk_frames in (None, 10):  # the engine's passes add chunks of frames
        out_f = object_gradient(fused, chi.copy(), probe, obj, probe_terms, chunk_frames)
        for got, want in zip(out_f, out_a, strict=True):
            assert (got is None) == (want is None)
            if want is not None:
                assert close(got, want, real)
    assert close(fused.illumination(fused.taps(probe)), out_a[1], real)


@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_frame_loop_kernels_split_the_taps_over_lanes(monkeypatch, lanes):
    """waves and object_gradient with a pixel's taps over 1, 2 or 4 threads, on a frame
    whose pixels do not fill the last warp (its idle lanes still join the shuffles)."""
    import cupy

    from bluesky_ptycho.engine import cuda_operators

    shape, object_shape, n_frames, real = (23, 21), (61, 57), 29, "float32"
    monkeypatch.setattr(
        cuda_operators, "TAP_LANES", dict.fromkeys(cuda_operators.TAP_KERNELS, lanes)
    )
    rng = np.random.default_rng(11)
    corners = rng.integers(0, 30, (n_frames, 2))
    fractions = rng.uniform(0, 1, (n_frames, 2))
    fused = cuda_operators.CudaOperators(cupy, shape, real, "cubic")
    array = ArrayOperators(cupy, shape, real, "cubic")
    assert set(fused.tap_lanes.values()) == {lanes}
    for ops in (fused, array):
        ops.set_geometry(corners, fractions, object_shape)
    probe, dprobe = rand(rng, shape, real), rand(rng, shape, real)
    obj, dobj = rand(rng, object_shape, real), rand(rng, object_shape, real)
    for got, want in zip(
        direction_farfields(fused, probe, dprobe, obj, dobj),
        direction_farfields(array, probe, dprobe, obj, dobj),
        strict=True,
    ):
        assert close(got, want, real)
    chi = rand(rng, (n_frames, *shape), real)
    got = object_gradient(fused, chi.copy(), probe, obj, True)
    want = object_gradient(array, chi.copy(), probe, obj, True)
    for part, expected in zip(got, want, strict=True):
        assert close(part, expected, real)


def test_advance(pair):
    fused, array, rng = pair
    real = fused.real_dtype
    a, b, c = (rand(rng, (N_FRAMES, *SHAPE), real) for _ in range(3))
    import cupy

    for tau in (0.7, cupy.asarray([0.7])):  # a number, or the line search's device value
        a_f, a_a = a.copy(), a.copy()
        fused.advance(a_f, b, c, tau)
        array.advance(a_a, b, c, tau)
        assert close(a_f, a_a, real)
        assert close(a_f, a + 0.7 * b + 0.49 * c, real)


@pytest.mark.parametrize("quadratic", [False, True])
def test_gradient_pass_takes_the_last_step_first(pair, quadratic):
    """nll_and_chi with ``step``: a += tau b + tau^2 c, then the gradient written over b."""
    import cupy

    fused, array, rng = pair
    real = fused.real_dtype
    a, b, c = (rand(rng, (N_FRAMES, *SHAPE), real) for _ in range(3))
    c = c if quadratic else None
    counts = cupy.asarray(rng.poisson(3.0, (N_FRAMES, *SHAPE)).astype(real))
    results = []
    for ops in (fused, array):
        farfield, linear = a.copy(), b.copy()
        tau = cupy.asarray([0.7])  # the line search's step stays on the device
        nll, chi = ops.nll_and_chi(farfield, counts, linear, step=(linear, c, tau))
        results.append((farfield, chi, float(cupy.asarray(nll).reshape(-1)[0])))
    (a_f, chi_f, nll_f), (a_a, chi_a, nll_a) = results
    assert close(a_f, a_a, real)
    assert close(a_f, a + 0.7 * b + (0.49 * c if quadratic else 0), real)
    assert close(chi_f, chi_a, real, scale=float(cupy.abs(chi_a).max()) * 10)
    assert abs(nll_f - nll_a) <= 1e-5 * abs(nll_a)


def test_chunked_operators_match_one_chunk(pair, monkeypatch):
    from bluesky_ptycho.engine import operators

    fused, array, rng = pair
    real = fused.real_dtype
    probe, obj, dobj = (
        rand(rng, SHAPE, real),
        rand(rng, OBJECT_SHAPE, real),
        rand(rng, OBJECT_SHAPE, real),
    )
    chi = rand(rng, (N_FRAMES, *SHAPE), real)
    whole = object_gradient(fused, chi.copy(), probe, obj, True)
    lin_whole, quad_whole = direction_farfields(fused, probe, probe, obj, dobj)
    monkeypatch.setattr(operators, "CHUNK_PIXELS", 5 * SHAPE[0] * SHAPE[1])
    chunked = object_gradient(fused, chi.copy(), probe, obj, True)
    for got, want in zip(chunked, whole, strict=True):
        assert close(got, want, real)
    lin, quad = direction_farfields(fused, probe, probe, obj, dobj)
    assert close(lin, lin_whole, real) and close(quad, quad_whole, real)


def test_cupy_matches_numpy_and_reaches_target():
    # The line search's step is a smooth function of the sums of one pass (the
    # Hermite root on a bracket), so float32 rounding moves it only slightly.
    scan = simulate_scan(n_frames=200, seed=0)
    recs = {}
    for backend in ("numpy", "cupy"):
        rec = Reconstructor(scan.config, backend=backend)
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
        rec.iterate(2)
        recs[backend] = rec
    snaps = {k: r.snapshot(live=False) for k, r in recs.items()}
    # Two object-only iterations: float32 rounding only (NumPy complex64 against
    # complex128 differs by 1.1e-4 here, relative L2). Later iterations amplify
    # rounding, so the rest is checked against the truth.
    for name in ("object", "probe"):
        want = getattr(snaps["numpy"], name)
        diff = np.linalg.norm(getattr(snaps["cupy"], name) - want)
        assert diff <= 1e-3 * np.linalg.norm(want), name
    recs["cupy"].iterate(38)
    assert snapshot_nrmse(recs["cupy"].snapshot(), scan.sample.object, scan.sample.origin_m) <= 0.10


@pytest.mark.parametrize("storage", ["stacks", "farfields"])
def test_cupy_matches_numpy_with_the_line_search_on_every_fourth_frame(storage):
    scan = simulate_scan(n_frames=200, seed=0)
    config = scan.config.replace(line_search_frames=50, frame_storage=storage)
    snaps = {}
    for backend in ("numpy", "cupy"):
        rec = Reconstructor(config, backend=backend)
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
        rec.iterate(2)
        assert rec._passes[0]._sample == slice(1, 200, 4)  # the second iteration's
        snaps[backend] = rec.snapshot(live=False)
    for name in ("object", "probe"):
        want = getattr(snaps["numpy"], name)
        diff = np.linalg.norm(getattr(snaps["cupy"], name) - want)
        assert diff <= 1e-3 * np.linalg.norm(want), name


def test_the_callback_budgets_the_gpu_memory_on_cupy():
    import cupy

    from bluesky_ptycho.callback.memory import GPU_BUDGET_FRACTION, default_budget_bytes

    total = cupy.cuda.Device().mem_info[1]
    assert default_budget_bytes("cupy") == int(GPU_BUDGET_FRACTION * total)
    assert default_budget_bytes("numpy") != default_budget_bytes("cupy")


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_elementwise_kernels_match_numpy(dtype):
    """engine/elementwise.py's fused kernels against the plain NumPy expressions."""
    import cupy

    from bluesky_ptycho.engine import elementwise

    rng = np.random.default_rng(3)
    shape = (301, 257)
    a, b = ((rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype) for _ in range(2))
    weight = rng.uniform(0, 2, shape).astype(np.finfo(dtype).dtype)
    a_dev, b_dev, weight_dev = (cupy.asarray(v) for v in (a, b, weight))
    wide = [v.astype(np.complex128) for v in (a, b, a * b, b - a, 2 * a)]
    exact = [np.vdot(wide[0], v).real for v in wide[1:]]
    others = [cupy.asarray(v.astype(dtype)) for v in (b, a * b, b - a, 2 * a)]
    for count in (1, 3, 4):  # one kernel, a full group of three, and a second group
        got = elementwise.real_inners(a_dev, others[:count]).get()
        np.testing.assert_allclose(got, exact[:count], rtol=1e-9)
    total = cupy.ones(2)
    assert elementwise.real_inners(a_dev, others[:2], total) is total
    np.testing.assert_allclose(total.get() - 1, exact[:2], rtol=1e-9)
    rtol = 1e-6 if dtype == "complex64" else 1e-13
    np.testing.assert_allclose(
        elementwise.preconditioned(a_dev, weight_dev, 0.25).get(),
        elementwise.preconditioned(a, weight, 0.25),
        rtol=rtol,
    )
    peak = weight_dev.max()  # a 0-d device array of the weight's type, not read back
    np.testing.assert_allclose(
        elementwise.preconditioned(a_dev, weight_dev, peak, 0.5).get(),
        elementwise.preconditioned(a, weight, weight.max(), 0.5),
        rtol=rtol,
    )
    for dots, previous, previous_step, want in POLAK_RIBIERE_CASES:
        beta, slope = elementwise.polak_ribiere(
            cupy.asarray(dots), cupy.asarray(previous), cupy.asarray(previous_step)
        )
        assert (float(beta), float(slope)) == want
    for slope, sums, scale in line_search_step_cases():  # the kernel against its twin
        state = elementwise.line_search_state(np, scale)
        want = elementwise.line_search_step(np.asarray(slope), sums, state)
        got = elementwise.line_search_step(
            cupy.asarray(slope), cupy.asarray(sums), cupy.asarray(state)
        )
        np.testing.assert_allclose(got.get(), want, rtol=1e-12, atol=0)
    for beta in (0.625, 0.0, -0.5):  # beta <= 0: the step alone (a restart)
        want = elementwise.conjugate(b.copy(), a, beta)
        got = elementwise.conjugate(b_dev.copy(), a_dev, cupy.asarray(beta))
        np.testing.assert_allclose(got.get(), want, rtol=rtol, atol=rtol)
    elementwise.add_scaled(a_dev, -0.75, b_dev)
    elementwise.add_scaled(a_dev, cupy.asarray([0.5]), b_dev)  # a device scale
    elementwise.add_scaled(a, -0.25, b)
    np.testing.assert_allclose(a_dev.get(), a, rtol=rtol, atol=rtol)


def test_median3x3_kernel_matches_numpy():
    """gauge.median3x3's one-kernel network against nine rolls and a sort, with ties,
    on one image and on a stack (periodic edges)."""
    import cupy

    from bluesky_ptycho.engine import gauge

    rng = np.random.default_rng(11)
    for shape in ((37, 52), (3, 16, 9)):
        image = rng.integers(0, 6, shape).astype(np.float64)
        image[..., 0, 0] = 1e9  # a hot pixel on the corner, next to the wrapped edges
        got = gauge.median3x3(cupy, cupy.asarray(image)).get()
        np.testing.assert_array_equal(got, gauge.median3x3(np, image))
