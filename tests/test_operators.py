"""Adjoint and convention tests for the engine's linear operators."""

from __future__ import annotations

import numpy as np
import pytest
from operator_support import direction_farfields, object_gradient

from bluesky_ptycho.config import D4_ORIENTATIONS
from bluesky_ptycho.engine import patches, poisson, shift
from bluesky_ptycho.engine.backend import to_host
from bluesky_ptycho.engine.orientation import inverse_orientation, orient_frames, oriented_point
from bluesky_ptycho.engine.propagation import propagate


def random_complex(xp, shape, dtype, rng):
    data = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return xp.asarray(data.astype(dtype))


def inner(xp, a, b) -> complex:
    return complex(xp.vdot(a, b))


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_extract_scatter_are_adjoint(xp, dtype):
    rng = np.random.default_rng(1)
    corners = xp.asarray(rng.integers(0, 20, (7, 2)))
    indices = patches.window_flat_indices(corners, (8, 6), 30)
    obj = random_complex(xp, (28, 30), dtype, rng)
    views = random_complex(xp, (7, 8, 6), dtype, rng)
    lhs = inner(xp, patches.extract(obj, indices), views)
    rhs = inner(xp, obj, patches.scatter_add(views, indices, obj.shape))
    tol = 1e-4 if dtype == "complex64" else 1e-12
    assert abs(lhs - rhs) <= tol * abs(lhs)


def test_extract_takes_the_window(xp):
    obj = xp.arange(100).reshape(10, 10)
    indices = patches.window_flat_indices(xp.asarray([[2, 3]]), (2, 3), 10)
    assert patches.extract(obj, indices).tolist() == [[[23, 24, 25], [33, 34, 35]]]


@pytest.mark.parametrize("kind", shift.INTERPOLATIONS)
@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_probe_shift_is_adjoint(xp, dtype, kind):
    rng = np.random.default_rng(2)
    real = "float32" if dtype == "complex64" else "float64"
    fractions = xp.asarray(rng.uniform(0, 1, (5, 2)).astype(real))
    weights = shift.interpolation_weights(fractions, kind)
    probe = random_complex(xp, (8, 8), dtype, rng)
    stack = random_complex(xp, (5, 8, 8), dtype, rng)
    lhs = inner(xp, shift.shifted_probes(probe, weights, kind), stack)
    rhs = inner(xp, probe, shift.shifted_probes_adjoint(stack, weights, kind))
    tol = 1e-4 if dtype == "complex64" else 1e-12
    assert abs(lhs - rhs) <= tol * abs(lhs)


def test_linear_shift_moves_by_the_fraction(xp):
    probe = xp.zeros((6, 6), "complex128")
    probe[2, 2] = 1
    weights = shift.interpolation_weights(xp.asarray([[0.25, 0.5]]), "linear")
    moved = shift.shifted_probes(probe, weights, "linear")[0]
    expected = np.zeros((6, 6))
    expected[2, 2], expected[2, 3] = 0.75 * 0.5, 0.75 * 0.5
    expected[3, 2], expected[3, 3] = 0.25 * 0.5, 0.25 * 0.5
    np.testing.assert_allclose(
        np.asarray(moved.get() if hasattr(moved, "get") else moved), expected
    )


@pytest.mark.parametrize("kind", shift.INTERPOLATIONS)
def test_whole_pixel_positions_are_exact(xp, kind):
    weights = shift.interpolation_weights(xp.asarray([[0.0, 0.0]]), kind)
    assert float(weights.max()) == 1.0 and float(weights.sum()) == 1.0


def test_cubic_shift_matches_the_fourier_shift_of_a_band_limited_probe():
    from bluesky_ptycho.sim.sample import default_config, make_probe

    probe = make_probe(default_config(64)).astype(np.complex128)
    fraction = np.array([[0.3, 0.7]])
    fy, fx = np.fft.fftfreq(64)[:, None], np.fft.fftfreq(64)[None, :]
    exact = np.fft.ifft2(np.fft.fft2(probe) * np.exp(-2j * np.pi * (fy * 0.3 + fx * 0.7)))
    errors = {}
    for kind in ("linear", "cubic"):
        moved = shift.shifted_probes(probe, shift.interpolation_weights(fraction, kind), kind)[0]
        errors[kind] = np.linalg.norm(moved - exact) / np.linalg.norm(exact)
    assert errors["cubic"] < 0.003 and errors["linear"] > 5 * errors["cubic"]


