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


@pytest.fixture(scope="session")
def tiled_server(tmp_path_factory: pytest.TempPathFactory):
    """One embedded Tiled server (127.0.0.1) shared by the tests that only read and write
    it; a test that stops its server makes its own ``tiled_support.TiledServer``."""
    from tiled_support import TiledServer

    served = TiledServer(tmp_path_factory.mktemp("tiled"))
    yield served
    served.close()
