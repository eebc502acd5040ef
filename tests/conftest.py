"""Shared fixtures: array modules to test (NumPy always, CuPy when a GPU is present)."""

from __future__ import annotations

import pytest

from bluesky_ptycho.engine.backend import cupy_device_available, get_array_module

ARRAY_BACKENDS = [
    "numpy",
    pytest.param(
        "cupy",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not cupy_device_available(), reason="needs CuPy and a CUDA device"),
        ],
    ),
]


@pytest.fixture(params=ARRAY_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Name of an available engine backend."""
    return request.param


@pytest.fixture
def xp(backend: str):
    """The array module of ``backend``."""
    return get_array_module(backend)
