"""Frame transforms of our own (engine/transforms.py, kernels/transforms.cu).

The four-step split's NumPy twin is checked against numpy.fft on every CI run; the
kernels against cuFFT, and the fused gradient chain against cuFFT with the
``poisson_gradient`` kernel, on a GPU (``python -m pytest -m gpu``).
"""

from __future__ import annotations

import cuda_host
import numpy as np
import pytest

from bluesky_ptycho.engine import counts as count_store
from bluesky_ptycho.engine import poisson, transforms
from bluesky_ptycho.engine.backend import cupy_device_available
from bluesky_ptycho.engine.operators import ArrayOperators


@pytest.mark.parametrize("size", sorted(transforms.SPLITS))
@pytest.mark.parametrize("inverse", [False, True])
def test_four_step_split_is_the_dft(size, inverse):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((3, size)) + 1j * rng.standard_normal((3, size))
    want = np.fft.ifft(x) * size if inverse else np.fft.fft(x)
    got = transforms.four_step(x, transforms.SPLITS[size], inverse)
    assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()


def test_splits_fit_the_kernels():
    for size, (a, b) in transforms.SPLITS.items():
        assert a * b == size and a <= 32 and b <= 32
        assert size % transforms.LINES[size] == 0
        assert transforms.LINES[size] * max(a, b) <= transforms.THREADS
    twiddles = transforms.unitary_twiddles(256)
    assert twiddles.dtype == np.complex64 and abs(twiddles[64] - (-1j)) < 1e-7


@pytest.fixture(scope="module")
def host_transforms():
    """size -> FrameTransforms running kernels/transforms.cu compiled for the CPU."""
    if cuda_host.compiler() is None:
        pytest.skip("needs a C++ compiler")
    names = {
        (size, key): expression
        for size in transforms.SPLITS
        for key, expression in transforms.kernel_names(size).items()
    }
    kernels = cuda_host.host_kernels(names)
    return {
        size: transforms.FrameTransforms(
            np, {key: kernels[(s, key)] for s, key in names if s == size}, size
        )
        for size in transforms.SPLITS
    }