def test_tap_lanes_divide_the_taps_and_a_warp():
    from bluesky_ptycho.engine.cuda_operators import tap_lanes

    assert [tap_lanes(16, lanes) for lanes in (1, 2, 4, 8)] == [1, 2, 4, 8]
    assert tap_lanes(4, 8) == 4 and tap_lanes(1, 2) == 1
    for lanes in (0, 3, 64):
        with pytest.raises(ValueError, match="TAP_LANES"):
            tap_lanes(16, lanes)


def test_split_positions_rounds_only_for_nearest():
    top_left = np.array([[2.7, -1.2]])
    corners, fractions = shift.split_positions(top_left, "cubic")
    assert corners.tolist() == [[2, -2]] and np.allclose(fractions, [[0.7, 0.8]])
    corners, fractions = shift.split_positions(top_left, "nearest")
    assert corners.tolist() == [[3, -1]] and np.allclose(fractions, [[-0.3, -0.2]])


def test_propagation_is_unitary_and_reversible(xp):
    rng = np.random.default_rng(3)
    field = random_complex(xp, (32, 32), "complex128", rng)
    args = ((1e-8, 1e-8), 1.4e-10)
    forward = propagate(field, 50e-6, *args)
    back = propagate(forward, -50e-6, *args)
    # Evanescent components are dropped; at this sampling all components propagate.
    assert abs(float(xp.linalg.norm(forward)) - float(xp.linalg.norm(field))) < 1e-9 * float(
        xp.linalg.norm(field)
    )
    assert float(xp.abs(back - field).max()) < 1e-9


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("identity", lambda f: f),
        ("rot90_cw", lambda f: np.rot90(f, -1)),
        ("rot90_ccw", lambda f: np.rot90(f, 1)),
        ("rot180", lambda f: np.rot90(f, 2)),
        ("fliplr", np.fliplr),
        ("flipud", np.flipud),
        ("transpose", lambda f: f.T),
        ("antitranspose", lambda f: np.rot90(f, 2).T),
    ],
)
def test_d4_orientations_match_numpy(name, reference):
    # odd sides: the array operation is the transform about the centre pixel
    frame = np.arange(15).reshape(3, 5)
    np.testing.assert_array_equal(orient_frames(frame[None], name)[0], reference(frame))
    # even sides: the transform about the zero-frequency pixel (M//2, N//2), which stays
    # put; every pixel lands where the D4 map of its offset from there says (mod N)
    even = np.arange(16).reshape(4, 4)
    oriented = orient_frames(even, name)
    for (row, col), value in np.ndenumerate(even):
        target = np.round(oriented_point((row, col), (4, 4), name)).astype(int) % 4
        assert oriented[tuple(target)] == value
    assert oriented[2, 2] == even[2, 2]
    np.testing.assert_array_equal(
        orient_frames(orient_frames(even, name), inverse_orientation(name)), even
    )


def test_d4_orientations_are_distinct():
    frame = np.arange(16).reshape(4, 4)
    seen = {orient_frames(frame, name).tobytes() for name in D4_ORIENTATIONS}
    assert len(seen) == 8


def test_unknown_orientation_is_rejected():
    with pytest.raises(ValueError, match="dp_orient"):
        orient_frames(np.zeros((2, 2)), "rot45")


@pytest.mark.parametrize("dtype", ["complex64", "float32", "complex128"])
def test_weighted_sum_matches_tensordot(xp, dtype):
    rng = np.random.default_rng(4)
    real = "float64" if dtype == "complex128" else "float32"
    weights = xp.asarray(rng.uniform(-1, 1, (5, 7)).astype(real))
    data = rng.standard_normal((7, 3, 4)) + (
        1j * rng.standard_normal((7, 3, 4)) if "c" in dtype[0] else 0
    )
    stack = xp.asarray(data.astype(dtype))
    got = shift.weighted_sum(weights.T.T, stack).reshape(5, 3, 4)
    want = xp.tensordot(weights.astype(dtype), stack, axes=(1, 0))
    assert got.dtype == stack.dtype
    assert float(xp.abs(got - want).max()) <= 1e-5 * float(xp.abs(want).max())


