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

#: pixels per chunk of frames processed together (2**25: 512 frames of 256 x 256)
CHUNK_PIXELS = 2**25


@runtime_checkable
class EngineOperators(Protocol):
    """What the reconstructor needs from an operator implementation.

    ``counts`` arguments take the stored form of :mod:`.counts`; ``out`` arguments
    are optional (n, M, N) complex buffers the result is written into and returned.
    """

    frame_shape: tuple[int, int]
    real_dtype: str
    interpolation: str

    def set_geometry(
        self, corners: np.ndarray, fractions: np.ndarray, object_shape: tuple[int, int]
    ) -> None:
        """Window corners (n, 2) int and fractional probe offsets (n, 2) of active frames."""

    def farfields(self, probe: Any, obj: Any, start: int = 0, out: Any = None) -> Any:
        """Model far fields ``FFT_ortho(P_j O_j)`` of frames ``start:``."""

    def nll_and_chi(self, farfield: Any, counts: Any, out: Any = None) -> tuple[Any, Any]:
        """Poisson NLL and the exit-wave gradient ``chi = IFFT_ortho(dL/da*)``.

        The NLL may be a one-element float64 device array, read only once needed
        (``float(nll)``), so several devices' work can be queued first."""

    def object_gradient(
        self, chi: Any, probe: Any, obj: Any, probe_terms: bool
    ) -> tuple[Any, Any, Any, Any]:
        """``(g_O, illumination, g_P, probe_power)``; the last two None without
        ``probe_terms`` (g_P = sum shift^T conj(O_j) chi_j, probe_power =
        sum shift^T |O_j|^2). May overwrite ``chi``."""

    def illumination(self, probe: Any) -> Any:
        """``sum_j scatter_j |P_j|^2``: object-shaped, real."""

    def direction_farfields(
        self, probe: Any, dprobe: Any | None, obj: Any, dobj: Any, out: Any = None
    ) -> tuple[Any, Any | None]:
        """Far fields of the exit-wave change along (dO, dP): ``b = F(P dO + dP O)``
        and ``c = F(dP dO)`` (None when ``dprobe`` is None); ``out`` = (b, c) buffers."""

    def line_search_sums(
        self, farfield: Any, linear: Any, quadratic: Any | None, counts: Any, steps: Any
    ) -> Any:
        """``[L'(t), L''(t)]`` at each step ``t`` along ``a + t b + t^2 c``: a
        (len(steps), 2) float64 array, on the device (not synchronised; valid
        until the next call)."""

    def advance(self, farfield: Any, linear: Any, quadratic: Any | None, tau: float) -> None:
        """``a += tau b + tau^2 c`` in place."""

    def workspace_bytes(self, n_frames: int) -> int:
        """Most bytes of temporaries one operation allocates for ``n_frames`` frames."""


