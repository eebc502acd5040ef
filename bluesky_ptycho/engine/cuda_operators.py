"""Fused CUDA kernels (kernels/ptycho.cu) implementing :class:`~.operators.EngineOperators`.

Each method computes what its :class:`~.operators.ArrayOperators` twin computes,
in fewer passes over the frame stack; the GPU tests compare them. The kernels
make each frame's sub-pixel-shifted probe in registers from the K tap images of
:func:`.shift.tap_stack` (no probe stack in memory), and sum the probe
gradient's per-tap terms per block of frames in the same pass; the tap images and
the adjoint's sum over them are one launch each (as CuPy rolls and sums they
were ~200 small launches an iteration, during which the GPU waited). The transforms
are unnormalised and in place, with the unitary scale folded into the kernel next to
each (no separate scaling pass): cuFFT's by default; with ``transforms="fused"``
those of :mod:`.transforms` (kernels/transforms.cu) where the frames are square
single-precision frames of a size it has a split for, whose gradient pass makes the
far fields, the Poisson gradient and its inverse transform in one pass over the
stack between the row passes. CuPy is imported by the caller; this module only
touches it through ``xp``.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from . import counts as count_store
from . import poisson, shift
from .operators import (
    chunk_pixels,
    composed_farfields_nll_and_chi,
    direction_buffers,
    frame_chunks,
    frame_count,
    stack_buffer,
    transform,
)
from .transforms import SPLITS, TRANSFORMS, FrameTransforms, kernel_names

#: CUDA sources: the kernels, and the transforms compiled after them where used
KERNEL_FILE, TRANSFORM_FILE = "ptycho.cu", "transforms.cu"
#: kernels templated on the real type, on (real, taps) and on (real, stored count) types
KERNELS = ("advance", "shift_taps", "combine_taps")
TAP_KERNELS = ("waves", "object_gradient")
COUNT_KERNELS = ("poisson_gradient", "line_search_terms")
COUNT_TYPES = {count_store.COMPACT_DTYPE.name: "unsigned short"}
THREADS = 256
#: a null pointer for optional kernel arguments
NULL = np.uint64(0)
#: compute capability from which one vector atomic adds a gradient pixel (8 bytes) or a
#: probe-gradient tap pixel (16 bytes)
VECTOR_ATOMICS_CC = 90
#: frames one thread block works through in the frame-loop kernels
FRAMES_PER_BLOCK = 64
#: frames a block sums the probe gradient's tap terms over before adding them to the
#: tap accumulator (fewer: more atomics; more: fewer blocks in flight)
PROBE_FRAMES_PER_BLOCK = 128
#: frames a block may work through at most (the kernels' shared-memory staging of the
#: group's window offsets and weights is sized for it)
MAX_BLOCK_FRAMES = 128
#: threads of a warp that share a frame pixel in each frame-loop kernel, each with its
#: share of the probe's taps (at most the taps: one for ``"nearest"``); read when the
#: kernels are compiled. Two lanes take the object gradient from 4.56 to 3.37 ms an
#: iteration at 256 x 256 x 4096 on an H200; `waves` is no faster with two (3.63 /
#: 3.61 ms) and slower with four (docs/benchmarks.md, tenth session)
TAP_LANES = {"waves": 1, "object_gradient": 2}


def _optional(array: Any) -> Any:
    return NULL if array is None else array


def _frame_stride(stack: Any) -> int:
    """Frames from one frame of the (n, M, N) ``stack`` to the next in memory (1:
    contiguous). Each frame must be contiguous: the kernels read it so."""
    if stack.shape[0] <= 1:
        return 1
    rows, cols = stack.shape[1:]
    frame_bytes = rows * cols * stack.itemsize
    stride = stack.strides[0]
    if tuple(stack.strides[1:]) != (cols * stack.itemsize, stack.itemsize) or (
        stride <= 0 or stride % frame_bytes
    ):
        raise ValueError(f"expected a stack of contiguous frames, got strides {stack.strides}")
    return stride // frame_bytes


def _amplitude_flag(noise_model: str) -> np.int32:
    """The kernels' ``amplitude`` argument for a noise model of :mod:`.poisson`."""
    if noise_model not in poisson.NOISE_MODELS:
        raise ValueError(
            f"noise model: expected one of {poisson.NOISE_MODELS}, got {noise_model!r}"
        )
    return np.int32(noise_model == "amplitude")


