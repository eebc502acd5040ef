"""Memory a run's reconstruction needs, estimated before anything is allocated.

Per frame of ``M x N`` pixels the engine stores the counts (real) and the model
far field (complex) at its working precision (:data:`STORED_BYTES_PER_PIXEL`),
in buffers that grow by doubling (so up to twice that), and an iteration holds
temporaries of about :data:`ITERATION_BYTES_PER_PIXEL` per frame pixel (exit
waves, their transforms, gradients). Measured: 81 bytes per pixel and frame at
the peak of ``add_frames`` + 3 iterations, 2000 frames of 32 x 32 and 500 of
64 x 64, NumPy, complex64 (tracemalloc; docs/reliability.md). The estimate::

    M * N * (n * (2 * stored + iteration) + WORK_FRAMES * stored)

is 96 bytes per pixel and frame for complex64 (twice that for complex128).

On CuPy the engine keeps per frame the counts and the complex stacks of its
``frame_storage`` (``engine/passes.py``, ``engine/workspace.py``; measured
against the GPU's memory pool in docs/benchmarks.md), the far fields of the
line-search sample (``"farfields"``: at most ``line_search_frames`` frames, a
fixed amount) and bounds its temporaries by a few chunks of frames:
:func:`gpu_bytes_per_pixel` (real-sized counts, in case they do not fit uint16)
plus :data:`GPU_MARGIN` for the object arrays, twice that when the scan's length
is not declared (the stacks then grow by doubling; with ``num_points`` the
callback reserves them at once), plus the sample's stacks and
:data:`GPU_FIXED_BYTES`.
:meth:`MemoryModel.check` refuses a run whose declared shape and frame count exceed
``memory_budget_bytes`` (default :func:`default_budget_bytes`: with the CuPy
backend 90 % of the GPU's memory, else half the host's physical memory).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..config import ReconConfig

#: frames' worth of object, probe and work arrays on top of the frame buffers
WORK_FRAMES = 16
#: stored bytes per pixel per frame: real counts + complex far field
STORED_BYTES_PER_PIXEL = {"complex64": 4 + 8, "complex128": 8 + 16}
#: iteration temporaries per pixel per frame (measured 69 B for complex64, rounded up)
ITERATION_BYTES_PER_PIXEL = {"complex64": 72, "complex128": 144}
#: complex stacks the GPU engine keeps per frame for each ReconConfig.frame_storage
GPU_STACKS_PER_FRAME = {"farfields": 0, "counts": 0, "stacks": 3}
#: complex stacks it keeps for each frame of the line-search sample
GPU_SAMPLE_STACKS = {"farfields": 1, "counts": 0, "stacks": 0}
#: share added for the object-sized arrays, which grow with the scan
GPU_MARGIN = 0.1
#: the GPU engine's fixed bytes: a chunk's FFT work area and up to three chunk
#: stacks (<= 256 MiB each), the probe gradient's tap sums and the object arrays of
#: a small canvas
GPU_FIXED_BYTES = 3 << 29


#: bytes of a complex pixel at each working precision
COMPLEX_BYTES = {"complex64": 8, "complex128": 16}


def gpu_bytes_per_pixel(dtype: str, storage: str = "farfields") -> int:
    """The GPU engine's bytes per pixel per frame: real-sized counts and its stacks
    (besides those of the line-search sample)."""
    complex_size = COMPLEX_BYTES[dtype]
    return complex_size // 2 + GPU_STACKS_PER_FRAME[storage] * complex_size


class MemoryRefused(ValueError):
    """A run would need more memory than ``memory_budget_bytes``."""


#: share of the GPU's memory a reconstruction on it may plan for by default
GPU_BUDGET_FRACTION = 0.9


def default_budget_bytes(backend: str = "numpy") -> int:
    """90 % of the current GPU's memory when ``backend`` resolves to CuPy, else half
    the host's physical memory (4 GiB where it cannot be read)."""
    if backend != "numpy":
        from ..engine.backend import get_array_module, is_cupy

        xp = get_array_module(backend)
        if is_cupy(xp):
            return int(GPU_BUDGET_FRACTION * xp.cuda.Device().mem_info[1])
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


@dataclass(frozen=True)
class MemoryModel:
    """The engine whose memory is estimated (module docstring).

    dtype : its working precision; gpu : it runs on CuPy; reserved : its stacks are
    reserved for the scan; storage, line_search_frames : those ``ReconConfig``
    fields (GPU only).
    """

    dtype: str = "complex64"
    gpu: bool = False
    reserved: bool = False
    storage: str = ReconConfig.frame_storage
    line_search_frames: int = ReconConfig.line_search_frames

    def _per_pixel(self) -> tuple[int, int]:
        """Bytes per pixel per frame, and per pixel in all."""
        stored = STORED_BYTES_PER_PIXEL[self.dtype]
        if self.gpu:
            per_frame = math.ceil((1 + GPU_MARGIN) * gpu_bytes_per_pixel(self.dtype, self.storage))
            per_frame *= 1 if self.reserved else 2
            sample = GPU_SAMPLE_STACKS[self.storage] * COMPLEX_BYTES[self.dtype]
            if self.line_search_frames == 0:  # the sample is every frame
                return per_frame + sample * (1 if self.reserved else 2), 0
            return per_frame, sample * self.line_search_frames
        return 2 * stored + ITERATION_BYTES_PER_PIXEL[self.dtype], WORK_FRAMES * stored

    @property
    def _fixed_bytes(self) -> int:
        return GPU_FIXED_BYTES if self.gpu else 0

    def estimate_bytes(self, n_frames: int, frame_shape: tuple[int, int]) -> int:
        """Bytes the engine needs for ``n_frames`` frames of ``frame_shape``."""
        pixels = int(frame_shape[0]) * int(frame_shape[1])
        per_frame, fixed = self._per_pixel()
        return pixels * (max(int(n_frames), 1) * per_frame + fixed) + self._fixed_bytes

    def frames_within(self, budget_bytes: int, frame_shape: tuple[int, int]) -> int:
        """The most frames of ``frame_shape`` whose estimate fits ``budget_bytes`` (0: none)."""
        pixels = int(frame_shape[0]) * int(frame_shape[1])
        per_frame, fixed = self._per_pixel()
        room = budget_bytes - self._fixed_bytes
        return max(0, (room // pixels - fixed) // per_frame)

    def check(
        self, n_frames: int, frame_shape: tuple[int, int], budget_bytes: int, where: str
    ) -> None:
        """MemoryRefused when ``n_frames`` of ``frame_shape`` exceed ``budget_bytes``."""
        needed = self.estimate_bytes(n_frames, frame_shape)
        if needed > budget_bytes:
            raise MemoryRefused(
                f"{where}: {n_frames} frame(s) of {frame_shape[0]} x {frame_shape[1]} pixels "
                f"need about {needed / 2**30:.3g} GiB, over memory_budget_bytes="
                f"{budget_bytes} ({budget_bytes / 2**30:.3g} GiB); crop or bin the frames "
                f"(frame_shape), keep less per frame (frame_storage='counts'), or raise "
                f"PtychoCallback(memory_budget_bytes=...)"
            )
