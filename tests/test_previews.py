"""Preview binning and amplitude/phase conversion against their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.outputs import previews


def reference_bin(image, factor, size):
    """Block mean leaving NaN pixels out, NaN padding: the definition, pixel by pixel."""
    out = np.full(size, np.nan, dtype=image.dtype)
    for r in range(size[0]):
        for c in range(size[1]):
            block = image[r * factor : (r + 1) * factor, c * factor : (c + 1) * factor]
            finite = block[np.isfinite(block)]
            if finite.size:
                out[r, c] = finite.mean()
    return out


@pytest.mark.parametrize("dtype", [np.complex64, np.float32])
@pytest.mark.parametrize(
    ("shape", "factor", "size"),
    [
        ((37, 53), 4, None),
        ((37, 53), 4, (20, 20)),
        ((300, 77), 7, (12, 9)),
        ((50, 50), 1, (60, 40)),
    ],
)
def test_bin_image_is_the_block_mean_of_finite_pixels(monkeypatch, dtype, shape, factor, size):
    rng = np.random.default_rng(1)
    image = rng.standard_normal(shape).astype(dtype)
    if np.iscomplexobj(image):
        image = image + 1j * rng.standard_normal(shape).astype(np.float32)
    image[rng.random(shape) < 0.2] = np.nan
    image[:factor] = np.nan  # a band of all-NaN blocks stays NaN
    size = size or (-(-shape[0] // factor), -(-shape[1] // factor))
    want = reference_bin(image, factor, size)
    monkeypatch.setattr(previews, "ROWS_PER_TASK", 16)  # several bands, in threads
    got = previews.bin_image(image, factor, size)
    assert got.dtype == image.dtype and got.shape == tuple(size)
    np.testing.assert_allclose(got, want, rtol=1e-5, equal_nan=True)


def test_amplitude_phase_is_zero_where_not_finite(monkeypatch):
    rng = np.random.default_rng(2)
    field = (rng.standard_normal((70, 30)) + 1j * rng.standard_normal((70, 30))).astype(
        np.complex64
    )
    field[3, 4] = np.nan
    field[50, 2] = complex(np.inf, 0)
    monkeypatch.setattr(previews, "ROWS_PER_TASK", 8)
    amplitude, phase = previews.amplitude_phase(field)
    assert amplitude.dtype == phase.dtype == np.float32
    finite = np.isfinite(field)
    np.testing.assert_allclose(amplitude[finite], np.abs(field[finite]), rtol=1e-6)
    np.testing.assert_allclose(phase[finite], np.angle(field[finite]), rtol=1e-6, atol=1e-7)
    assert amplitude[3, 4] == phase[3, 4] == amplitude[50, 2] == 0
