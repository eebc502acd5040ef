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


#: (dots = [Re <g, s>, Re <g, s_prev>, Re <g, d_prev>], previous Re <g, s>, the
#: Polak-Ribiere (beta, slope) they give): kept; beta <= 0; the previous step did not
#: descend; a conjugate slope >= 0 (the last three restart: beta 0, slope -2 Re <g, s>)
POLAK_RIBIERE_CASES = [
    ([2.0, 0.5, -1.0], 3.0, (0.5, -5.0)),
    ([2.0, 2.5, -1.0], 3.0, (0.0, -4.0)),
    ([2.0, 0.5, -1.0], -1.0, (0.0, -4.0)),
    ([2.0, 0.5, 8.0], 3.0, (0.0, -4.0)),
]