def frame_chunks(start: int, stop: int, frame_shape: tuple[int, int]) -> Iterator[slice]:
    """Slices of frames ``start:stop`` with about ``CHUNK_PIXELS`` pixels each."""
    step = max(1, CHUNK_PIXELS // (frame_shape[0] * frame_shape[1]))
    for first in range(start, stop, step):
        yield slice(first, min(first + step, stop))


def chunk_pixels(n_frames: int, frame_shape: tuple[int, int]) -> int:
    """Pixels in the largest chunk of :func:`frame_chunks` for ``n_frames`` frames."""
    pixels = frame_shape[0] * frame_shape[1]
    return min(n_frames, max(1, CHUNK_PIXELS // pixels)) * pixels


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


def direction_buffers(ops: Any, out: Any, quadratic: bool) -> tuple[Any, Any | None]:
    """The (b, c) stacks of ``direction_farfields``: ``out``'s (checked) or new ones."""
    out_linear, out_quadratic = out if out is not None else (None, None)
    args = (ops.n_frames, ops.frame_shape, ops._complex)
    linear = stack_buffer(ops.xp, out_linear, *args)
    return linear, stack_buffer(ops.xp, out_quadratic, *args) if quadratic else None


class ArrayOperators:
    """Generic array-module implementation of :class:`EngineOperators` (the reference)."""

    def __init__(
        self, xp: ModuleType, frame_shape: tuple[int, int], real_dtype: str, interpolation: str
    ) -> None:
        self.xp = xp
        self.frame_shape = frame_shape
        self.real_dtype = real_dtype
        self.interpolation = interpolation
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

    def _chunks(self, start: int = 0) -> Iterator[slice]:
        return frame_chunks(start, self.n_frames, self.frame_shape)

    def _probes(self, taps: Any, frames: slice) -> Any:
        return shift.weighted_sum(self.weights[frames], taps).reshape(-1, *self.frame_shape)

    def farfields(self, probe: Any, obj: Any, start: int = 0, out: Any = None) -> Any:
        xp = self.xp
        out = stack_buffer(xp, out, self.n_frames - start, self.frame_shape, self._complex)
        taps = shift.tap_stack(probe, self.interpolation)
        for frames in self._chunks(start):
            local = slice(frames.start - start, frames.stop - start)
            out[local] = self._probes(taps, frames) * patches.extract(obj, self._indices[frames])
            transform(xp, out[local])
        return out

    def nll_and_chi(self, farfield: Any, counts: Any, out: Any = None) -> tuple[float, Any]:
        xp = self.xp
        out = stack_buffer(xp, out, self.n_frames, self.frame_shape, self._complex)
        nll = 0.0
        for frames in self._chunks():
            nll += poisson.negative_log_likelihood(farfield[frames], counts[frames])
            out[frames] = poisson.farfield_gradient(farfield[frames], counts[frames])
            transform(xp, out[frames], inverse=True)
        return nll, out

    def object_gradient(
        self, chi: Any, probe: Any, obj: Any, probe_terms: bool
    ) -> tuple[Any, Any, Any, Any]:
        xp = self.xp
        grad = xp.zeros(self.object_shape, self._complex)
        illumination = xp.zeros(self.object_shape, self.real_dtype)
        grad_taps = power_taps = None
        if probe_terms:  # zeros stand for a partition without frames
            tap_shape = (len(shift.taps(self.interpolation)), *self.frame_shape)
            grad_taps = xp.zeros(tap_shape, self._complex)
            power_taps = xp.zeros(tap_shape, self.real_dtype)
        taps = shift.tap_stack(probe, self.interpolation)
        for frames in self._chunks():
            probes, indices = self._probes(taps, frames), self._indices[frames]
            grad += patches.scatter_add(xp.conj(probes) * chi[frames], indices, self.object_shape)
            illumination += patches.scatter_add(_power(probes), indices, self.object_shape)
            if probe_terms:
                views = patches.extract(obj, indices)
                grad_part = shift.tap_sums(xp.conj(views) * chi[frames], self.weights[frames])
                power_part = shift.tap_sums(_power(views), self.weights[frames])
                grad_taps += grad_part
                power_taps += power_part
        return gradients(grad, illumination, grad_taps, power_taps, self.interpolation)

    def illumination(self, probe: Any) -> Any:
        out = self.xp.zeros(self.object_shape, self.real_dtype)
        taps = shift.tap_stack(probe, self.interpolation)
        for frames in self._chunks():
            power = _power(self._probes(taps, frames))
            out += patches.scatter_add(power, self._indices[frames], self.object_shape)
        return out

    def direction_farfields(
        self, probe: Any, dprobe: Any | None, obj: Any, dobj: Any, out: Any = None
    ) -> tuple[Any, Any | None]:
        xp = self.xp
        linear, quadratic = direction_buffers(self, out, dprobe is not None)
        if dprobe is not None:
            dtaps = shift.tap_stack(dprobe, self.interpolation)
        taps = shift.tap_stack(probe, self.interpolation)
        for frames in self._chunks():
            indices = self._indices[frames]
            dviews = patches.extract(dobj, indices)
            linear[frames] = self._probes(taps, frames) * dviews
            if quadratic is not None:
                dprobes = self._probes(dtaps, frames)
                linear[frames] += dprobes * patches.extract(obj, indices)
                quadratic[frames] = dprobes * dviews
                transform(xp, quadratic[frames])
            transform(xp, linear[frames])
        return linear, quadratic

    def line_search_sums(
        self, farfield: Any, linear: Any, quadratic: Any | None, counts: Any, steps: Any
    ) -> Any:
        sums = np.zeros((len(steps), 2))
        for frames in self._chunks():
            part = poisson.line_search_terms(
                farfield[frames],
                linear[frames],
                None if quadratic is None else quadratic[frames],
                counts[frames],
                steps,
            )
            sums += np.stack(part, axis=1)
        return self.xp.asarray(sums)

    def advance(self, farfield: Any, linear: Any, quadratic: Any | None, tau: float) -> None:
        for frames in self._chunks():
            farfield[frames] += tau * linear[frames]
            if quadratic is not None:
                farfield[frames] += (tau * tau) * quadratic[frames]

    def workspace_bytes(self, n_frames: int) -> int:
        # object_gradient: probes, product, views and conj(views) * chi (complex),
        # powers (real), per-tap sums; scatter_add's bincount works in float64.
        pixels = chunk_pixels(n_frames, self.frame_shape)
        complex_size = np.dtype(self._complex).itemsize
        return pixels * (5 * complex_size + 2 * 8 + 8)


def _power(stack: Any) -> Any:
    return stack.real**2 + stack.imag**2
