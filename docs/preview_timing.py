"""Host time of a snapshot's image conversions (docs/benchmarks.md, issue 12).

Times, on a random SIZE x SIZE complex64 object (default 5300: a 10,000-frame
256 x 256 scan's canvas), the derived run's full-size conversion and one
preview, as ``bluesky_ptycho.outputs.previews`` does them (bands of rows in
threads) and as whole-image NumPy passes (the code before 7c920ca:
``nan_to_num``, ``abs`` and ``angle`` of the whole object; the preview binned
with whole-image NaN copies). Best of three. From the repository root::

    PYTHONPATH=. python docs/preview_timing.py [SIZE]
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from bluesky_ptycho.outputs import previews


def whole_image_conversion(obj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = np.nan_to_num(obj)
    return np.abs(finite).astype(np.float32), np.angle(finite).astype(np.float32)


def whole_image_bin(image: np.ndarray, factor: int, size: tuple[int, int]) -> np.ndarray:
    out_rows, out_cols = size
    padded = np.full((out_rows * factor, out_cols * factor), np.nan, dtype=image.dtype)
    rows, cols = min(image.shape[0], out_rows * factor), min(image.shape[1], out_cols * factor)
    padded[:rows, :cols] = image[:rows, :cols]
    blocks = padded.reshape(out_rows, factor, out_cols, factor)
    finite = np.isfinite(blocks)
    total = np.where(finite, blocks, 0).sum(axis=(1, 3))
    count = finite.sum(axis=(1, 3))
    out = np.full(total.shape, np.nan, dtype=image.dtype)
    np.divide(total, count, out=out, where=count > 0)
    return out


def best_of_three(function, *args) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 5300
    rng = np.random.default_rng(0)
    obj = rng.random((size, size), np.float32) + 1j * rng.random((size, size), np.float32)
    obj = obj.astype(np.complex64)
    obj[: size // 10] = np.nan  # an unreached band, as in a live snapshot
    factor, grid = math.ceil(size / previews.PREVIEW_PX), (previews.PREVIEW_PX,) * 2
    rows = [
        ("full-size amplitude and phase", whole_image_conversion, previews.amplitude_phase, (obj,)),
        ("preview binning", whole_image_bin, previews.bin_image, (obj, factor, grid)),
    ]
    print(f"{size} x {size} complex64, {previews.IMAGE_THREADS} image threads")
    for name, before, after, args in rows:
        print(f"{name}: whole-image {best_of_three(before, *args):.3f} s, "
              f"in bands {best_of_three(after, *args):.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
