"""The Poisson likelihood, its gradient and the line search against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_ptycho.engine import poisson


def fields(seed: int = 0, shape=(3, 8, 8)):
    rng = np.random.default_rng(seed)

    def cplx():
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

    a, b, c = 4 * cplx(), cplx(), 0.3 * cplx()
    counts = rng.poisson(np.abs(a) ** 2 * 1.2).astype(np.float64)
    counts[0, 0, :3] = -1  # excluded pixels
    return a, b, c, counts


def nll_along(a, b, c, counts, t, model="poisson"):
    return poisson.negative_log_likelihood(a + t * b + t * t * c, counts, model)


@pytest.mark.parametrize("model", poisson.NOISE_MODELS)
def test_gradient_matches_finite_differences(model):
    a, b, _, counts = fields()
    grad = poisson.farfield_gradient(a, counts, model)
    step = 1e-6
    numeric = (
        nll_along(a, b, 0 * b, counts, step, model) - nll_along(a, b, 0 * b, counts, -step, model)
    ) / (2 * step)
    analytic = 2 * np.vdot(grad, b).real
    assert abs(numeric - analytic) < 1e-5 * abs(analytic)


@pytest.mark.parametrize("model", poisson.NOISE_MODELS)
def test_line_search_terms_match_finite_differences(model):
    a, b, c, counts = fields(1)
    tau, step = 0.3, 1e-5
    (slope,), (curvature,) = poisson.line_search_terms(a, b, c, counts, [tau], model)
    values = [nll_along(a, b, c, counts, tau + k * step, model) for k in (-1, 0, 1)]
    assert abs((values[2] - values[0]) / (2 * step) - slope) < 1e-5 * abs(slope)
    numeric_curvature = (values[2] - 2 * values[1] + values[0]) / step**2
    assert abs(numeric_curvature - curvature) < 1e-3 * abs(curvature)


def one_pass(a, b, c, counts, slope, scale):
    """The engine's line search along ``a + t b + t^2 c``: (step, next scale)."""
    slopes, curvatures = poisson.line_search_terms(a, b, c, counts, poisson.sample_steps(scale))
    return poisson.line_search_step(slope, slopes, curvatures, scale)


def descent_path(seed=2, quadratic=1e-3):
    a, _, c, counts = fields(seed)
    direction = -poisson.farfield_gradient(a, counts)
    (slope,), _ = poisson.line_search_terms(a, direction, c * quadratic, counts, [0.0])
    return a, direction, c * quadratic, counts, slope


def test_line_search_finds_the_minimum_along_the_path():
    a, direction, c, counts, slope = descent_path()
    tau, next_scale = one_pass(a, direction, c, counts, slope, 0.01)  # beyond the samples
    for _ in range(3):  # line searches that follow start at the last step
        tau, next_scale = one_pass(a, direction, c, counts, slope, next_scale)
    grid = np.linspace(0, 3 * tau, 301)
    values = [nll_along(a, direction, c, counts, t) for t in grid]
    best = grid[int(np.argmin(values))]
    assert tau > 0 and abs(tau - best) <= 0.05 * tau and next_scale == tau


def minimiser_by_bisection(a, b, c, counts, high):
    """The first zero of L'(t) in (0, high), to 1e-10, from single-step evaluations."""
    low = 0.0
    for _ in range(60):
        middle = 0.5 * (low + high)
        (slope,), _ = poisson.line_search_terms(a, b, c, counts, [middle])
        low, high = (middle, high) if slope < 0 else (low, middle)
    return 0.5 * (low + high)


@pytest.mark.parametrize("start_ratio", [0.3, 1.0, 5.0])
def test_a_bracket_inside_the_samples_gives_the_minimiser(start_ratio):
    """A minimiser between two samples (the usual case): the Hermite root, to 1 %."""
    a, direction, c, counts, slope = descent_path()
    exact = minimiser_by_bisection(a, direction, c, counts, 10.0)
    tau, next_scale = one_pass(a, direction, c, counts, slope, start_ratio * exact)
    assert abs(tau - exact) <= 0.01 * exact and next_scale == tau


@pytest.mark.parametrize("start_ratio", [1e-4, 1e3])
def test_a_start_far_from_the_minimum_descends_and_rescales(start_ratio):
    """A minimiser beyond every sample (or below the smallest): a step that lowers L
    and a next scale nearer the minimiser; the line searches that follow reach it."""
    a, direction, c, counts, slope = descent_path(7, quadratic=1.0)
    exact = minimiser_by_bisection(a, direction, c, counts, 10.0)
    scale = start_ratio * exact
    tau, next_scale = one_pass(a, direction, c, counts, slope, scale)
    assert 0 < tau
    assert nll_along(a, direction, c, counts, tau) < nll_along(a, direction, c, counts, 0)
    assert abs(np.log(next_scale / exact)) < abs(np.log(scale / exact))
    for _ in range(12):
        tau, next_scale = one_pass(a, direction, c, counts, slope, next_scale)
    assert abs(tau - exact) <= 0.02 * exact


