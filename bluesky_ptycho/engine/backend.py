"""Array-module selection: NumPy always, CuPy when a CUDA device is present.

CuPy is imported only inside :func:`get_array_module`, so importing the engine
never touches CUDA.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

BACKENDS = ("auto", "numpy", "cupy")


def cupy_device_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError, missing driver...
        return False


def get_array_module(backend: str = "auto") -> ModuleType:
    """The array module for ``backend`` ("numpy", "cupy" or "auto")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "numpy" or (backend == "auto" and not cupy_device_available()):
        return np
    if backend == "cupy" and not cupy_device_available():
        raise ValueError(
            "backend='cupy' needs CuPy and a CUDA device; install the 'gpu' extra "
            "(cupy-cuda12x or cupy-cuda13x) or use backend='numpy'"
        )
    import cupy

    return cupy


def is_cupy(xp: ModuleType) -> bool:
    """True when ``xp`` is CuPy."""
    return xp.__name__ == "cupy"


def array_module_of(array: Any) -> ModuleType:
    """NumPy or CuPy, whichever owns ``array``."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_host(array: Any) -> np.ndarray:
    """A NumPy copy (or view) of a NumPy or CuPy array: the one device->host copy."""
    if hasattr(array, "get"):
        return array.get()
    return np.asarray(array)


class Readback:
    """A small array copied to the host behind the work queued so far, without waiting.

    On CuPy the copy goes into pinned memory on the current stream and an event
    marks it; :meth:`result` waits for that event alone, so the device may already
    run later work (a NumPy array is its own result).
    """

    def __init__(self, array: Any) -> None:
        self._event = None
        if not hasattr(array, "get"):
            self._host = np.asarray(array)
            return
        import cupy
        import cupyx

        self._host = cupyx.empty_pinned(array.shape, array.dtype)
        cupy.asnumpy(array, out=self._host, blocking=False)
        self._event = cupy.cuda.Event(block=True, disable_timing=True)
        self._event.record()

    def result(self) -> np.ndarray:
        """The host copy (waits for the copy, and only for it)."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._host
