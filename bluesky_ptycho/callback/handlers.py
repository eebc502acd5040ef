"""Readers for Resource/Datum (legacy external files), as a handler registry.

A handler registry maps a Resource ``spec`` to a handler class, with the
event-model / databroker convention::

    handler = handler_class(full_path, **resource["resource_kwargs"])
    array = handler(**datum["datum_kwargs"])

The built-in handlers cover ``NPY_SEQ`` (ophyd.sim) and ``AD_HDF5`` /
``AD_HDF5_SWMR`` (area detector HDF5 plugin, frames at ``/entry/data/data``).
Add others (e.g. area-detector-handlers' ``AD_EIGER``) with
``PtychoCallback(handler_registry={"AD_EIGER": EigerHandler})``. Handlers run on
the worker thread, never on the RunEngine thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Handler = Callable[..., Any]


class NumpySeqHandler:
    """``NPY_SEQ``: one ``.npy`` file per datum, ``{path}_{index}.npy``."""

    specs = {"NPY_SEQ"}

    def __init__(self, filename: str, root: str = "") -> None:
        self._stem = os.path.join(root, filename)

    def __call__(self, index: int) -> np.ndarray:
        return np.load(f"{self._stem}_{index}.npy", allow_pickle=False)


class AreaDetectorHDF5Handler:
    """``AD_HDF5`` / ``AD_HDF5_SWMR``: frames ``point_number * fpp ...`` of ``/entry/data/data``.

    The file is opened read-only with SWMR and refreshed when a frame beyond the
    known length is asked for (the detector may still be writing).
    """

    specs = {"AD_HDF5", "AD_HDF5_SWMR"}
    dataset = "/entry/data/data"

    def __init__(self, filename: str, frame_per_point: int = 1, **_: Any) -> None:
        self._path = filename
        self._frame_per_point = int(frame_per_point)
        self._file: Any = None

    def _dataset(self) -> Any:
        if self._file is None:
            import h5py

            self._file = h5py.File(self._path, "r", swmr=True)
        return self._file[self.dataset]

    def __call__(self, point_number: int) -> np.ndarray:
        data = self._dataset()
        start = int(point_number) * self._frame_per_point
        stop = start + self._frame_per_point
        if data.shape[0] < stop:
            data.refresh()
        if data.shape[0] < stop:
            raise OSError(
                f"{self._path}: frame {stop - 1} not written yet ({data.shape[0]} frames)"
            )
        return np.asarray(data[start:stop])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


DEFAULT_HANDLERS: dict[str, Handler] = {
    "NPY_SEQ": NumpySeqHandler,
    "AD_HDF5": AreaDetectorHDF5Handler,
    "AD_HDF5_SWMR": AreaDetectorHDF5Handler,
}


def handler_registry(extra: Mapping[str, Handler] | None = None) -> dict[str, Handler]:
    """The built-in handlers updated with ``extra`` (which wins)."""
    return {**DEFAULT_HANDLERS, **dict(extra or {})}
