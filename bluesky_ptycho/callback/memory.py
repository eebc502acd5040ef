"""Memory a run's reconstruction needs, estimated before anything is allocated.

The engine stores, per frame, the counts (real) and the model far field
(complex) at its working precision, in buffers that grow by doubling; the
object, probe and work arrays are a few more frames' worth. So a run of
``n`` frames of ``M x N`` pixels needs about::

    (2 * n + WORK_FRAMES) * M * N * (real + complex bytes)

(``complex64``: 12 bytes per pixel and frame). :func:`check_budget` refuses a
run whose declared shape and frame count exceed ``memory_budget_bytes``
(default: :func:`default_budget_bytes`, half the host's physical memory).
"""

from __future__ import annotations

import os

#: frames' worth of object, probe and work arrays on top of the frame buffers
WORK_FRAMES = 16
#: bytes per pixel per stored frame: float32 counts + complex64 far field
BYTES_PER_PIXEL = {"complex64": 4 + 8, "complex128": 8 + 16}


class MemoryRefused(ValueError):
    """A run would need more memory than ``memory_budget_bytes``."""


def default_budget_bytes() -> int:
    """Half the host's physical memory (4 GiB where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def estimate_bytes(n_frames: int, frame_shape: tuple[int, int], dtype: str = "complex64") -> int:
    """Bytes the engine needs for ``n_frames`` frames of ``frame_shape`` (module docstring)."""
    pixels = int(frame_shape[0]) * int(frame_shape[1])
    return (2 * max(int(n_frames), 1) + WORK_FRAMES) * pixels * BYTES_PER_PIXEL[dtype]


def frames_within(budget_bytes: int, frame_shape: tuple[int, int], dtype: str = "complex64") -> int:
    """The most frames of ``frame_shape`` whose estimate fits ``budget_bytes`` (0: none)."""
    pixels = int(frame_shape[0]) * int(frame_shape[1])
    per_frame = pixels * BYTES_PER_PIXEL[dtype]
    return max(0, (budget_bytes // per_frame - WORK_FRAMES) // 2)


def check_budget(
    n_frames: int,
    frame_shape: tuple[int, int],
    budget_bytes: int,
    where: str,
    dtype: str = "complex64",
) -> None:
    """MemoryRefused when ``n_frames`` of ``frame_shape`` exceed ``budget_bytes``."""
    needed = estimate_bytes(n_frames, frame_shape, dtype)
    if needed > budget_bytes:
        raise MemoryRefused(
            f"{where}: {n_frames} frame(s) of {frame_shape[0]} x {frame_shape[1]} pixels "
            f"need about {needed / 2**30:.3g} GiB, over memory_budget_bytes="
            f"{budget_bytes} ({budget_bytes / 2**30:.3g} GiB); crop or bin the frames "
            f"(frame_shape), or raise PtychoCallback(memory_budget_bytes=...)"
        )
