"""The ML_grad operators on whole frame stacks: their declared interface and the array twin.

:class:`EngineOperators` is the interface the :class:`~.reconstructor.Reconstructor`
uses. :class:`ArrayOperators` implements it once for NumPy and CuPy by composing
the small forward/adjoint pairs of :mod:`.patches` and :mod:`.shift` with the
Poisson terms of :mod:`.poisson`; it is the reference ("twin") for the fused CUDA
kernels of :mod:`.cuda_operators`, which implement the same interface (no
inheritance between the two) in fewer passes.

Conventions: stacks are (n, M, N), frame-major, DC at the corner; far fields are
``a_j = FFT_ortho(P_j O_j)``; counts are stored as :mod:`.counts` describes.
The geometry - integer window corners and bilinear probe weights of every
active frame - is set once per iteration with ``set_geometry``. Every stack
operation works through frames in chunks of about ``CHUNK_PIXELS`` pixels, so
its temporaries stay bounded whatever the number of frames; outputs can be
written into caller-owned buffers (``out``) that live across iterations.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import patches, poisson, shift
from .backend import to_host

#: pixels per chunk of frames processed together (2**25: 512 frames of 256 x 256);
#: an implementation made with ``max_chunk_pixels`` uses that instead
CHUNK_PIXELS = 2**25


@runtime_checkable
class EngineOperators(Protocol):
    """What the reconstructor needs from an operator implementation.

    ``taps`` arguments take :meth:`taps` of a probe (made once per iteration, not
    per chunk); ``frames`` arguments are slices of the geometry's frames (a step
    takes every k-th frame), and the stacks that go with them hold just those
    frames; ``counts`` take the stored form of :mod:`.counts`; ``out`` arguments
    are optional (n, M, N) complex buffers the result is written into and
    returned. The stacks :meth:`line_search_sums` takes may be views of every
    k-th frame of larger stacks (each frame contiguous).
    """

    frame_shape: tuple[int, int]
    real_dtype: str
    interpolation: str
    max_chunk_pixels: int | None  # pixels a chunk of frames holds at most (None: CHUNK_PIXELS)
    #: object-sized complex temporaries the gradient pass allocates beyond its results
    object_temporaries: int

    def set_geometry(
        self, corners: np.ndarray, fractions: np.ndarray, object_shape: tuple[int, int]
    ) -> None:
        """Window corners (n, 2) int and fractional probe offsets (n, 2) of active frames."""

    def taps(self, probe: Any) -> Any:
        """The probe's K whole-pixel-shifted taps (:func:`.shift.tap_stack`)."""

    def farfields(self, taps: Any, obj: Any, frames: slice, out: Any = None) -> Any:
        """Model far fields ``FFT_ortho(P_j O_j)`` of ``frames``."""

    def nll_and_chi(
        self,
        farfield: Any,
        counts: Any,
        out: Any = None,
        noise_model: str = "poisson",
        step: tuple[Any, Any | None, Any] | None = None,
        total: Any = None,
    ) -> tuple[Any, Any]:
        """Poisson NLL and the exit-wave gradient ``chi = IFFT_ortho(dL/da*)`` of a
        stack, ``L`` of the ``noise_model`` (:mod:`.poisson`; the NLL reported is
        Poisson's either way); ``out`` may be ``farfield`` itself (computed in place).
        ``step`` = (b, c or None, tau): first ``farfield += tau b + tau^2 c`` (the last
        line search's step, :meth:`advance` fused into this pass); ``out`` may be ``b``.
        ``tau`` (here and in :meth:`advance`): a number or a one-element float64 array
        on the device (the line search's state, read there without a host round trip).

        The NLL is added to ``total``, a one-element float64 array on the stack's
        device (a new zero one when None), which is returned: it is read only once
        needed (``float(nll)``), so several chunks' and devices' work is queued first."""

    def farfields_nll_and_chi(
        self,
        taps: Any,
        obj: Any,
        frames: slice,
        counts: Any,
        farfield: Any = None,
        chi: Any = None,
        noise_model: str = "poisson",
        total: Any = None,
        kept: slice = slice(None),
    ) -> tuple[Any, Any]:
        """:meth:`farfields` then :meth:`nll_and_chi` of ``frames`` (``counts``: theirs)
        in one go: the far fields of the frames ``kept`` (a slice of ``frames``' own,
        step >= 1) are written to ``farfield``, one frame each (none kept when it is
        None), the NLL added to ``total`` and returned with ``chi`` (``out`` of
        :meth:`nll_and_chi`)."""

    def gradient_sums(self, probe_terms: bool) -> Any:
        """Zeroed accumulators for :meth:`add_object_gradient` (implementation's own)."""

    def add_object_gradient(self, sums: Any, chi: Any, taps: Any, obj: Any, frames: slice) -> None:
        """Add the object and (with probe terms) probe gradient terms of ``frames``,
        whose exit-wave gradients ``chi`` holds, to ``sums``."""

    def gradients(self, sums: Any) -> tuple[Any, Any, Any, Any]:
        """``(g_O, illumination, g_P, probe_power)`` from ``sums``; the last two None
        without probe terms (g_P = sum shift^T conj(O_j) chi_j, probe_power =
        sum shift^T |O_j|^2)."""

    def illumination(self, taps: Any) -> Any:
        """``sum_j scatter_j |P_j|^2`` over all frames: object-shaped, real."""

    def direction_farfields(
        self, taps: Any, dtaps: Any | None, obj: Any, dobj: Any, frames: slice, out: Any = None
    ) -> tuple[Any, Any | None]:
        """Far fields of the exit-wave change of ``frames`` along (dO, dP): ``b = F(P dO
        + dP O)`` and ``c = F(dP dO)`` (None when ``dtaps`` is None); ``out`` = (b, c)."""

    def line_search_sums(
        self,
        farfield: Any,
        linear: Any,
        quadratic: Any | None,
        counts: Any,
        steps: Any,
        noise_model: str = "poisson",
        total: Any = None,
    ) -> Any:
        """``[L'(t), L''(t)]`` of the ``noise_model`` at each step ``t`` along
        ``a + t b + t^2 c``: a (len(steps), 2) float64 array on the device (not
        synchronised), added to ``total`` when given (and returned); otherwise valid
        until the next call."""

    def advance(self, farfield: Any, linear: Any, quadratic: Any | None, tau: Any) -> None:
        """``a += tau b + tau^2 c`` in place."""

    def workspace_bytes(self, chunk_frames: int) -> int:
        """Most bytes of temporaries one operation on ``chunk_frames`` frames allocates."""


