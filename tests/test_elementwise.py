"""The NumPy side of engine/elementwise.py (its CuPy kernels: tests/test_gpu.py)."""

from __future__ import annotations

import numpy as np
import pytest
from operator_support import POLAK_RIBIERE_CASES, line_search_step_cases

from bluesky_ptycho.engine import elementwise, poisson


@pytest.mark.parametrize(("dots", "previous", "previous_step", "want"), POLAK_RIBIERE_CASES)
def test_polak_ribiere_keeps_or_restarts_the_direction(dots, previous, previous_step, want):
    beta, slope = elementwise.polak_ribiere(
        np.asarray(dots), np.asarray(previous), np.asarray(previous_step)
    )
    assert (float(beta), float(slope)) == want


def test_line_search_step_is_the_rule_in_a_state():
    """The state after a pass holds the rule's step and scale, and the next pass's steps."""
    for slope, sums, scale in line_search_step_cases():
        state = elementwise.line_search_state(np, scale)
        assert list(state[2:]) == poisson.sample_steps(scale) and state[0] == 0
        out = elementwise.line_search_step(np.asarray(slope), sums, state)
        step, next_scale = poisson.line_search_step(slope, sums[:, 0], sums[:, 1], scale)
        assert out[0] == step and out[1] == next_scale
        assert list(out[2:]) == poisson.sample_steps(next_scale)


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
