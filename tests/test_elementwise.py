"""The NumPy side of engine/elementwise.py (its CuPy kernels: tests/test_gpu.py)."""

from __future__ import annotations

import numpy as np
import pytest
from operator_support import POLAK_RIBIERE_CASES

from bluesky_ptycho.engine import elementwise


@pytest.mark.parametrize(("dots", "previous", "want"), POLAK_RIBIERE_CASES)
def test_polak_ribiere_keeps_or_restarts_the_direction(dots, previous, want):
    beta, slope = elementwise.polak_ribiere(np.asarray(dots), np.asarray(previous))
    assert (float(beta), float(slope)) == want


def test_real_inners_are_the_real_parts_of_vdot_added_to_a_total():
    rng = np.random.default_rng(5)
    a, b, c = (rng.normal(size=(7, 5)) + 1j * rng.normal(size=(7, 5)) for _ in range(3))
    want = [np.sum(np.conj(a) * b).real, np.sum(np.conj(a) * c).real]
    np.testing.assert_allclose(elementwise.real_inners(a, [b, c]), want, rtol=1e-12)
    total = np.ones(2)
    assert elementwise.real_inners(a, [b, c], total) is total
    np.testing.assert_allclose(total - 1, want, rtol=1e-12)


def test_preconditioned_scales_the_damping():
    grad, weight = np.full(3, 2.0 + 1.0j), np.array([0.0, 1.0, 3.0])
    want = grad / (weight + 0.25 * 3.0)
    np.testing.assert_allclose(elementwise.preconditioned(grad, weight, 3.0, 0.25), want)
    np.testing.assert_allclose(elementwise.preconditioned(grad, weight, 0.75), want)