def frame_chunks(
    start: int, stop: int, frame_shape: tuple[int, int], max_pixels: int | None = None
) -> Iterator[slice]:
    """Slices of frames ``start:stop`` with about ``max_pixels`` (None: ``CHUNK_PIXELS``)
    pixels each."""
    step = max(1, (max_pixels or CHUNK_PIXELS) // (frame_shape[0] * frame_shape[1]))
    for first in range(start, stop, step):
        yield slice(first, min(first + step, stop))


def strided_chunks(
    frames: slice, n_frames: int, frame_shape: tuple[int, int], max_pixels: int | None = None
) -> Iterator[tuple[slice, slice]]:
    """(frames of a stack of ``n_frames``, the same frames counted within ``frames``) of
    each chunk of :func:`frame_chunks` over the frames ``frames`` selects (any step)."""
    first, _, step = frames.indices(n_frames)
    for local in frame_chunks(0, frame_count(frames, n_frames), frame_shape, max_pixels):
        yield slice(first + local.start * step, first + local.stop * step, step), local


def chunk_pixels(n_frames: int, frame_shape: tuple[int, int], max_pixels: int | None = None) -> int:
    """Pixels in the largest chunk of :func:`frame_chunks` for ``n_frames`` frames."""
    pixels = frame_shape[0] * frame_shape[1]
    return min(n_frames, max(1, (max_pixels or CHUNK_PIXELS) // pixels)) * pixels


def transform(xp: ModuleType, stack: Any, inverse: bool = False, norm: str = "ortho") -> Any:
    """2-D FFT of the last two axes of ``stack``, written back into ``stack``."""
    if xp is np:
        stack[...] = (np.fft.ifft2 if inverse else np.fft.fft2)(stack, norm=norm)
        return stack
    import cupyx.scipy.fft as device_fft  # xp is CuPy: its scipy-style FFTs can overwrite

    fft = device_fft.ifft2 if inverse else device_fft.fft2
    result = fft(stack, norm=norm, overwrite_x=True)  # cuFFT in place for contiguous C2C
    if result.data.ptr != stack.data.ptr:
        stack[...] = result
    return stack


def stack_buffer(xp: ModuleType, out: Any, n_frames: int, frame_shape: tuple, dtype: Any) -> Any:
    """``out`` when given (checked), else a new (n_frames, M, N) stack."""
    shape = (n_frames, *frame_shape)
    if out is None:
        return xp.empty(shape, dtype)
    if tuple(out.shape) != shape or out.dtype != np.dtype(dtype):
        raise ValueError(f"out: expected a {shape} {np.dtype(dtype)} stack, got {out.shape}")
    return out


def gradients(
    grad: Any, illumination: Any, grad_taps: Any, power_taps: Any, kind: str
) -> tuple[Any, Any, Any, Any]:
    """``object_gradient``'s result from per-tap probe sums (None without probe terms)."""
    if grad_taps is None:
        return grad, illumination, None, None
    return (
        grad,
        illumination,
        shift.combine_taps(grad_taps, kind),
        shift.combine_taps(power_taps, kind),
    )


def direction_buffers(ops: Any, out: Any, n_frames: int, quadratic: bool) -> tuple[Any, Any | None]:
    """The (b, c) stacks of ``direction_farfields``: ``out``'s (checked) or new ones."""
    out_linear, out_quadratic = out if out is not None else (None, None)
    args = (n_frames, ops.frame_shape, ops._complex)
    linear = stack_buffer(ops.xp, out_linear, *args)
    return linear, stack_buffer(ops.xp, out_quadratic, *args) if quadratic else None


def composed_farfields_nll_and_chi(
    ops: Any,
    taps: Any,
    obj: Any,
    frames: slice,
    counts: Any,
    farfield: Any,
    chi: Any,
    noise_model: str,
    total: Any,
    kept: slice = slice(None),
) -> tuple[Any, Any]:
    """``EngineOperators.farfields_nll_and_chi`` as its two operations: the far fields
    made in ``farfield`` when it keeps every frame's, else in ``chi`` (the kept frames'
    copied to ``farfield``) and the gradient then made there in place."""
    n_frames = counts.shape[0]
    whole = farfield is not None and frame_count(kept, n_frames) == n_frames
    made = ops.farfields(taps, obj, frames, farfield if whole else chi)
    if farfield is not None and not whole:
        farfield[...] = made[kept]
    return ops.nll_and_chi(made, counts, chi, noise_model, None, total)


def frame_count(frames: slice, n_frames: int) -> int:
    """Frames in the slice ``frames`` of ``n_frames``."""
    return len(range(*frames.indices(n_frames)))


class ArrayOperators:
    """Generic array-module implementation of :class:`EngineOperators` (the reference)."""

    #: scatter_add's float64 bincounts and their complex result
    object_temporaries = 3

    def __init__(
        self,
        xp: ModuleType,
        frame_shape: tuple[int, int],
        real_dtype: str,
        interpolation: str,
        max_chunk_pixels: int | None = None,
    ) -> None:
        self.xp = xp
        self.frame_shape = frame_shape
        self.real_dtype = real_dtype
        self.interpolation = interpolation
        self.max_chunk_pixels = max_chunk_pixels
        self._complex = np.result_type(real_dtype, np.complex64)
        self.weights: Any = None
        self.object_shape: tuple[int, int] = (0, 0)
        self._indices: Any = None

    @property
    def n_frames(self) -> int:
        return 0 if self.weights is None else int(self.weights.shape[0])

    def set_geometry(
        self, corners: np.ndarray, fractions: np.ndarray, object_shape: tuple[int, int]
    ) -> None:
        xp = self.xp
        self.object_shape = object_shape
        self.weights = shift.interpolation_weights(
            xp.asarray(fractions, dtype=self.real_dtype), self.interpolation
        )
        self._indices = patches.window_flat_indices(
            xp.asarray(corners, dtype=np.int64), self.frame_shape, object_shape[1]
        )

    def taps(self, probe: Any) -> Any:
        return shift.tap_stack(probe, self.interpolation)

    def _chunks(self, frames: slice) -> Iterator[tuple[slice, slice]]:
        """(geometry frames, stack frames) of each chunk of ``frames`` (any step)."""
        return strided_chunks(frames, self.n_frames, self.frame_shape, self.max_chunk_pixels)

    def _probes(self, taps: Any, frames: slice) -> Any:
        return shift.weighted_sum(self.weights[frames], taps).reshape(-1, *self.frame_shape)

    def farfields(self, taps: Any, obj: Any, frames: slice, out: Any = None) -> Any:
        xp = self.xp
        n = frame_count(frames, self.n_frames)
        out = stack_buffer(xp, out, n, self.frame_shape, self._complex)
        for chunk, local in self._chunks(frames):
            out[local] = self._probes(taps, chunk) * patches.extract(obj, self._indices[chunk])
            transform(xp, out[local])
        return out

    def nll_and_chi(
        self,
        farfield: Any,
        counts: Any,
        out: Any = None,
        noise_model: str = "poisson",
        step: tuple[Any, Any | None, Any] | None = None,
        total: Any = None,
    ) -> tuple[Any, Any]:
        xp = self.xp
        n = farfield.shape[0]
        out = stack_buffer(xp, out, n, self.frame_shape, self._complex)
        total = xp.zeros(1, "float64") if total is None else total
        if step is not None:
            self.advance(farfield, *step)
        for chunk in frame_chunks(0, n, self.frame_shape, self.max_chunk_pixels):
            total += poisson.negative_log_likelihood(farfield[chunk], counts[chunk])
            out[chunk] = poisson.farfield_gradient(farfield[chunk], counts[chunk], noise_model)
            transform(xp, out[chunk], inverse=True)
        return total, out

    def farfields_nll_and_chi(
        self,
        taps: Any,
        obj: Any,
        frames: slice,
        counts: Any,
        farfield: Any = None,
        chi: Any = None,
        noise_model: str = "poisson",
        total: Any = None,
        kept: slice = slice(None),
    ) -> tuple[Any, Any]:
        return composed_farfields_nll_and_chi(
            self, taps, obj, frames, counts, farfield, chi, noise_model, total, kept
        )

    def gradient_sums(self, probe_terms: bool) -> list[Any]:
        """[g_O, illumination, per-tap g_P, per-tap power] (the last two None without
        probe terms)."""
        xp = self.xp
        sums = [
            xp.zeros(self.object_shape, self._complex),
            xp.zeros(self.object_shape, self.real_dtype),
            None,
            None,
        ]
        if probe_terms:  # zeros stand for a partition without frames
            tap_shape = (len(shift.taps(self.interpolation)), *self.frame_shape)
            sums[2:] = xp.zeros(tap_shape, self._complex), xp.zeros(tap_shape, self.real_dtype)
        return sums

    def add_object_gradient(self, sums: Any, chi: Any, taps: Any, obj: Any, frames: slice) -> None:
        xp = self.xp
        grad, illumination, grad_taps, power_taps = sums
        for chunk, local in self._chunks(frames):
            probes, indices = self._probes(taps, chunk), self._indices[chunk]
            grad += patches.scatter_add(xp.conj(probes) * chi[local], indices, self.object_shape)
            illumination += patches.scatter_add(_power(probes), indices, self.object_shape)
            if grad_taps is not None:
                views = patches.extract(obj, indices)
                grad_taps += shift.tap_sums(xp.conj(views) * chi[local], self.weights[chunk])
                power_taps += shift.tap_sums(_power(views), self.weights[chunk])

    def gradients(self, sums: Any) -> tuple[Any, Any, Any, Any]:
        return gradients(*sums, self.interpolation)

    def illumination(self, taps: Any) -> Any:
        out = self.xp.zeros(self.object_shape, self.real_dtype)
        for chunk, _ in self._chunks(slice(None)):
            power = _power(self._probes(taps, chunk))
            out += patches.scatter_add(power, self._indices[chunk], self.object_shape)
        return out

    def direction_farfields(
        self, taps: Any, dtaps: Any | None, obj: Any, dobj: Any, frames: slice, out: Any = None
    ) -> tuple[Any, Any | None]:
        xp = self.xp
        n = frame_count(frames, self.n_frames)
        linear, quadratic = direction_buffers(self, out, n, dtaps is not None)
        for chunk, local in self._chunks(frames):
            indices = self._indices[chunk]
            dviews = patches.extract(dobj, indices)
            linear[local] = self._probes(taps, chunk) * dviews
            if quadratic is not None:
                dprobes = self._probes(dtaps, chunk)
                linear[local] += dprobes * patches.extract(obj, indices)
                quadratic[local] = dprobes * dviews
                transform(xp, quadratic[local])
            transform(xp, linear[local])
        return linear, quadratic

    def line_search_sums(
        self,
        farfield: Any,
        linear: Any,
        quadratic: Any | None,
        counts: Any,
        steps: Any,
        noise_model: str = "poisson",
        total: Any = None,
    ) -> Any:
        steps = [float(step) for step in to_host(steps).reshape(-1)]  # (this path reads anyway)
        sums = np.zeros((len(steps), 2))
        for chunk in frame_chunks(0, farfield.shape[0], self.frame_shape, self.max_chunk_pixels):
            part = poisson.line_search_terms(
                farfield[chunk],
                linear[chunk],
                None if quadratic is None else quadratic[chunk],
                counts[chunk],
                steps,
                noise_model,
            )
            sums += np.stack(part, axis=1)
        if total is None:
            return self.xp.asarray(sums)
        total += self.xp.asarray(sums)
        return total

    def advance(self, farfield: Any, linear: Any, quadratic: Any | None, tau: Any) -> None:
        tau = float(to_host(tau).reshape(-1)[0])
        for chunk in frame_chunks(0, farfield.shape[0], self.frame_shape, self.max_chunk_pixels):
            farfield[chunk] += tau * linear[chunk]
            if quadratic is not None:
                farfield[chunk] += (tau * tau) * quadratic[chunk]

    def workspace_bytes(self, chunk_frames: int) -> int:
        # add_object_gradient: probes, product, views and conj(views) * chi (complex),
        # powers (real), per-tap sums; scatter_add's bincount works in float64.
        pixels = chunk_pixels(chunk_frames, self.frame_shape, self.max_chunk_pixels)
        complex_size = np.dtype(self._complex).itemsize
        return pixels * (5 * complex_size + 2 * 8 + 8)


def _power(stack: Any) -> Any:
    return stack.real**2 + stack.imag**2
