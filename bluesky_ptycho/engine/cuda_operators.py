"""Fused CUDA kernels (kernels/ptycho.cu) implementing :class:`~.operators.EngineOperators`.

Each method computes what its :class:`~.operators.ArrayOperators` twin computes,
in fewer passes over the frame stack; the GPU tests compare them. The sub-pixel
probe shifts stay in :mod:`.shift` (one matrix product makes a chunk of frames'
probes); the kernels read those stacks. The transforms are cuFFT's unnormalised
ones, in place, with the unitary scale folded into the kernel next to each
(no separate scaling pass). CuPy is imported by the caller; this module only
touches it through ``xp``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from . import counts as count_store
from . import poisson, shift
from .operators import chunk_pixels, frame_chunks, stack_buffer, transform

KERNEL_FILE = "ptycho.cu"
#: kernels templated on the real type only, and on (real, stored count) types
KERNELS = ("object_gradient", "exit_waves", "advance")
COUNT_KERNELS = ("poisson_gradient", "line_search_terms")
COUNT_TYPES = {count_store.COMPACT_DTYPE.name: "unsigned short"}
THREADS = 256
#: a null pointer for optional kernel arguments
NULL = np.uint64(0)
#: compute capability from which one 16-byte float atomic adds gradient and illumination
VECTOR_ATOMICS_CC = 90


def _optional(array: Any) -> Any:
    return NULL if array is None else array


def kernel_source() -> str:
    """Source of kernels/ptycho.cu: package data when installed, else the checkout's."""
    packaged = resources.files("bluesky_ptycho") / "_kernels" / KERNEL_FILE
    if packaged.is_file():
        return packaged.read_text()
    return (Path(__file__).resolve().parents[2] / "kernels" / KERNEL_FILE).read_text()


def _names(ctype: str) -> dict[tuple[str, str], str]:
    """(kernel, count dtype or '') -> template name expression."""
    names = {(name, ""): f"{name}<{ctype}>" for name in KERNELS}
    for name in COUNT_KERNELS:
        for dtype, count_ctype in ((ctype, ctype), *COUNT_TYPES.items()):
            key = "" if dtype == ctype else dtype
            names[(name, key)] = f"{name}<{ctype}, {count_ctype}>"
    return names


@functools.cache
def _module(real: str) -> tuple[dict[tuple[str, str], Any], bool]:
    """Compiled kernels for ``real`` and whether they use vector atomics.

    Vector atomics (``atomicAdd(float4*)``) are tried in single precision on
    compute capability >= 9.0 and dropped if this toolkit's compiler lacks them.
    """
    import cupy

    ctype = {"float32": "float", "float64": "double"}[real]
    names = _names(ctype)
    capability = int(cupy.cuda.Device().compute_capability)
    tries = [False]
    if real == "float32" and capability >= VECTOR_ATOMICS_CC:
        tries.insert(0, True)
    for vector in tries:
        options = ("-std=c++17",) + (("-DPTYCHO_VECTOR_ATOMICS",) if vector else ())
        try:
            module = cupy.RawModule(
                code=kernel_source(), options=options, name_expressions=list(names.values())
            )
            kernels = {key: module.get_function(name) for key, name in names.items()}
        except cupy.cuda.compiler.CompileException:
            if vector:
                continue
            raise
        return kernels, vector
    raise AssertionError("unreachable")