def operator_case(xp, dtype="complex128", n=9, shape=(8, 6), object_shape=(20, 18)):
    """ArrayOperators with a random geometry, and random probe, object and stacks."""
    from bluesky_ptycho.engine.operators import ArrayOperators

    rng = np.random.default_rng(11)
    real = "float32" if dtype == "complex64" else "float64"
    corners = np.stack([rng.integers(0, object_shape[i] - shape[i], n) for i in (0, 1)], axis=1)
    fractions = rng.uniform(0, 1, (n, 2))
    ops = ArrayOperators(xp, shape, real, "cubic")
    ops.set_geometry(corners, fractions, object_shape)
    probe, obj = random_complex(xp, shape, dtype, rng), random_complex(xp, object_shape, dtype, rng)
    return ops, probe, obj, rng


def test_array_operators_implement_the_interface(xp):
    from bluesky_ptycho.engine.operators import EngineOperators

    ops, *_ = operator_case(xp)
    assert isinstance(ops, EngineOperators)


def test_operator_stages_match_their_definitions(xp):
    ops, probe, obj, rng = operator_case(xp)
    shape, n = ops.frame_shape, 9
    probes = shift.shifted_probes(probe, ops.weights, "cubic")
    views = patches.extract(obj, ops._indices)
    fft2 = xp.fft.fft2

    def near(got, want):
        return float(xp.abs(got - want).max()) <= 1e-12 * float(xp.abs(want).max())

    want_farfields = fft2(probes * views, norm="ortho")
    assert near(ops.farfields(ops.taps(probe), obj, slice(2, None)), want_farfields[2:])
    assert near(ops.farfields(ops.taps(probe), obj, slice(1, 4)), want_farfields[1:4])
    farfield = random_complex(xp, (n, *shape), "complex128", rng)
    counts = xp.asarray(rng.poisson(2.0, (n, *shape)).astype(float))
    nll, chi = ops.nll_and_chi(farfield, counts)
    want_nll = poisson.negative_log_likelihood(farfield, counts)
    assert float(nll[0]) == pytest.approx(want_nll, rel=1e-12)
    total = xp.zeros(1)  # chunks add their NLL to one total, which is returned
    for part in (slice(0, 2), slice(2, None)):
        assert ops.nll_and_chi(farfield[part], counts[part], total=total)[0] is total
    assert float(total[0]) == pytest.approx(want_nll, rel=1e-12)
    want_chi = xp.fft.ifft2(poisson.farfield_gradient(farfield, counts), norm="ortho")
    assert near(chi, want_chi)
    grad, illumination, grad_probe, power = object_gradient(ops, chi.copy(), probe, obj, True)
    assert near(grad, patches.scatter_add(xp.conj(probes) * chi, ops._indices, obj.shape))
    want_illumination = patches.scatter_add(xp.abs(probes) ** 2, ops._indices, obj.shape)
    assert near(illumination, want_illumination)
    assert near(ops.illumination(ops.taps(probe)), want_illumination)
    want_probe = shift.shifted_probes_adjoint(xp.conj(views) * chi, ops.weights, "cubic")
    assert near(grad_probe, want_probe)
    assert near(power, shift.shifted_probes_adjoint(xp.abs(views) ** 2, ops.weights, "cubic"))
    dprobe, dobj = (
        random_complex(xp, shape, "complex128", rng),
        random_complex(xp, obj.shape, "complex128", rng),
    )
    dprobes = shift.shifted_probes(dprobe, ops.weights, "cubic")
    dviews = patches.extract(dobj, ops._indices)
    linear, quadratic = direction_farfields(ops, probe, dprobe, obj, dobj)
    assert near(linear, fft2(probes * dviews + dprobes * views, norm="ortho"))
    assert near(quadratic, fft2(dprobes * dviews, norm="ortho"))
    linear, quadratic = direction_farfields(ops, probe, None, obj, dobj)
    assert quadratic is None and near(linear, fft2(probes * dviews, norm="ortho"))


