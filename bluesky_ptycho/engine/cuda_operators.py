"""Fused CUDA kernels (kernels/ptycho.cu) behind the :class:`ArrayOperators` API.

Each method computes what its :class:`~.operators.ArrayOperators` twin computes,
in one pass over the frame stack; the GPU tests compare them. The sub-pixel
probe shifts stay in :mod:`.shift` (one matrix product makes every frame's
probe); the kernels read those stacks. CuPy is imported by the caller; this
module only touches it through ``xp``.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from . import poisson, shift
from .operators import ArrayOperators

KERNEL_FILE = "ptycho.cu"
KERNELS = ("poisson_gradient", "line_search_terms", "object_gradient", "exit_waves", "advance")
THREADS = 256
#: a null pointer for optional kernel arguments
NULL = np.uint64(0)


def _optional(array: Any) -> Any:
    return NULL if array is None else array


def kernel_source() -> str:
    """Source of kernels/ptycho.cu: package data when installed, else the checkout's."""
    packaged = resources.files("bluesky_ptycho") / "_kernels" / KERNEL_FILE
    if packaged.is_file():
        return packaged.read_text()
    return (Path(__file__).resolve().parents[2] / "kernels" / KERNEL_FILE).read_text()


@functools.cache
def _module(real: str) -> Any:
    import cupy

    ctype = {"float32": "float", "float64": "double"}[real]
    names = [f"{name}<{ctype}>" for name in KERNELS]
    module = cupy.RawModule(code=kernel_source(), options=("-std=c++17",), name_expressions=names)
    return {name: module.get_function(f"{name}<{ctype}>") for name in KERNELS}


class CudaOperators(ArrayOperators):
    """Fused-kernel implementation on CuPy arrays."""

    def __init__(
        self, xp: ModuleType, frame_shape: tuple[int, int], real_dtype: str, interpolation: str
    ) -> None:
        super().__init__(xp, frame_shape, real_dtype, interpolation)
        self._kernels = _module(real_dtype)
        self._real = np.dtype(real_dtype).type
        self._corners: Any = None
        self._sums = xp.zeros(2, "float64")
        device = xp.cuda.Device()
        self._grid_limit = 32 * device.attributes["MultiProcessorCount"]

    def set_geometry(
        self, corners: np.ndarray, fractions: np.ndarray, object_shape: tuple[int, int]
    ) -> None:
        xp = self.xp
        self.object_shape = object_shape
        self._corners = xp.asarray(corners, dtype=np.int32)
        self.weights = shift.interpolation_weights(
            xp.asarray(fractions, dtype=self.real_dtype), self.interpolation
        )

    def _launch(self, name: str, size: int, args: tuple) -> None:
        blocks = max(1, min((size + THREADS - 1) // THREADS, self._grid_limit))
        self._kernels[name]((blocks,), (THREADS,), args)

    def _stack_args(self, start: int = 0) -> tuple:
        """Corners, element count and sizes of the frames ``start:``."""
        rows, cols = self.frame_shape
        n = self._corners.shape[0] - start
        return (
            self._corners[start:],
            np.int64(n * rows * cols),
            np.int32(rows),
            np.int32(cols),
            np.int32(self.object_shape[1]),
        )

    def _probes(self, probe: Any, start: int = 0) -> Any:
        """(n, M, N) sub-pixel-shifted probes of frames ``start:`` (one GEMM)."""
        return shift.shifted_probes(probe, self.weights[start:], self.interpolation)

    def exit_waves(self, probe: Any, obj: Any, start: int = 0) -> Any:
        probes = self._probes(probe, start)
        out = self.xp.empty_like(probes)
        self._launch(
            "exit_waves",
            out.size,
            (probes, NULL, obj, NULL, *self._stack_args(start), out, NULL),
        )
        return out

    def nll_and_gradient(self, farfield: Any, counts: Any) -> tuple[float, Any]:
        grad = self.xp.empty_like(farfield)
        self._sums.fill(0)
        self._launch(
            "poisson_gradient",
            farfield.size,
            (
                farfield,
                counts,
                grad,
                self._sums,
                np.int64(farfield.size),
                self._real(poisson.EPS_PHOTONS),
            ),
        )
        return float(self._sums[0]), grad

    def object_gradient(
        self, chi: Any, probe: Any, obj: Any, probe_terms: bool
    ) -> tuple[Any, Any, Any, Any]:
        xp = self.xp
        grad = xp.zeros(self.object_shape, obj.dtype)
        illumination = xp.zeros(self.object_shape, self.real_dtype)
        view_power = xp.empty(chi.shape, self.real_dtype) if probe_terms else None
        self._launch(
            "object_gradient",
            chi.size,
            (
                chi,
                self._probes(probe),
                obj,
                *self._stack_args(),
                grad,
                illumination,
                _optional(view_power),
                np.int32(probe_terms),
            ),
        )
        return grad, illumination, (chi if probe_terms else None), view_power

    def direction_terms(
        self, probe: Any, dprobe: Any | None, obj: Any, dobj: Any
    ) -> tuple[Any, Any | None]:
        shape = (self._corners.shape[0], *self.frame_shape)
        linear = self.xp.empty(shape, probe.dtype)
        quadratic = self.xp.empty(shape, probe.dtype) if dprobe is not None else None
        self._launch(
            "exit_waves",
            linear.size,
            (
                self._probes(probe),
                NULL if dprobe is None else self._probes(dprobe),
                obj,
                dobj,
                *self._stack_args(),
                linear,
                _optional(quadratic),
            ),
        )
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
        )
        slope, curvature = self._sums.get()
        return float(slope), float(curvature)

    def advance(self, farfield: Any, linear: Any, quadratic: Any | None, tau: float) -> None:
        self._launch(
            "advance",
            farfield.size,
            (farfield, linear, _optional(quadratic), self._real(tau), np.int64(farfield.size)),
        )