class CudaOperators:
    """Fused-kernel implementation of :class:`~.operators.EngineOperators` on CuPy."""

    def __init__(
        self, xp: ModuleType, frame_shape: tuple[int, int], real_dtype: str, interpolation: str
    ) -> None:
        self.xp = xp
        self.frame_shape = frame_shape
        self.real_dtype = real_dtype
        self.interpolation = interpolation
        self._complex = np.result_type(real_dtype, np.complex64)
        self._kernels, self.vector_atomics = _module(real_dtype)
        self._real = np.dtype(real_dtype).type
        #: unitary FFT scale, applied inside the kernels next to each transform
        self._scale = self._real(1 / np.sqrt(frame_shape[0] * frame_shape[1]))
        self.weights: Any = None
        self.object_shape: tuple[int, int] = (0, 0)
        self._corners: Any = None
        self._sums = xp.zeros(2, "float64")
        device = xp.cuda.Device()
        self._grid_limit = 32 * device.attributes["MultiProcessorCount"]

    @property
    def n_frames(self) -> int:
        return 0 if self._corners is None else int(self._corners.shape[0])

    def set_geometry(
        self, corners: np.ndarray, fractions: np.ndarray, object_shape: tuple[int, int]
    ) -> None:
        xp = self.xp
        self.object_shape = object_shape
        self._corners = xp.asarray(corners, dtype=np.int32)
        self.weights = shift.interpolation_weights(
            xp.asarray(fractions, dtype=self.real_dtype), self.interpolation
        )

    # ----------------------------------------------------------------- helpers
    def _launch(self, name: str, size: int, args: tuple, counts: Any = None) -> None:
        key = ""
        if counts is not None and counts.dtype != self._real:
            key = str(counts.dtype)
        blocks = max(1, min((size + THREADS - 1) // THREADS, self._grid_limit))
        self._kernels[(name, key)]((blocks,), (THREADS,), args)

    def _chunks(self, start: int = 0) -> Iterator[slice]:
        return frame_chunks(start, self.n_frames, self.frame_shape)

    def _stack_args(self, frames: slice) -> tuple:
        """Corners, element count and sizes of ``frames``."""
        rows, cols = self.frame_shape
        return (
            self._corners[frames],
            np.int64((frames.stop - frames.start) * rows * cols),
            np.int32(rows),
            np.int32(cols),
            np.int32(self.object_shape[1]),
        )

    def _probes(self, taps: Any, frames: slice) -> Any:
        """Sub-pixel-shifted probes of ``frames`` (one GEMM)."""
        return shift.weighted_sum(self.weights[frames], taps).reshape(-1, *self.frame_shape)

    def _forward(self, stack: Any) -> None:
        transform(self.xp, stack, norm="backward")  # unnormalised: scale is in the kernel

    def _inverse(self, stack: Any) -> None:
        transform(self.xp, stack, inverse=True, norm="forward")  # unnormalised

    def _accumulator(self) -> Any:
        """(H, W, 4) zeros: gradient re, im, illumination, unused per object pixel."""
        return self.xp.zeros((*self.object_shape, 4), self.real_dtype)

    # -------------------------------------------------------------- operators
    def farfields(self, probe: Any, obj: Any, start: int = 0, out: Any = None) -> Any:
        out = stack_buffer(self.xp, out, self.n_frames - start, self.frame_shape, self._complex)
        taps = shift.tap_stack(probe, self.interpolation)
        for frames in self._chunks(start):
            target = out[frames.start - start : frames.stop - start]
            self._launch(
                "exit_waves",
                target.size,
                (
                    self._probes(taps, frames),
                    NULL,
                    obj,
                    NULL,
                    *self._stack_args(frames),
                    self._scale,
                    target,
                    NULL,
                ),
            )
            self._forward(target)
        return out

    def nll_and_chi(self, farfield: Any, counts: Any, out: Any = None) -> tuple[float, Any]:
        out = stack_buffer(self.xp, out, farfield.shape[0], self.frame_shape, self._complex)
        self._sums.fill(0)
        self._launch(
            "poisson_gradient",
            farfield.size,
            (
                farfield,
                counts,
                out,
                self._sums,
                np.int64(farfield.size),
                self._real(poisson.EPS_PHOTONS),
                self._scale,
            ),
            counts,
        )
        for frames in self._chunks():
            self._inverse(out[frames])
        return float(self._sums[0]), out

    def object_gradient(
        self, chi: Any, probe: Any, obj: Any, probe_terms: bool
    ) -> tuple[Any, Any, Any, Any]:
        xp = self.xp
        acc = self._accumulator()
        grad_taps = power_taps = None
        taps = shift.tap_stack(probe, self.interpolation)
        for frames in self._chunks():
            part = chi[frames]
            view_power = xp.empty(part.shape, self.real_dtype) if probe_terms else None
            self._launch(
                "object_gradient",
                part.size,
                (
                    part,
                    self._probes(taps, frames),
                    obj,
                    *self._stack_args(frames),
                    acc,
                    _optional(view_power),
                ),
            )
            if probe_terms:
                grad_part = shift.tap_sums(part, self.weights[frames])
                power_part = shift.tap_sums(view_power, self.weights[frames])
                grad_taps = grad_part if grad_taps is None else grad_taps + grad_part
                power_taps = power_part if power_taps is None else power_taps + power_part
        grad = xp.ascontiguousarray(acc[..., :2]).view(self._complex)[..., 0]
        illumination = xp.ascontiguousarray(acc[..., 2])
        if not probe_terms:
            return grad, illumination, None, None
        kind = self.interpolation
        return (
            grad,
            illumination,
            shift.combine_taps(grad_taps, kind),
            shift.combine_taps(power_taps, kind),
        )

    def illumination(self, probe: Any) -> Any:
        acc = self._accumulator()
        taps = shift.tap_stack(probe, self.interpolation)
        for frames in self._chunks():
            probes = self._probes(taps, frames)
            self._launch(
                "object_gradient",
                probes.size,
                (NULL, probes, NULL, *self._stack_args(frames), acc, NULL),
            )
        return self.xp.ascontiguousarray(acc[..., 2])

    def direction_farfields(
        self, probe: Any, dprobe: Any | None, obj: Any, dobj: Any, out: Any = None
    ) -> tuple[Any, Any | None]:
        xp = self.xp
        out_linear, out_quadratic = out if out is not None else (None, None)
        shape, n = self.frame_shape, self.n_frames
        linear = stack_buffer(xp, out_linear, n, shape, self._complex)
        quadratic = None
        if dprobe is not None:
            quadratic = stack_buffer(xp, out_quadratic, n, shape, self._complex)
            dtaps = shift.tap_stack(dprobe, self.interpolation)
        taps = shift.tap_stack(probe, self.interpolation)
        for frames in self._chunks():
            self._launch(
                "exit_waves",
                linear[frames].size,
                (
                    self._probes(taps, frames),
                    NULL if quadratic is None else self._probes(dtaps, frames),
                    obj,
                    dobj,
                    *self._stack_args(frames),
                    self._scale,
                    linear[frames],
                    NULL if quadratic is None else quadratic[frames],
                ),
            )
            self._forward(linear[frames])
            if quadratic is not None:
                self._forward(quadratic[frames])
        return linear, quadratic

    def line_search_terms(
        self, farfield: Any, linear: Any, quadratic: Any | None, counts: Any, tau: float
    ) -> tuple[float, float]:
        self._sums.fill(0)
        self._launch(
            "line_search_terms",
            farfield.size,
            (
                farfield,
                linear,
                _optional(quadratic),
                counts,
                self._real(tau),
                self._sums,
                np.int64(farfield.size),
                self._real(poisson.EPS_PHOTONS),
            ),
            counts,
        )
        slope, curvature = self._sums.get()
        return float(slope), float(curvature)

    def advance(self, farfield: Any, linear: Any, quadratic: Any | None, tau: float) -> None:
        self._launch(
            "advance",
            farfield.size,
            (farfield, linear, _optional(quadratic), self._real(tau), np.int64(farfield.size)),
        )

    def workspace_bytes(self, n_frames: int) -> int:
        # direction_farfields: probes and dprobes of one chunk; cuFFT's work area
        # for a chunk (at most one chunk-sized complex stack).
        pixels = chunk_pixels(n_frames, self.frame_shape)
        return 3 * pixels * np.dtype(self._complex).itemsize
