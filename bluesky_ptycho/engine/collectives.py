"""Sums across the frame partitions of one reconstruction, and copies to every partition.

An iteration over partitioned frames (:mod:`.frames`) needs two collectives,
with the first partition as root:

* ``reduce_sum(parts)``: the element-wise sum of one array per partition
  (object and probe gradients, illumination, the NLL, every line-search pass's
  sums), on the root's device;
* ``broadcast(array)``: the root's array on every partition's device (object,
  probe and search directions).

:class:`NcclCollectives` runs them with NCCL through CuPy (``cupy.cuda.nccl``,
one communicator per GPU of this process, each call one NCCL group; the NCCL
library comes from the ``nvidia-nccl-cu13`` / ``-cu12`` wheel). NVLink
multicast (NVLS) is switched off before NCCL starts: ``NCCL_NVLS_ENABLE=0`` is
forced in this process's environment, which every process it starts inherits.
:class:`CopyCollectives` does the same with plain copies: the NumPy stand-in
(partitions on the host, tested in CI) and CuPy without NCCL.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .frames import FrameStore

#: NVLink multicast stays off wherever NCCL runs (docs/deployment.md)
NCCL_ENVIRONMENT = {"NCCL_NVLS_ENABLE": "0"}


class Collectives(Protocol):
    """Reduce and broadcast over the partitions (module docstring)."""

    def reduce_sum(self, parts: Sequence[Any]) -> Any:
        """Sum of ``parts`` (one array per partition, same shape), on the root's device."""

    def broadcast(self, array: Any) -> list[Any]:
        """``array`` (on the root) on every partition's device; the root's entry is ``array``."""


class CopyCollectives:
    """Collectives by copies: through the host on NumPy, device to device on CuPy."""

    def __init__(self, stores: Sequence[FrameStore]) -> None:
        self.stores = list(stores)

    def reduce_sum(self, parts: Sequence[Any]) -> Any:
        root = self.stores[0]
        total = parts[0]
        for part in parts[1:]:
            copied = root.here(part)
            with root.active():
                total = total + copied
        return total

    def broadcast(self, array: Any) -> list[Any]:
        return [array] + [store.here(array) for store in self.stores[1:]]


def _nccl_type(nccl: Any, dtype: Any) -> tuple[int, int]:
    """(NCCL data type, values per element): complex arrays travel as pairs of reals."""
    dtype = np.dtype(dtype)
    real = np.dtype(dtype.char.lower()) if dtype.kind == "c" else dtype
    types = {np.dtype("float32"): nccl.NCCL_FLOAT32, np.dtype("float64"): nccl.NCCL_FLOAT64}
    return types[real], 2 if dtype.kind == "c" else 1


class NcclCollectives:
    """NCCL reduce and broadcast over the GPUs of this process (one communicator each)."""

    def __init__(self, stores: Sequence[FrameStore]) -> None:
        os.environ.update(NCCL_ENVIRONMENT)
        from cupy.cuda import nccl

        self._nccl = nccl
        self.stores = list(stores)
        devices = [store.device for store in self.stores]
        if len(set(devices)) != len(devices) or None in devices:
            raise ValueError(f"NCCL needs one partition per distinct GPU, got devices {devices}")
        self._comms = nccl.NcclCommunicator.initAll(devices)

    def _group(self, buffers: Sequence[Any], call: str, op: Any = None) -> None:
        nccl, xp = self._nccl, self.stores[0].xp
        data_type, per_element = _nccl_type(nccl, buffers[0].dtype)
        count = buffers[0].size * per_element
        nccl.groupStart()
        for comm, store, buffer in zip(self._comms, self.stores, buffers, strict=True):
            with store.active():
                stream = xp.cuda.get_current_stream().ptr
                pointer = buffer.data.ptr
                if call == "reduce":
                    comm.reduce(pointer, pointer, count, data_type, op, 0, stream)
                else:
                    comm.bcast(pointer, count, data_type, 0, stream)
        nccl.groupEnd()

    def reduce_sum(self, parts: Sequence[Any]) -> Any:
        buffers = []  # summed in place into the root's part (a temporary of the caller)
        for store, part in zip(self.stores, parts, strict=True):
            with store.active():
                buffers.append(store.xp.ascontiguousarray(part))
        self._group(buffers, "reduce", self._nccl.NCCL_SUM)
        return buffers[0]

    def broadcast(self, array: Any) -> list[Any]:
        buffers = [self.stores[0].xp.ascontiguousarray(array)]
        for store in self.stores[1:]:
            with store.active():
                buffers.append(store.xp.empty(array.shape, array.dtype))
        self._group(buffers, "bcast")
        return buffers


COLLECTIVES = ("auto", "nccl", "copy")


def make_collectives(stores: Sequence[FrameStore], kind: str = "auto") -> Collectives:
    """``"nccl"``, ``"copy"``, or ``"auto"``: NCCL for several distinct GPUs, else copies."""
    if kind not in COLLECTIVES:
        raise ValueError(f"collectives: expected one of {COLLECTIVES}, got {kind!r}")
    devices = [store.device for store in stores]
    distinct_gpus = None not in devices and len(set(devices)) == len(devices) > 1
    if kind == "nccl" or (kind == "auto" and distinct_gpus):
        return NcclCollectives(stores)
    return CopyCollectives(stores)