def kernel_source(with_transforms: bool = False) -> str:
    """kernels/ptycho.cu (then transforms.cu, ``with_transforms``) as one source: package
    data when installed, else the checkout's."""
    folder: Any = resources.files("bluesky_ptycho") / "_kernels"
    if not (folder / KERNEL_FILE).is_file():
        folder = Path(__file__).resolve().parents[2] / "kernels"
    names = (KERNEL_FILE, TRANSFORM_FILE) if with_transforms else (KERNEL_FILE,)
    return "\n".join((folder / name).read_text() for name in names)


def own_transform_size(
    frame_shape: tuple[int, int], real_dtype: str, choice: str = "fused"
) -> int | None:
    """The frame size kernels/transforms.cu transforms for these frames under the
    ``transforms`` choice ``choice``, or None (cuFFT's)."""
    if choice not in TRANSFORMS:
        raise ValueError(f"transforms: expected one of {TRANSFORMS}, got {choice!r}")
    rows, cols = frame_shape
    if choice == "fused" and rows == cols and rows in SPLITS and real_dtype == "float32":
        return rows
    return None


def tap_lanes(n_taps: int, lanes: int) -> int:
    """Threads a frame pixel's ``n_taps`` taps are split over: ``lanes``, or fewer where
    there are fewer taps (a power of two dividing both ``n_taps`` and 32)."""
    if lanes < 1 or lanes & (lanes - 1) or lanes > 32:
        raise ValueError(f"TAP_LANES: expected a power of two from 1 to 32, got {lanes}")
    while n_taps % lanes:
        lanes //= 2
    return lanes


def _names(
    ctype: str, lanes: dict[str, int], transform_size: int | None
) -> dict[tuple[str, str], str]:
    """(kernel, count dtype or interpolation or '') -> template name expression; the
    transforms' as ("transform", name) for ``transform_size`` frames."""
    names = {(name, ""): f"{name}<{ctype}>" for name in KERNELS}
    if transform_size is not None:
        for name, expression in kernel_names(transform_size).items():
            names[("transform", name)] = expression
    for name in TAP_KERNELS:
        for kind in shift.INTERPOLATIONS:
            n_taps = len(shift.taps(kind))
            split = tap_lanes(n_taps, lanes[name])
            names[(name, kind)] = f"{name}<{ctype}, {n_taps}, {split}>"
    for name in COUNT_KERNELS:
        for dtype, count_ctype in ((ctype, ctype), *COUNT_TYPES.items()):
            key = "" if dtype == ctype else dtype
            names[(name, key)] = f"{name}<{ctype}, {count_ctype}>"
    return names


