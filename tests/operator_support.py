"""Whole-stack compositions of the engine operators' chunk methods (not a test module)."""

from __future__ import annotations

from typing import Any


def object_gradient(
    ops: Any, chi: Any, probe: Any, obj: Any, probe_terms: bool, chunk_frames: int | None = None
) -> tuple[Any, Any, Any, Any]:
    """``(g_O, illumination, g_P, probe_power)`` over all frames, added ``chunk_frames``
    at a time (all at once by default), as the engine's passes add them."""
    taps, sums = ops.taps(probe), ops.gradient_sums(probe_terms)
    step = chunk_frames or ops.n_frames
    for first in range(0, ops.n_frames, step):
        frames = slice(first, min(first + step, ops.n_frames))
        ops.add_object_gradient(sums, chi[frames], taps, obj, frames)
    return ops.gradients(sums)


def direction_farfields(ops: Any, probe: Any, dprobe: Any, obj: Any, dobj: Any) -> Any:
    """``(b, c)`` of all frames."""
    dtaps = None if dprobe is None else ops.taps(dprobe)
    return ops.direction_farfields(ops.taps(probe), dtaps, obj, dobj, slice(None))


#: (dots = [Re <g, s>, Re <g, s_prev>, Re <g, d_prev>], previous Re <g, s>, previous
#: line-search step, the Polak-Ribiere (beta, slope) they give): kept; beta <= 0; the
#: previous direction did not descend; a conjugate slope >= 0; the previous step was 0
#: (the last four restart: beta 0, slope -2 Re <g, s>)
POLAK_RIBIERE_CASES = [
    ([2.0, 0.5, -1.0], 3.0, 0.25, (0.5, -5.0)),
    ([2.0, 2.5, -1.0], 3.0, 0.25, (0.0, -4.0)),
    ([2.0, 0.5, -1.0], -1.0, 0.25, (0.0, -4.0)),
    ([2.0, 0.5, 8.0], 3.0, 0.25, (0.0, -4.0)),
    ([2.0, 0.5, -1.0], 3.0, 0.0, (0.0, -4.0)),
]


def line_search_step_cases() -> list[tuple[float, Any, float]]:
    """(L'(0), (6, 2) sums of L' and L'' at ``sample_steps(scale)``, scale): every branch
    of the step rule (bracket inside, at [0, t_1], none, overflows, ascent) and random
    ones."""
    import numpy as np

    from bluesky_ptycho.engine import poisson

    cases = []
    scale = 0.37
    steps = np.array(poisson.sample_steps(scale))
    for root in (0.6, 0.02, 5.0):  # L'(t) = (t - root)(t + 1): inside, below, beyond
        sums = np.stack([(steps - root) * (steps + 1), 2 * steps + 1 - root], axis=1)
        cases.append((-root, sums, scale))
    overflow = np.stack([np.where(steps > 0.5, np.inf, -1.0), np.ones(6)], axis=1)
    cases += [(-1.0, overflow, scale), (-1.0, np.full((6, 2), np.nan), scale)]
    cases.append((0.5, np.ones((6, 2)), scale))  # ascent
    rng = np.random.default_rng(8)
    for _ in range(20):
        sums = np.stack([np.sort(rng.normal(size=6)) * 3, rng.uniform(0.1, 4, 6)], axis=1)
        cases.append((-abs(rng.normal()), sums, float(rng.uniform(0.01, 10))))
    return cases
