"""One partition of a scan's frames on one device.

A :class:`~.reconstructor.Reconstructor` keeps one :class:`FrameStore` per
device (a single one unless it was given several GPUs, or several partitions
on NumPy). A store holds its frames' counts (compact uint16 when they fit,
:mod:`.counts`), their model far fields (unless the storage keeps counts only,
:mod:`.passes`), the work stacks an iteration reuses
(:class:`.workspace.StackBuffers`), their probe centres (global object pixels,
(y, x)), the operators with their geometry, and replicas of the object and
probe on its device (the first store works on the engine's own arrays).

:func:`stripe_edges` and :func:`route` partition frames by position: stripes
of the slow scan axis (y) with equal numbers of frames, so each partition's
frames cover a compact band of the object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from . import counts as count_store
from . import workspace
from .operators import EngineOperators


class FrameStore:
    """Frames, far fields, work stacks and operators of one partition (module docstring).

    device : CUDA device number, or None for the current device (or NumPy).
    keep_farfields : whether ``farfield`` grows with the frames (else it stays empty).
    """

    def __init__(
        self,
        xp: ModuleType,
        device: int | None,
        frame_shape: tuple[int, int],
        complex_dtype: str,
        make_ops: Callable[[], EngineOperators],
        keep_farfields: bool = True,
    ) -> None:
        self.xp = xp
        self.device = device
        self.frame_shape = frame_shape
        self.complex_dtype = complex_dtype
        self.keep_farfields = keep_farfields
        with self.active():
            self.ops = make_ops()
            self.counts = xp.zeros((0, *frame_shape), count_store.COMPACT_DTYPE)
            self.farfield = xp.zeros((0, *frame_shape), complex_dtype)
            self.work = workspace.StackBuffers(xp, frame_shape, complex_dtype)
        self.positions_px = np.zeros((0, 2))
        self.n = 0
        self.n_fresh = 0  # frames whose stored far field is current
        self.geometry_frames = -1  # frames the operators' geometry covers
        #: the object and probe on this device (the first store: the engine's own)
        self.object: Any = None
        self.probe: Any = None

    def active(self) -> Any:
        """Context in which this store's device is current (nothing on NumPy)."""
        if self.device is None:
            return contextlib.nullcontext()
        return self.xp.cuda.Device(self.device)

    def here(self, array: Any) -> Any:
        """A copy of ``array`` (NumPy or on any device) on this store's device."""
        with self.active():
            if self.device is None or not hasattr(array, "__cuda_array_interface__"):
                return self.xp.array(array, copy=True)
            source = self.xp.ascontiguousarray(array)
            out = self.xp.empty(source.shape, source.dtype)
            out.data.copy_from_device(source.data, source.nbytes)
            return out

    def append(self, counts: Any, centres: np.ndarray, real_dtype: str) -> None:
        """Add frames (on this device) and their centres: counts with -1 where
        excluded, or already in a store's form (:mod:`.counts`)."""
        counts = count_store.decode(counts, real_dtype)
        if count_store.is_compact(self.counts) and not count_store.fits_compact(counts):
            self.counts = count_store.decode(self.counts, real_dtype)  # widen the store
        n_new = counts.shape[0]
        self._ensure_capacity(self.n + n_new)
        self.counts[self.n : self.n + n_new] = count_store.encode(counts, self.counts.dtype)
        self.positions_px[self.n : self.n + n_new] = centres
        self.n += n_new

    def _ensure_capacity(self, needed: int) -> None:
        capacity = self.counts.shape[0]
        if needed > capacity:
            self.reserve(max(needed, 2 * capacity, 16))

    def reserve(self, new_capacity: int) -> None:
        """Room for ``new_capacity`` frames now (the stacks never shrink)."""
        if new_capacity <= self.counts.shape[0]:
            return
        stacks = [("counts", self.counts.dtype)]
        if self.keep_farfields:
            stacks.append(("farfield", self.complex_dtype))
        for name, dtype in stacks:
            old = getattr(self, name)
            grown = self.xp.zeros((new_capacity, *self.frame_shape), dtype)
            grown[: self.n] = old[: self.n]
            setattr(self, name, grown)
        positions = np.zeros((new_capacity, 2))
        positions[: self.n] = self.positions_px[: self.n]
        self.positions_px = positions

    def take_all(self) -> tuple[Any, np.ndarray]:
        """Remove every frame; returns their stored counts and centres (buffers are kept)."""
        taken = self.counts[: self.n].copy(), self.positions_px[: self.n].copy()
        self.n = self.n_fresh = 0
        self.geometry_frames = -1
        return taken

    @property
    def capacity(self) -> int:
        return int(self.counts.shape[0])


def stripe_edges(rows_px: np.ndarray, n_parts: int) -> np.ndarray:
    """``n_parts - 1`` row positions splitting ``rows_px`` into equal-count stripes."""
    if n_parts <= 1 or rows_px.size == 0:
        return np.zeros(0)
    return np.quantile(rows_px, np.arange(1, n_parts) / n_parts)


def route(rows_px: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Partition index of each frame: the stripe its probe centre's row falls in."""
    return np.searchsorted(edges, rows_px, side="right")