def host_stack(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def host_relative(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("size", sorted(transforms.SPLITS))
def test_kernels_transform_on_the_host(host_transforms, size):
    """The CUDA source itself, run on the CPU (tests/cuda_host.py), against numpy.fft."""
    own = host_transforms[size]
    stack = host_stack(np.random.default_rng(size), (2, size, size))
    got = stack.copy()
    own.forward(got)
    assert host_relative(got, np.fft.fft2(stack)) <= 2e-6
    got = stack.copy()
    own.inverse(got)
    assert host_relative(got, np.fft.ifft2(stack) * size * size) <= 2e-6
    got = stack.copy()
    own.rows(got, inverse=True)
    assert host_relative(got, np.fft.ifft(stack, axis=-1) * size) <= 2e-6
    got = stack.copy()
    own.columns(got)
    assert host_relative(got, np.fft.fft(stack, axis=-2)) <= 2e-6


@pytest.mark.parametrize("size", sorted(transforms.SPLITS))
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("model", poisson.NOISE_MODELS)
def test_fused_gradient_chain_on_the_host(host_transforms, size, compact, model):
    """Row pass, columns_poisson, inverse row pass: the far fields, NLL and chi of
    ArrayOperators' nll_and_chi (the NumPy twin), for exit waves scaled as the waves
    kernel scales them."""
    own = host_transforms[size]
    rng = np.random.default_rng(size + 2 * compact)
    scale = np.float32(1 / size)
    waves = host_stack(rng, (3, size, size)) * scale * 20
    want_farfield = np.fft.fft2(waves).astype(np.complex64)
    counts = rng.poisson(np.abs(want_farfield) ** 2 * 0.8).astype(np.float32)
    counts[1, :3, :7] = -1  # excluded
    if compact:
        counts = count_store.encode(counts, count_store.COMPACT_DTYPE)
    twin = ArrayOperators(np, (size, size), "float32", "cubic")
    want_nll, want_chi = twin.nll_and_chi(want_farfield, counts, noise_model=model)
    work, chi, total = waves.copy(), np.empty_like(waves), np.full(1, 2.5)
    own.rows(work)
    own.columns_poisson(
        work, counts, work, chi, total, poisson.EPS_PHOTONS, scale, model == "amplitude"
    )
    own.rows(chi, inverse=True)
    assert host_relative(work, want_farfield) <= 2e-6
    assert host_relative(chi, want_chi) <= 2e-5
    assert abs(total[0] - 2.5 - want_nll[0]) <= 1e-5 * abs(want_nll[0])
    # without the far fields kept, chi in the stack's own buffer ("counts" storage)
    work, total = waves.copy(), np.zeros(1)
    own.rows(work)
    own.columns_poisson(
        work, counts, None, work, total, poisson.EPS_PHOTONS, scale, model == "amplitude"
    )
    own.rows(work, inverse=True)
    assert host_relative(work, want_chi) <= 2e-5
    # the far fields of every other frame kept ("farfields" storage's line-search sample)
    for kept in (slice(0, None, 2), slice(1, None, 2)):
        work, total = waves.copy(), np.zeros(1)
        sampled = np.zeros((len(range(3)[kept]), size, size), np.complex64)
        own.rows(work)
        own.columns_poisson(
            work, counts, sampled, work, total, poisson.EPS_PHOTONS, scale, False, kept
        )
        assert host_relative(sampled, want_farfield[kept]) <= 2e-6
        with pytest.raises(ValueError, match=f"holds {len(sampled)} frames for the 0 kept"):
            own.columns_poisson(work, counts, sampled, work, total, 0.0, scale, False, slice(5, 9))
    with pytest.raises(ValueError, match="float32 or uint16"):
        own.columns_poisson(work, counts.astype(np.int32), None, work, total, 0.0, scale, False)


gpu = pytest.mark.skipif(not cupy_device_available(), reason="needs CuPy and a CUDA device")


def operators(size: int, own: bool):
    """CudaOperators for size x size frames, with the own transforms or with cuFFT."""
    import cupy

    from bluesky_ptycho.engine.cuda_operators import CudaOperators

    choice = "fused" if own else "cufft"
    ops = CudaOperators(cupy, (size, size), "float32", "cubic", transforms=choice)
    assert (ops.own_transforms is not None) == own
    return ops


def random_stack(rng, shape):
    import cupy

    data = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return cupy.asarray(data.astype(np.complex64))


def relative(a, b) -> float:
    import cupy

    return float(cupy.abs(a - b).max() / cupy.abs(b).max())


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("size", sorted(transforms.SPLITS))
def test_kernels_are_cufft_transforms(size):
    import cupy

    ops = operators(size, True)
    stack = random_stack(np.random.default_rng(1), (5, size, size))
    got = stack.copy()
    ops.own_transforms.forward(got)
    assert relative(got, cupy.fft.fft2(stack)) <= 2e-6
    got = stack.copy()
    ops.own_transforms.inverse(got)
    assert relative(got, cupy.fft.ifft2(stack) * size * size) <= 2e-6
    rows = stack.copy()
    ops.own_transforms.rows(rows)
    assert relative(rows, cupy.fft.fft(stack, axis=-1)) <= 2e-6
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.own_transforms.rows(stack[:, :, : size // 2])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("size", sorted(transforms.SPLITS))
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("model", poisson.NOISE_MODELS)
def test_fused_gradient_chain_matches_cufft(size, compact, model):
    """farfields_nll_and_chi: the row pass, columns_poisson and the inverse row pass
    against the waves, cuFFT, poisson_gradient and cuFFT."""
    import cupy

    from bluesky_ptycho.engine import counts as count_store

    own, cufft = operators(size, True), operators(size, False)
    rng = np.random.default_rng(size + compact)
    n_frames, object_shape = 7, (size + 40, size + 52)
    corners = np.stack([rng.integers(0, 40, n_frames), rng.integers(0, 52, n_frames)], axis=1)
    fractions = rng.uniform(0, 1, (n_frames, 2))
    for ops in (own, cufft):
        ops.set_geometry(corners, fractions, object_shape)
    probe = random_stack(rng, (size, size)) * 10
    obj = random_stack(rng, object_shape)
    taps = own.taps(probe)
    want_farfield = cufft.farfields(taps, obj, slice(None))
    intensity = cupy.asnumpy(cupy.abs(want_farfield) ** 2)
    counts = cupy.asarray(rng.poisson(intensity * 0.8).astype(np.float32))
    counts[1, :3, :7] = -1  # excluded
    if compact:
        counts = count_store.encode(counts, count_store.COMPACT_DTYPE)
    want_nll, want_chi = cufft.nll_and_chi(want_farfield.copy(), counts, noise_model=model)
    for kept in (slice(None), slice(1, None, 3), None):
        farfield = None if kept is None else cupy.empty_like(want_farfield[kept])
        total = cupy.full(1, 2.5)
        nll, chi = own.farfields_nll_and_chi(
            taps, obj, slice(None), counts, farfield, None, model, total, kept or slice(None)
        )
        assert nll is total
        assert abs(float(nll[0]) - 2.5 - float(want_nll[0])) <= 1e-5 * abs(float(want_nll[0]))
        assert relative(chi, want_chi) <= 2e-5
        if kept is not None:
            assert relative(farfield, want_farfield[kept]) <= 2e-6
    # every other frame, the far fields and chi in one buffer as "counts" storage has them
    chi = cupy.empty((4, size, size), np.complex64)
    every_other = cupy.ascontiguousarray(counts[::2])
    nll, got = own.farfields_nll_and_chi(taps, obj, slice(0, None, 2), every_other, None, chi)
    assert got is chi
    _, want = cufft.nll_and_chi(want_farfield[::2].copy(), every_other)
    assert relative(chi, want) <= 2e-5


@pytest.mark.gpu
@gpu
def test_reconstruction_with_own_transforms_follows_cufft():
    """Ten iterations at 128 x 128: NLL histories within single precision's reach."""
    import cupy

    from bluesky_ptycho import Reconstructor
    from bluesky_ptycho.sim.sample import default_config, simulate_scan

    scan = simulate_scan(default_config(128), n_frames=200, xp=cupy)
    histories = []
    for choice in ("fused", "cufft"):
        rec = Reconstructor(scan.config, backend="cupy", transforms=choice)
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
        histories.append(np.array([rec.iterate(1) for _ in range(10)]))
        if choice == "fused":
            assert rec._stores[0].ops.own_transforms is not None
    fused, cufft = histories
    assert np.abs(fused - cufft).max() <= 1e-4 * np.abs(cufft).max()


def test_transforms_choice_is_checked():
    from bluesky_ptycho.engine.reconstructor import make_operators

    with pytest.raises(ValueError, match="transforms: expected one of"):
        make_operators(np, (128, 128), "float32", "cubic", transforms="fftw")
    with pytest.raises(ValueError, match="needs the fused operators"):
        make_operators(np, (128, 128), "float32", "cubic", transforms="fused")
    assert make_operators(np, (128, 128), "float32", "cubic").frame_shape == (128, 128)
