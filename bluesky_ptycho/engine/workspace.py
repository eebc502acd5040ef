"""Frame-stack buffers reused across iterations, and the engine's memory budget.

Per frame the engine keeps the stored counts (2 bytes a pixel in the compact
form of :mod:`.counts`, else the real type's size) and, by ``frame_storage``
(:mod:`.passes`), none or three complex stacks (the model far field ``a`` and
the search direction's far fields ``b`` and ``c``), and for the frames of the
line-search sample (at most ``line_search_frames``) none or one (their ``a``).
Everything else an iteration allocates is bounded by a few chunks of frames
(the storage's chunk stacks and ``EngineOperators.workspace_bytes``) or is
object- or probe-sized.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .operators import chunk_pixels

#: object-sized complex arrays the engine holds at an iteration's peak (object,
#: direction, previous direction and step, gradient, step; the real illumination
#: counted as one), besides the operators' ``object_temporaries``. Measured on an H200
#: (docs/gpu_memory_peak.py): 4 complex and one real at the peak in use.
OBJECT_ARRAYS = 7


class StackBuffers:
    """Named (n, M, N) stacks that keep their memory between iterations.

    ``get(name, n, capacity)`` returns the first ``n`` frames of the buffer
    ``name``, reallocated only when ``n`` exceeds its capacity (then to
    ``capacity`` frames, the frame store's, so buffers grow as rarely as it does).
    """

    def __init__(self, xp: ModuleType, frame_shape: tuple[int, int], dtype: Any) -> None:
        self.xp = xp
        self.frame_shape = frame_shape
        self.dtype = np.dtype(dtype)
        self._buffers: dict[str, Any] = {}

    def get(self, name: str, n_frames: int, capacity: int) -> Any:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[0] < n_frames:
            self._buffers.pop(name, None)  # free before allocating the larger one
            buffer = self.xp.empty((max(n_frames, capacity), *self.frame_shape), self.dtype)
            self._buffers[name] = buffer
        return buffer[:n_frames]

    @property
    def nbytes(self) -> int:
        return sum(int(buffer.nbytes) for buffer in self._buffers.values())


def memory_estimate(
    n_frames: int,
    frame_shape: tuple[int, int],
    complex_dtype: Any,
    count_dtype: Any,
    object_shape: tuple[int, int],
    workspace_bytes: int,
    stacks_per_frame: int,
    chunk_stacks: int,
    max_chunk_pixels: int | None = None,
    object_temporaries: int = 0,
    sample_stacks: int = 0,
    sample_frames: int = 0,
) -> int:
    """Bytes an engine iterating over ``n_frames`` frames holds at its peak (module doc).

    ``stacks_per_frame`` complex stacks are kept for every frame, ``sample_stacks``
    for each of ``sample_frames`` (the line-search sample), ``chunk_stacks`` for one
    chunk of frames (``operators.chunk_pixels`` with ``max_chunk_pixels``),
    ``workspace_bytes`` of the operators' own temporaries, and ``OBJECT_ARRAYS`` plus
    ``object_temporaries`` object-sized complex arrays.
    """
    pixels = frame_shape[0] * frame_shape[1]
    complex_size = np.dtype(complex_dtype).itemsize
    per_frame = pixels * (np.dtype(count_dtype).itemsize + stacks_per_frame * complex_size)
    sample = sample_stacks * sample_frames * pixels * complex_size
    chunks = chunk_stacks * chunk_pixels(n_frames, frame_shape, max_chunk_pixels) * complex_size
    object_pixels = object_shape[0] * object_shape[1]
    object_bytes = (OBJECT_ARRAYS + object_temporaries) * object_pixels * complex_size
    return n_frames * per_frame + sample + chunks + object_bytes + workspace_bytes
