"""Run kernels/*.cu on the CPU: the CUDA source compiled by the host's C++ compiler.

For kernels whose threads share nothing but shared memory between barriers (every
thread of a block loops over its block's tasks with stride ``blockDim.x``): run with
one thread a block, block after block, each barrier is already passed, so the
result is the kernel's. ``cuda_host/cupy/complex.cuh`` stands in for CuPy's header
and the CUDA built-ins. :func:`host_kernels` compiles the named instantiations into
a shared library and returns objects called like CuPy's ``RawKernel``
(``kernel(grid, block, args)``; the block size is ignored), taking NumPy arrays
where the kernel takes device pointers.
"""

from __future__ import annotations

import ctypes
import functools
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
KERNELS = HERE.parent / "kernels"
#: parameter types of each kernel template the tests run, as C++ and as ctypes
SIGNATURES: dict[str, list[str]] = {
    "transform_rows": ["complex<float>*", "const complex<float>*", "index_t"],
    "transform_columns": ["complex<float>*", "const complex<float>*"],
    "columns_poisson": [
        "const complex<float>*",
        "complex<float>*",
        "int",
        "int",
        "int",
        "const COUNT*",
        "complex<float>*",
        "const complex<float>*",
        "double*",
        "float",
        "float",
        "int",
    ],
}
CTYPES = {"index_t": ctypes.c_longlong, "float": ctypes.c_float, "int": ctypes.c_int}


def compiler() -> str | None:
    """The host C++ compiler, or None."""
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _wrapper(index: int, expression: str) -> str:
    template = expression.split("<", 1)[0]
    count = "unsigned short" if "unsigned short" in expression else "float"
    types = [t.replace("COUNT", count) for t in SIGNATURES[template]]
    params = ", ".join(f"{'void*' if t.endswith('*') else t} a{i}" for i, t in enumerate(types))
    args = ", ".join(f"({t}) a{i}" if t.endswith("*") else f"a{i}" for i, t in enumerate(types))
    return f"""
extern "C" void kernel_{index}(int gx, int gy, {params}) {{
  blockDim.x = 1; threadIdx.x = 0; gridDim.x = gx; gridDim.y = gy;
  for (unsigned y = 0; y < unsigned(gy); ++y)
    for (unsigned x = 0; x < unsigned(gx); ++x) {{
      blockIdx.x = x; blockIdx.y = y;
      {expression}({args});
    }}
}}"""


@functools.cache
def _library(expressions: tuple[str, ...], defines: tuple[str, ...]) -> ctypes.CDLL:
    source = "\n".join(
        [
            *(path.read_text() for path in (KERNELS / "ptycho.cu", KERNELS / "transforms.cu")),
            *(_wrapper(i, e) for i, e in enumerate(expressions)),
        ]
    )
    with tempfile.TemporaryDirectory(prefix="cuda_host_") as name:
        folder = Path(name)
        (folder / "kernels.cpp").write_text(source)
        command = [
            compiler() or "g++",
            "-std=c++17",
            "-O1",
            "-shared",
            "-fPIC",
            f"-I{HERE / 'cuda_host'}",
            *(f"-D{d}" for d in defines),
            "-o",
            str(folder / "kernels.so"),
            str(folder / "kernels.cpp"),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"compiling kernels for the host failed:\n{done.stderr[-4000:]}")
        return ctypes.CDLL(str(folder / "kernels.so"))  # loaded: the file may go


class HostKernel:
    """One compiled instantiation, called like ``cupy.RawKernel``."""

    def __init__(self, function: Any, types: list[str]) -> None:
        self._function = function
        self._types = types
        pointer = ctypes.c_void_p
        function.argtypes = [ctypes.c_int, ctypes.c_int] + [
            pointer if kind.endswith("*") else CTYPES[kind] for kind in types
        ]
        function.restype = None

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
        grid = (*grid, 1)
        converted: list[Any] = [int(grid[0]), int(grid[1])]
        for kind, arg in zip(self._types, args, strict=True):
            if kind.endswith("*"):
                if isinstance(arg, np.ndarray):
                    converted.append(arg.ctypes.data)
                else:  # a null pointer
                    converted.append(int(arg) or None)
            else:
                converted.append(arg.item() if hasattr(arg, "item") else arg)
        self._function(*converted)


def host_kernels(names: dict[str, str], defines: tuple[str, ...] = ()) -> dict[str, HostKernel]:
    """``{key: template name expression}`` compiled for the host, by key."""
    expressions = tuple(names.values())
    library = _library(expressions, ("LINE_SEARCH_SAMPLES=3", "MAX_BLOCK_FRAMES=128", *defines))
    kernels = {}
    for index, (key, expression) in enumerate(names.items()):
        template = re.match(r"\w+", expression).group(0)
        kernels[key] = HostKernel(getattr(library, f"kernel_{index}"), SIGNATURES[template])
    return kernels