@functools.cache
def _module(
    real: str, lanes: tuple[tuple[str, int], ...], transform_size: int | None = None
) -> tuple[dict[tuple[str, str], Any], bool]:
    """Compiled kernels for ``real`` (``lanes``: :data:`TAP_LANES`' items; the
    transforms of ``transform_size`` frames unless None) and whether they use vector
    atomics.

    Vector atomics (``atomicAdd(float4*)``) are tried in single precision on
    compute capability >= 9.0 and dropped if this toolkit's compiler lacks them.
    """
    import cupy

    ctype = {"float32": "float", "float64": "double"}[real]
    names = _names(ctype, dict(lanes), transform_size)
    capability = int(cupy.cuda.Device().compute_capability)
    tries = [False]
    if real == "float32" and capability >= VECTOR_ATOMICS_CC:
        tries.insert(0, True)
    sizes = (
        f"-DLINE_SEARCH_SAMPLES={len(poisson.LINE_SEARCH_SAMPLES)}",
        f"-DMAX_BLOCK_FRAMES={MAX_BLOCK_FRAMES}",
    )
    for vector in tries:
        options = ("-std=c++17", *sizes) + (("-DPTYCHO_VECTOR_ATOMICS",) if vector else ())
        try:
            module = cupy.RawModule(
                code=kernel_source(transform_size is not None),
                options=options,
                name_expressions=list(names.values()),
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

    #: the kernels scatter into the gradient and illumination arrays themselves
    object_temporaries = 0

    def __init__(
        self,
        xp: ModuleType,
        frame_shape: tuple[int, int],
        real_dtype: str,
        interpolation: str,
        max_chunk_pixels: int | None = None,
        transforms: str = "cufft",
    ) -> None:
        self.xp = xp
        self.frame_shape = frame_shape
        self.real_dtype = real_dtype
        self.interpolation = interpolation
        self.max_chunk_pixels = max_chunk_pixels
        self._complex = np.result_type(real_dtype, np.complex64)
        n_taps = len(shift.taps(interpolation))
        #: threads a frame pixel's taps are split over, per frame-loop kernel
        self.tap_lanes = {name: tap_lanes(n_taps, TAP_LANES[name]) for name in TAP_KERNELS}
        size = own_transform_size(frame_shape, real_dtype, transforms)
        self._kernels, self.vector_atomics = _module(real_dtype, tuple(TAP_LANES.items()), size)
        #: kernels/transforms.cu's transforms for these frames (None: cuFFT's)
        self.own_transforms = None
        if size is not None:
            items = self._kernels.items()
            kernels = {name: kernel for (group, name), kernel in items if group == "transform"}
            self.own_transforms = FrameTransforms(xp, kernels, size)
        self._real = np.dtype(real_dtype).type
        #: unitary FFT scale, applied inside the kernels next to each transform
        self._scale = self._real(1 / np.sqrt(frame_shape[0] * frame_shape[1]))
        self.weights: Any = None
        self.object_shape: tuple[int, int] = (0, 0)
        self._corners: Any = None
        #: (K, 2) whole-pixel (row, col) shifts of the interpolation's taps
        self._shifts = xp.asarray(shift.taps(interpolation), dtype=np.int32)
        self._sums = xp.zeros(2 * len(poisson.LINE_SEARCH_SAMPLES), "float64")
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

    def _launch_frames(self, name: str, n_frames: int, frames_per_block: int, args: tuple) -> None:
        """A frame-loop kernel: ``tap_lanes[name]`` threads per frame pixel, a block per
        group of frames."""
        if n_frames == 0:
            return
        if not 0 < frames_per_block <= MAX_BLOCK_FRAMES:
            raise ValueError(
                f"{name}: frames per block must be 1..{MAX_BLOCK_FRAMES}, got {frames_per_block}"
            )
        rows, cols = self.frame_shape
        threads = rows * cols * self.tap_lanes[name]
        grid = ((threads + THREADS - 1) // THREADS, -(-n_frames // frames_per_block))
        self._kernels[(name, self.interpolation)](grid, (THREADS,), args)

    def _frame_args(self, frames: slice) -> tuple[int, Any, tuple]:
        """Count, weights, and (corners, count, sizes) of the geometry's ``frames``
        (any step: the kernels take contiguous copies of every k-th frame's)."""
        rows, cols = self.frame_shape
        n = frame_count(frames, self.n_frames)
        contiguous = self.xp.ascontiguousarray
        return n, contiguous(self.weights[frames]), (
            contiguous(self._corners[frames]),
            np.int32(n),
            np.int32(rows),
            np.int32(cols),
            np.int32(self.object_shape[1]),
        )

    def _forward(self, stack: Any) -> None:
        """Unnormalised forward transform in place (the scale is in the kernels)."""
        if self.own_transforms is not None:
            self.own_transforms.forward(stack)
            return
        for chunk in frame_chunks(0, stack.shape[0], self.frame_shape, self.max_chunk_pixels):
            transform(self.xp, stack[chunk], norm="backward")

    def _inverse(self, stack: Any) -> None:
        """Unnormalised inverse transform in place."""
        if self.own_transforms is not None:
            self.own_transforms.inverse(stack)
            return
        for chunk in frame_chunks(0, stack.shape[0], self.frame_shape, self.max_chunk_pixels):
            transform(self.xp, stack[chunk], inverse=True, norm="forward")

    def _tap_accumulator(self) -> Any:
        """(K, M, N, 4) zeros: a tap's gradient re, im, power, unused per pixel."""
        taps = (len(shift.taps(self.interpolation)), *self.frame_shape)
        return self.xp.zeros((*taps, 4), self.real_dtype)

    # -------------------------------------------------------------- operators
    def taps(self, probe: Any) -> Any:
        xp, taps = self.xp, len(self._shifts)
        out = xp.empty((taps, *self.frame_shape), self._complex)
        self._launch(
            "shift_taps",
            out.size,
            (xp.ascontiguousarray(probe, self._complex), self._shifts, np.int32(taps),
             *(np.int32(v) for v in self.frame_shape), out),  # fmt: skip
        )
        return out

    def farfields(self, taps: Any, obj: Any, frames: slice, out: Any = None) -> Any:
        out = self._exit_waves(taps, obj, frames, out)
        self._forward(out)
        return out

    def _exit_waves(self, taps: Any, obj: Any, frames: slice, out: Any) -> Any:
        """``scale P_j O_j`` of ``frames`` (the unitary scale of the transform to come)."""
        n, weights, geometry = self._frame_args(frames)
        out = stack_buffer(self.xp, out, n, self.frame_shape, self._complex)
        self._launch_frames(
            "waves",
            n,
            FRAMES_PER_BLOCK,
            (taps, NULL, weights, obj, NULL, *geometry, np.int32(FRAMES_PER_BLOCK), self._scale,
             out, NULL),  # fmt: skip
        )
        return out

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
        if self.own_transforms is None:
            return composed_farfields_nll_and_chi(
                self, taps, obj, frames, counts, farfield, chi, noise_model, total, kept
            )
        n = frame_count(frames, self.n_frames)
        chi = stack_buffer(self.xp, chi, n, self.frame_shape, self._complex)
        self._exit_waves(taps, obj, frames, chi)
        total = self.xp.zeros(1, "float64") if total is None else total
        self.own_transforms.rows(chi)
        self.own_transforms.columns_poisson(
            chi,
            counts,
            farfield,
            chi,
            total,
            poisson.EPS_PHOTONS,
            self._scale,
            bool(_amplitude_flag(noise_model)),
            kept,
        )
        self.own_transforms.rows(chi, inverse=True)
        return total, chi

    def nll_and_chi(
        self,
        farfield: Any,
        counts: Any,
        out: Any = None,
        noise_model: str = "poisson",
        step: tuple[Any, Any | None, Any] | None = None,
        total: Any = None,
    ) -> tuple[Any, Any]:
        out = stack_buffer(self.xp, out, farfield.shape[0], self.frame_shape, self._complex)
        linear, quadratic, tau = step if step is not None else (None, None, None)
        total = self.xp.zeros(1, "float64") if total is None else total
        self._launch(
            "poisson_gradient",
            farfield.size,
            (
                farfield,
                counts,
                _optional(linear),
                _optional(quadratic),
                NULL if tau is None else self._device_step(tau),
                out,
                total,
                np.int64(farfield.size),
                self._real(poisson.EPS_PHOTONS),
                self._scale,
                _amplitude_flag(noise_model),
            ),
            counts,
        )
        self._inverse(out)
        return total, out

    def gradient_sums(self, probe_terms: bool) -> list[Any]:
        """[object gradient (H, W) complex, illumination (H, W) real, tap accumulator
        (K, M, N, 4) or None]: the first two are the results, not copied out."""
        xp = self.xp
        return [
            xp.zeros(self.object_shape, self._complex),
            xp.zeros(self.object_shape, self.real_dtype),
            self._tap_accumulator() if probe_terms else None,
        ]

    def add_object_gradient(self, sums: Any, chi: Any, taps: Any, obj: Any, frames: slice) -> None:
        grad, illumination, tap_acc = sums
        n, weights, geometry = self._frame_args(frames)
        per_block = FRAMES_PER_BLOCK if tap_acc is None else PROBE_FRAMES_PER_BLOCK
        self._launch_frames(
            "object_gradient",
            n,
            per_block,
            (chi, taps, weights, obj, *geometry, np.int32(per_block), grad, illumination,
             _optional(tap_acc)),  # fmt: skip
        )

    def gradients(self, sums: Any) -> tuple[Any, Any, Any, Any]:
        grad, illumination, tap_acc = sums
        if tap_acc is None:
            return grad, illumination, None, None
        xp = self.xp
        probe_grad = xp.empty(self.frame_shape, self._complex)
        power = xp.empty(self.frame_shape, self.real_dtype)
        self._launch(
            "combine_taps",
            probe_grad.size,
            (tap_acc, self._shifts, np.int32(len(self._shifts)),
             *(np.int32(v) for v in self.frame_shape), probe_grad, power),  # fmt: skip
        )
        return grad, illumination, probe_grad, power

    def illumination(self, taps: Any) -> Any:
        out = self.xp.zeros(self.object_shape, self.real_dtype)
        n, weights, geometry = self._frame_args(slice(None))
        self._launch_frames(
            "object_gradient",
            n,
            FRAMES_PER_BLOCK,
            (NULL, taps, weights, NULL, *geometry, np.int32(FRAMES_PER_BLOCK), NULL, out, NULL),
        )
        return out

    def direction_farfields(
        self, taps: Any, dtaps: Any | None, obj: Any, dobj: Any, frames: slice, out: Any = None
    ) -> tuple[Any, Any | None]:
        n, weights, geometry = self._frame_args(frames)
        linear, quadratic = direction_buffers(self, out, n, dtaps is not None)
        self._launch_frames(
            "waves",
            n,
            FRAMES_PER_BLOCK,
            (
                taps,
                _optional(dtaps),
                weights,
                obj,
                dobj,
                *geometry,
                np.int32(FRAMES_PER_BLOCK),
                self._scale,
                linear,
                _optional(quadratic),
            ),
        )
        self._forward(linear)
        if quadratic is not None:
            self._forward(quadratic)
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
        if len(steps) != len(poisson.LINE_SEARCH_SAMPLES):
            raise ValueError(
                f"line_search_sums: the kernel evaluates {len(poisson.LINE_SEARCH_SAMPLES)} "
                f"steps at once, got {len(steps)}"
            )
        direction_stride = _frame_stride(linear)
        if quadratic is not None and _frame_stride(quadratic) != direction_stride:
            raise ValueError("line_search_sums: linear and quadratic must have one frame stride")
        if total is None:
            total = self._sums.reshape(-1, 2)
            total.fill(0)
        if total.shape != (len(steps), 2) or total.dtype != np.float64:
            raise ValueError(f"line_search_sums: total must be ({len(steps)}, 2) float64")
        self._launch(
            "line_search_terms",
            farfield.size,
            (
                farfield,
                linear,
                _optional(quadratic),
                counts,
                self.xp.asarray(steps, dtype="float64"),
                total,
                np.int64(farfield.size),
                np.int64(self.frame_shape[0] * self.frame_shape[1]),
                np.int32(_frame_stride(farfield)),
                np.int32(direction_stride),
                np.int32(_frame_stride(counts)),
                self._real(poisson.EPS_PHOTONS),
                _amplitude_flag(noise_model),
            ),
            counts,
        )
        return total

    def advance(self, farfield: Any, linear: Any, quadratic: Any | None, tau: Any) -> None:
        self._launch(
            "advance",
            farfield.size,
            (
                farfield,
                linear,
                _optional(quadratic),
                self._device_step(tau),
                np.int64(farfield.size),
            ),
        )

    def _device_step(self, tau: Any) -> Any:
        """``tau`` (a number, or a one-element float64 device array: not read back) as
        the float64 device array the kernels read."""
        return self.xp.asarray(tau, dtype="float64").reshape(1)

    def workspace_bytes(self, chunk_frames: int) -> int:
        # cuFFT's work area for a chunk (at most one chunk-sized complex stack), and
        # the probe gradient's tap accumulator (K x M x N x 4 reals).
        complex_size = np.dtype(self._complex).itemsize
        pixels = chunk_pixels(chunk_frames, self.frame_shape, self.max_chunk_pixels)
        fft_area = pixels * complex_size
        taps = len(shift.taps(self.interpolation)) * self.frame_shape[0] * self.frame_shape[1]
        return fft_area + taps * 4 * np.dtype(self.real_dtype).itemsize
