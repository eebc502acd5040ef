"""Frame transforms of our own (kernels/transforms.cu): their split, and a NumPy twin.

The CUDA kernels transform square N x N single-precision frames as a pass along the
rows and a pass along the columns, each 1-D transform the four-step split of N into
A x B (:data:`SPLITS`). Their point is the gradient pass: the column pass of the
forward transform, the Poisson gradient and the column pass of the inverse are one
kernel (``columns_poisson``), so the frame stack is read and written once between the
two row passes instead of once by each of cuFFT's passes and by the gradient kernel.
:func:`four_step` is the same arithmetic on NumPy (the CPU tests check it against
``numpy.fft``); :class:`FrameTransforms` launches the kernels.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

#: ``Reconstructor(transforms=...)`` choices: cuFFT's, or these with the gradient pass
#: fused around them (for the frames :data:`SPLITS` has a split for; cuFFT's for others)
TRANSFORMS = ("cufft", "fused")
#: frame size N -> (A, B), N = A B: the four-step split of each 1-D transform (A, B
#: powers of two <= 32, the kernels' in-register DFTs)
SPLITS = {128: (16, 8), 256: (16, 16), 512: (16, 32)}
#: frame size -> rows (row pass) or columns (column passes) a thread block holds; the
#: shared-memory exchange is about 35 KB a block at each size
LINES = {128: 16, 256: 16, 512: 8}
THREADS = 256
#: stored count dtype -> the fused column kernel that reads it
COUNT_KERNELS = {"float32": "columns_poisson", "uint16": "columns_poisson_uint16"}


def unitary_twiddles(n: int) -> np.ndarray:
    """``W_n^m = exp(-2 pi i m / n)``, m = 0..n-1, made in double, as complex64."""
    return np.exp(-2j * np.pi * np.arange(n) / n).astype(np.complex64)


def four_step(x: np.ndarray, split: tuple[int, int], inverse: bool = False) -> np.ndarray:
    """Unnormalised DFT along the last axis by the kernels' four-step split:
    ``n = B n1 + n2``, ``k = k1 + A k2``; an A-point DFT over ``n1``, the twiddle
    ``W_N^(n2 k1)``, a B-point DFT over ``n2`` (conjugate factors when ``inverse``)."""
    a, b = split
    n = a * b
    sign = 1 if inverse else -1
    steps = x.reshape(*x.shape[:-1], a, b)  # [..., n1, n2]
    first = np.fft.ifft(steps, axis=-2) * a if inverse else np.fft.fft(steps, axis=-2)
    k1, n2 = np.arange(a)[:, None], np.arange(b)[None, :]
    first = first * np.exp(sign * 2j * np.pi * k1 * n2 / n)  # [..., k1, n2]
    second = np.fft.ifft(first, axis=-1) * b if inverse else np.fft.fft(first, axis=-1)
    # second[..., k1, k2] is X[k1 + A k2]
    return np.swapaxes(second, -1, -2).reshape(x.shape)


def kernel_names(n: int) -> dict[str, str]:
    """Template name expressions of the transform kernels for N x N frames."""
    a, b = SPLITS[n]
    lines = LINES[n]
    return {
        "rows": f"transform_rows<{a}, {b}, {lines}, false>",
        "rows_inverse": f"transform_rows<{a}, {b}, {lines}, true>",
        "columns": f"transform_columns<{a}, {b}, {lines}, false>",
        "columns_inverse": f"transform_columns<{a}, {b}, {lines}, true>",
        "columns_poisson": f"columns_poisson<{a}, {b}, {lines}, float>",
        "columns_poisson_uint16": f"columns_poisson<{a}, {b}, {lines}, unsigned short>",
    }


class FrameTransforms:
    """kernels/transforms.cu for (n, N, N) C-contiguous complex64 stacks (CuPy)."""

    def __init__(self, xp: ModuleType, kernels: dict[str, Any], n: int) -> None:
        if n not in SPLITS:
            raise ValueError(f"FrameTransforms: frame size {n} is not one of {sorted(SPLITS)}")
        self.xp = xp
        self.n = n
        self._kernels = kernels
        self.twiddle = xp.asarray(unitary_twiddles(n))

    def _check(self, stack: Any) -> int:
        n = self.n
        if stack.dtype != np.complex64 or stack.shape[1:] != (n, n) or not stack.flags.c_contiguous:
            raise ValueError(
                f"FrameTransforms: expected a C-contiguous (frames, {n}, {n}) complex64 stack, "
                f"got {stack.shape} {stack.dtype}"
            )
        return int(stack.shape[0])

    def rows(self, stack: Any, inverse: bool = False) -> None:
        """Transform every row of ``stack`` in place."""
        frames = self._check(stack)
        if frames:
            n_rows = frames * self.n
            grid = (-(-n_rows // LINES[self.n]),)
            kernel = self._kernels["rows_inverse" if inverse else "rows"]
            kernel(grid, (THREADS,), (stack, self.twiddle, np.int64(n_rows)))

    def columns(self, stack: Any, inverse: bool = False) -> None:
        """Transform every column of ``stack`` in place."""
        frames = self._check(stack)
        if frames:
            kernel = self._kernels["columns_inverse" if inverse else "columns"]
            kernel(self._column_grid(frames), (THREADS,), (stack, self.twiddle))

    def forward(self, stack: Any) -> None:
        """Unnormalised 2-D forward DFT in place (cuFFT's and NumPy's sign)."""
        self.rows(stack)
        self.columns(stack)

    def inverse(self, stack: Any) -> None:
        """Unnormalised 2-D inverse DFT in place."""
        self.rows(stack, inverse=True)
        self.columns(stack, inverse=True)

    def columns_poisson(
        self,
        stack: Any,
        counts: Any,
        farfield: Any | None,
        chi: Any,
        total: Any,
        eps: float,
        scale: float,
        amplitude: bool,
        kept: slice = slice(None),
    ) -> None:
        """``stack`` transformed along its rows: the far fields of the frames ``kept``
        (a slice of the stack's frames, step >= 1) to ``farfield`` (one frame each;
        none when it is None), the NLL of all (added to ``total``) and the gradient's
        inverse column transform (to ``chi``, which may be ``stack``)."""
        frames = self._check(stack)
        self._check(chi)
        first, stop, stride = kept.indices(frames)
        kept_count = len(range(first, stop, stride))
        if stride < 1:
            raise ValueError(f"columns_poisson: kept must step forward, got {kept}")
        if farfield is not None and self._check(farfield) != kept_count:
            raise ValueError(
                f"columns_poisson: farfield holds {farfield.shape[0]} frames for the "
                f"{kept_count} kept"
            )
        if tuple(counts.shape) != tuple(stack.shape) or not counts.flags.c_contiguous:
            raise ValueError(f"columns_poisson: counts {counts.shape} do not match {stack.shape}")
        if not frames:
            return
        name = COUNT_KERNELS.get(np.dtype(counts.dtype).name)
        if name is None:
            raise ValueError(
                f"columns_poisson: counts must be float32 or uint16, not {counts.dtype}"
            )
        self._kernels[name](
            self._column_grid(frames),
            (THREADS,),
            (
                stack,
                np.uint64(0) if farfield is None else farfield,
                np.int32(first),
                np.int32(stride),
                np.int32(kept_count),
                counts,
                chi,
                self.twiddle,
                total,
                np.float32(eps),
                np.float32(scale),
                np.int32(amplitude),
            ),
        )

    def _column_grid(self, frames: int) -> tuple[int, int]:
        return (self.n // LINES[self.n], frames)