def test_the_step_rule_on_known_slopes():
    """Exact on a quadratic L' (the Hermite cubic reproduces it), the secant's root on
    [0, t_1], Newton's beyond the samples, overflow and ascent handled."""
    scale, root = 1.0, 0.7
    steps = np.array(poisson.sample_steps(scale))

    def quadratic_slope(t, root=root):  # L'(t) = (t - root)(t + 2), L'(0) < 0
        return (t - root) * (t + 2), 2 * t + 2 - root

    slopes, curvatures = quadratic_slope(steps)
    tau, next_scale = poisson.line_search_step(quadratic_slope(0.0)[0], slopes, curvatures, scale)
    assert tau == pytest.approx(root, rel=1e-8) and next_scale == tau
    slopes, curvatures = quadratic_slope(steps, root=0.05)  # below the first sample
    slope_at_zero = quadratic_slope(0.0, 0.05)[0]
    tau, next_scale = poisson.line_search_step(slope_at_zero, slopes, curvatures, scale)
    secant = steps[0] * slope_at_zero / (slope_at_zero - slopes[0])
    assert tau == pytest.approx(secant, rel=1e-12) and 0 < tau < 0.05  # convex L': short
    assert next_scale == max(tau, steps[0] / 8)
    linear = steps - 100.0  # L'(t) = t - 100: Newton from the last sample, capped
    tau, _ = poisson.line_search_step(-100.0, linear, np.ones(6), scale)
    assert tau == steps[-1] * poisson.LINE_SEARCH_EXTRAPOLATION
    linear = steps - 5.0
    assert poisson.line_search_step(-5.0, linear, np.ones(6), scale) == (5.0, 5.0)
    overflow = np.where(steps > 1.5, np.inf, -1.0)  # L' overflows from t = 2: step 1
    assert poisson.line_search_step(-1.0, overflow, np.ones(6), scale) == (1.0, 1.0)
    overflow = np.full(6, np.nan)  # at the first sample: no step, a smaller scale
    assert poisson.line_search_step(-1.0, overflow, np.ones(6), scale) == (0.0, steps[0] / 8)
    assert poisson.line_search_step(0.5, linear, np.ones(6), scale) == (0.0, scale)  # ascent


def test_line_search_refuses_an_ascent_direction():
    a, _, _, counts = fields(3)
    ascent = poisson.farfield_gradient(a, counts)
    (slope,), _ = poisson.line_search_terms(a, ascent, None, counts, [0.0])
    assert slope > 0
    assert one_pass(a, ascent, None, counts, slope, 1.0) == (0.0, 1.0)


def test_slope_at_zero_is_twice_the_gradient_inner_product():
    a, b, _, counts = fields(5)
    (slope,), _ = poisson.line_search_terms(a, b, None, counts, [0.0])
    assert abs(slope - 2 * np.vdot(poisson.farfield_gradient(a, counts), b).real) < 1e-9 * abs(
        slope
    )


def test_excluded_pixels_do_not_count():
    a, _, _, counts = fields(4)
    changed = a.copy()
    changed[0, 0, :3] *= 10
    assert poisson.negative_log_likelihood(changed, counts) == poisson.negative_log_likelihood(
        a, counts
    )
    assert np.all(poisson.farfield_gradient(a, counts)[0, 0, :3] == 0)


def test_compact_counts_round_trip_and_fit():
    from bluesky_ptycho.engine import counts as count_store

    counts = np.array([[-1.0, 0.0, 3.0, 65534.0]])
    stored = count_store.encode(counts, count_store.COMPACT_DTYPE)
    assert stored.dtype == np.uint16 and stored.tolist() == [[65535, 0, 3, 65534]]
    np.testing.assert_array_equal(count_store.decode(stored, "float32"), counts)
    assert count_store.fits_compact(counts)
    assert not count_store.fits_compact(np.array([65535.0]))
    assert not count_store.fits_compact(np.array([2.5]))
    assert count_store.fits_compact(np.array([-1.0, -7.0]))  # excluded values do not count


def test_poisson_terms_read_compact_counts():
    from bluesky_ptycho.engine import counts as count_store

    a, b, c, counts = fields(6)
    stored = count_store.encode(counts, count_store.COMPACT_DTYPE)
    assert poisson.negative_log_likelihood(a, stored) == poisson.negative_log_likelihood(a, counts)
    np.testing.assert_array_equal(
        poisson.farfield_gradient(a, stored), poisson.farfield_gradient(a, counts)
    )
    np.testing.assert_array_equal(
        poisson.line_search_terms(a, b, c, stored, [0.2, 0.4]),
        poisson.line_search_terms(a, b, c, counts, [0.2, 0.4]),
    )


def test_the_models_differ_most_far_from_the_solution():
    """Where the model intensity is far below the counts (a first guess's dark field)
    the amplitude model's weight grows like sqrt(n / I), Poisson's like n / I."""
    counts = np.array([100.0, 100.0])
    farfield = np.array([10.0, 0.1]) + 0j  # at the solution, and 100 x too dim
    poisson_weight = poisson.farfield_gradient(farfield, counts).real / farfield.real
    amplitude_weight = poisson.farfield_gradient(farfield, counts, "amplitude").real / farfield.real
    np.testing.assert_allclose(poisson_weight, [0, 1 - 1e4], rtol=1e-3, atol=1e-6)  # eps
    np.testing.assert_allclose(amplitude_weight, [0, 1 - 1e2], rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="noise model"):
        poisson.farfield_gradient(farfield, counts, "gaussian")