def test_chunked_stages_match_one_chunk(xp, monkeypatch):
    from bluesky_ptycho.engine import operators

    ops, probe, obj, rng = operator_case(xp, n=11)
    chi = random_complex(xp, (11, *ops.frame_shape), "complex128", rng)
    counts = xp.asarray(rng.poisson(2.0, chi.shape).astype(float))
    whole = object_gradient(ops, chi.copy(), probe, obj, True)
    terms = ops.line_search_sums(chi, chi[::-1].copy(), None, counts, [0.1, 0.2, 0.4])
    monkeypatch.setattr(operators, "CHUNK_PIXELS", 3 * chi.shape[1] * chi.shape[2])
    assert len(list(operators.frame_chunks(0, 11, ops.frame_shape))) == 4
    for chunk_frames in (None, 4):  # chunks inside the operator, and chunks of the caller
        chunked = object_gradient(ops, chi.copy(), probe, obj, True, chunk_frames)
        for got, want in zip(chunked, whole, strict=True):
            assert float(xp.abs(got - want).max()) <= 1e-12 * float(xp.abs(want).max())
    chunked = ops.line_search_sums(chi, chi[::-1].copy(), None, counts, [0.1, 0.2, 0.4])
    np.testing.assert_allclose(to_host(chunked), to_host(terms), rtol=1e-12)
    total = xp.zeros((3, 2))  # a caller's chunks added to one total
    reverse = chi[::-1].copy()
    for part in (slice(0, 5), slice(5, None)):
        got = ops.line_search_sums(
            chi[part], reverse[part], None, counts[part], [0.1, 0.2, 0.4], total=total
        )
        assert got is total
    np.testing.assert_allclose(to_host(total), to_host(terms), rtol=1e-12)


def test_stages_on_every_kth_frame_match_those_frames_of_all(xp, monkeypatch):
    # the line search on a sample of the frames (ReconConfig.line_search_frames) works
    # on strided frame slices, also across chunks
    from bluesky_ptycho.engine import operators

    ops, probe, obj, rng = operator_case(xp, n=11)
    dprobe, dobj = random_complex(xp, probe.shape, "complex128", rng), obj[::-1].copy()
    taps, dtaps = ops.taps(probe), ops.taps(dprobe)
    farfields = ops.farfields(taps, obj, slice(None))
    linear, quadratic = ops.direction_farfields(taps, dtaps, obj, dobj, slice(None))
    monkeypatch.setattr(operators, "CHUNK_PIXELS", 2 * ops.frame_shape[0] * ops.frame_shape[1])
    for frames in (slice(1, None, 3), slice(2, 10, 4)):
        got = ops.farfields(taps, obj, frames)
        assert got.shape[0] == len(range(*frames.indices(11)))
        np.testing.assert_allclose(to_host(got), to_host(farfields[frames]), atol=1e-12)
        got_linear, got_quadratic = ops.direction_farfields(taps, dtaps, obj, dobj, frames)
        np.testing.assert_allclose(to_host(got_linear), to_host(linear[frames]), atol=1e-12)
        np.testing.assert_allclose(to_host(got_quadratic), to_host(quadratic[frames]), atol=1e-12)
    chunks = list(operators.strided_chunks(slice(1, None, 3), 11, ops.frame_shape))
    assert chunks == [(slice(1, 7, 3), slice(0, 2)), (slice(7, 13, 3), slice(2, 4))]


@pytest.mark.parametrize("kept", [slice(None), slice(1, None, 3), None])
def test_gradient_pass_keeps_the_far_fields_of_the_frames_asked_for(xp, kept):
    # farfields_nll_and_chi keeps every frame's far fields, those of a sample (the
    # "farfields" storage's line-search sample) or none; chi and the NLL cover all
    ops, probe, obj, rng = operator_case(xp)
    taps = ops.taps(probe)
    want_farfields = ops.farfields(taps, obj, slice(None))
    counts = xp.asarray(rng.poisson(2.0, want_farfields.shape).astype(float))
    want_nll, want_chi = ops.nll_and_chi(want_farfields, counts)
    farfield = None if kept is None else xp.zeros_like(want_farfields[kept])
    chi = xp.empty_like(want_farfields)
    nll, got = ops.farfields_nll_and_chi(
        taps, obj, slice(None), counts, farfield, chi, kept=kept or slice(None)
    )
    assert got is chi
    assert float(nll[0]) == pytest.approx(float(want_nll[0]), rel=1e-12)
    assert float(xp.abs(chi - want_chi).max()) <= 1e-12 * float(xp.abs(want_chi).max())
    if kept is not None:
        assert float(xp.abs(farfield - want_farfields[kept]).max()) <= 1e-12


def test_outputs_go_into_the_buffers_given(xp):
    ops, probe, obj, _ = operator_case(xp)
    buffer = xp.zeros((9, *ops.frame_shape), "complex128")
    taps = ops.taps(probe)
    assert ops.farfields(taps, obj, slice(None), buffer) is buffer
    assert float(xp.abs(buffer).max()) > 0
    with pytest.raises(ValueError, match="out: expected"):
        ops.farfields(taps, obj, slice(1, None), buffer)
