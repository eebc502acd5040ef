"""One iteration's passes over a store's frames, for each way of keeping frame stacks.

``ReconConfig.frame_storage`` says what the engine keeps per frame between the
passes of an iteration (single precision, 256 x 256 frames; counts 2 bytes a
pixel in their compact form):

* ``"stacks"``: counts, the model far fields ``a`` and the direction's far
  fields ``b`` and ``c`` (26 bytes a pixel, 1.70 MB a frame). Three transforms
  an iteration: ``a`` is moved along the line search by linearity
  (``a += t b + t^2 c``, in the next gradient pass's kernel: no pass of its own)
  and recomputed every ``REFRESH_EVERY`` iterations.
* ``"farfields"`` (default): counts, and ``a`` of the frames the next line search
  reads (its sample, at most ``line_search_frames``: 2 bytes a pixel and a fixed
  0.5 MB a sampled frame). ``a`` is recomputed in the gradient pass, which keeps
  the sample's; ``b`` and ``c`` are made chunk by chunk in each line-search pass:
  four transforms an iteration (one line-search pass), two more for each further
  pass.
* ``"counts"``: counts only (2 bytes a pixel, 0.13 MB a frame); ``a`` is also
  recomputed in each line-search pass: four transforms an iteration and one more
  for each sampled frame.

Chunks hold about ``operators.CHUNK_PIXELS`` pixels (``CHUNK_PIXELS`` here: fewer
for ``"counts"``, whose point is memory), so the temporaries are bounded
whatever the number of frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .frames import FrameStore
from .operators import chunk_pixels, frame_count, strided_chunks

#: ReconConfig.frame_storage choices, and the complex stacks each keeps per frame
FRAME_STORAGE_STACKS = {"stacks": 3, "farfields": 0, "counts": 0}
#: complex stacks each keeps for the frames of the line-search sample only
SAMPLE_STACKS = {"stacks": 0, "farfields": 1, "counts": 0}
#: chunk-sized complex temporaries of an iteration in each storage
CHUNK_STACKS = {"stacks": 0, "farfields": 2, "counts": 3}
#: pixels a chunk holds at most, where not ``operators.CHUNK_PIXELS``: the compact
#: storage's chunk stacks, cuFFT work area and operator temporaries (about five
#: chunk-sized complex stacks) stay at 0.3 GB in single precision
CHUNK_PIXELS = {"counts": 2**23}


def sample_stride(n_frames: int, line_search_frames: int) -> int:
    """k of the line-search sample, every k-th of ``n_frames`` (``FramePasses``)."""
    if line_search_frames == 0 or n_frames <= line_search_frames:
        return 1
    return -(-n_frames // line_search_frames)


def sample_capacity(n_frames: int, line_search_frames: int) -> int:
    """The most frames a line-search sample of ``n_frames`` holds (at any offset)."""
    return -(-n_frames // sample_stride(n_frames, line_search_frames))


def sampled_in(frames: slice, sample: slice, n_frames: int) -> tuple[slice, slice]:
    """The frames of ``sample`` that ``frames`` holds (a slice of step 1, or of the
    sample's step and on its frames): as a slice of ``frames``' own, and as the rows
    of a stack that holds the sample's frames in order."""
    start, stop, step = frames.indices(n_frames)
    first, _, stride = sample.indices(n_frames)
    head = first + max(0, -(-(start - first) // stride)) * stride  # first sampled >= start
    count = len(range(head, stop, stride))
    row = (head - first) // stride
    return slice((head - start) // step, None, stride // step), slice(row, row + count)


class FramePasses:
    """The gradient pass, the line-search passes and the update of one store's frames.

    ``gradient`` returns the NLL and gradient sums of the store's frames;
    ``set_direction`` takes the search direction (object and probe, on the
    store's device); ``line_search_sums(steps)`` returns ``[L'(t), L''(t)]`` at
    the steps; ``advance(tau)`` follows the step taken. ``noise_model`` arguments name
    the noise model of :mod:`.poisson` the gradient and the line search fit.

    ``line_search_frames`` (``ReconConfig.line_search_frames``; 0: all) caps the
    frames a line search reads: every k-th frame, ``k = ceil(n / line_search_frames)``,
    from an offset that moves on by one each iteration, its sums scaled by ``n`` over
    the frames read (the gradient, the NLL and the slope at 0 cover every frame).
    """

    def __init__(self, store: FrameStore, storage: str, line_search_frames: int = 0) -> None:
        if storage not in FRAME_STORAGE_STACKS:
            raise ValueError(
                f"frame_storage: expected one of {sorted(FRAME_STORAGE_STACKS)}, got {storage!r}"
            )
        self.store = store
        self.storage = storage
        self.line_search_frames = line_search_frames
        self._searches = 0  # line searches set up so far: the sample's offset
        self._sample = slice(None)  # the frames this iteration's line search reads
        self._taps: Any = None
        self._direction: tuple[Any, Any, Any | None] | None = None  # (dobj, dtaps, stacks)
        self._pending_step: Any = None  # taken, not yet applied to stored a (device)

    def _chunk(self, name: str, frames: slice) -> Any:
        """The work stack ``name`` for the chunk ``frames`` (chunk-sized, kept between
        iterations)."""
        store = self.store
        size = frame_count(frames, store.n)
        capacity = chunk_pixels(store.n, store.frame_shape, store.ops.max_chunk_pixels) // (
            store.frame_shape[0] * store.frame_shape[1]
        )
        return store.work.get(name, size, capacity)

    def _chunks(self, frames: slice = slice(None)) -> Iterator[slice]:
        """Chunks of the store's ``frames`` (all by default; any step)."""
        store = self.store
        chunks = strided_chunks(frames, store.n, store.frame_shape, store.ops.max_chunk_pixels)
        for chunk, _ in chunks:
            yield chunk

    def sample(self) -> slice:
        """The frames the next line search reads (class docstring)."""
        n = self.store.n
        stride = sample_stride(n, self.line_search_frames)
        return slice(self._searches % stride, n, stride)

    def _sampled_farfields(self) -> Any:
        """``"farfields"``: the stack of the sample's ``a``, a frame for each it reads."""
        store = self.store
        capacity = sample_capacity(store.capacity, self.line_search_frames)
        return store.work.get("sampled", frame_count(self._sample, store.n), capacity)

    def gradient(
        self, probe_terms: bool, noise_model: str = "poisson"
    ) -> tuple[Any, Any, Any, Any, Any]:
        """(NLL as a one-element float64 array, g_O, illumination, g_P, probe power).
        Draws the sample the iteration's line search reads."""
        store, ops = self.store, self.store.ops
        xp, n = store.xp, store.n
        self._taps = taps = ops.taps(store.probe)
        self._sample = self.sample()
        self._searches += 1
        sampled = self._sampled_farfields() if self.storage == "farfields" else None
        fused = self._fused_step()
        if self.storage == "stacks" and store.n_fresh < n:
            fresh = slice(store.n_fresh, n)
            ops.farfields(taps, store.object, fresh, store.farfield[fresh])
            store.n_fresh = n
        sums = ops.gradient_sums(probe_terms)
        nll = xp.zeros(1, "float64")
        for frames in self._chunks():
            counts = store.counts[frames]
            if self.storage == "stacks":  # the direction's b stack is free until set_direction
                chi = store.work.get("linear", n, store.capacity)[frames]
                step = None
                if fused is not None:  # b is read before chi overwrites it, pixel by pixel
                    linear, quadratic, tau = fused
                    step = (linear[frames], None if quadratic is None else quadratic[frames], tau)
                ops.nll_and_chi(store.farfield[frames], counts, chi, noise_model, step, nll)
            else:  # "farfields" keeps the sample's far fields, "counts" none
                farfield, kept = None, slice(None)
                if sampled is not None:
                    kept, rows = sampled_in(frames, self._sample, n)
                    farfield = sampled[rows]
                chi = self._chunk("a" if sampled is None else "b", frames)
                ops.farfields_nll_and_chi(
                    taps, store.object, frames, counts, farfield, chi, noise_model, nll, kept
                )
            ops.add_object_gradient(sums, chi, taps, store.object, frames)
        return (nll, *ops.gradients(sums))

    def set_direction(self, dprobe: Any | None, dobj: Any) -> None:
        """The search direction; with ``"stacks"`` its far fields are made now."""
        store, ops = self.store, self.store.ops
        self._take_step_alone()  # (normally the gradient pass has taken it already)
        dtaps = None if dprobe is None else ops.taps(dprobe)
        stacks = None
        if self.storage == "stacks":
            quadratic = None
            if dtaps is not None:
                quadratic = store.work.get("quadratic", store.n, store.capacity)
            buffers = (store.work.get("linear", store.n, store.capacity), quadratic)
            stacks = ops.direction_farfields(
                self._taps, dtaps, store.object, dobj, slice(0, store.n), buffers
            )
        self._direction = (dobj, dtaps, stacks)

    def line_search_sums(self, steps: list[float], noise_model: str = "poisson") -> Any:
        """(len(steps), 2) float64 device array of L' and L'' over the store's frames
        (estimated from the frames of :meth:`sample` when those are not all)."""
        store, ops = self.store, self.store.ops
        dobj, dtaps, stacks = self._require_direction()
        sample, n = self._sample, store.n
        if stacks is not None:
            linear, quadratic = stacks
            total = ops.line_search_sums(
                store.farfield[:n][sample],
                linear[sample],
                None if quadratic is None else quadratic[sample],
                store.counts[:n][sample],
                steps,
                noise_model,
            )
        else:
            total = store.xp.zeros((len(steps), 2), "float64")
            for frames in self._chunks(sample):
                quadratic = None if dtaps is None else self._chunk("c", frames)
                buffers = (self._chunk("b", frames), quadratic)
                linear, quadratic = ops.direction_farfields(
                    self._taps, dtaps, store.object, dobj, frames, buffers
                )
                if self.storage == "counts":
                    a_chunk = self._chunk("a", frames)
                    farfield = ops.farfields(self._taps, store.object, frames, a_chunk)
                else:
                    farfield = self._sampled_farfields()[sampled_in(frames, sample, n)[1]]
                ops.line_search_sums(
                    farfield, linear, quadratic, store.counts[frames], steps, noise_model, total
                )
        read = frame_count(sample, n)
        return total if read == n else total * (n / read)

    def advance(self, tau: Any) -> None:
        """Follow a step ``tau`` (a number or a one-element float64 array on the store's
        device, not read back) along the direction: the stored ``a`` moves with it
        (``"stacks"``: in the next gradient pass); otherwise that pass recomputes it."""
        _, _, stacks = self._require_direction()
        if stacks is not None:
            self._pending_step = tau

    def _fused_step(self) -> tuple[Any, Any | None, Any] | None:
        """The pending step as (b, c, tau) for the gradient pass to take on the way,
        when it covers every frame whose stored ``a`` is current; otherwise (frames
        joined since, or a refresh recomputes some) taken now by itself, and None."""
        tau = self._pending_step
        if tau is None:
            return None
        linear, quadratic = self._require_direction()[2]
        if self.store.n_fresh == self.store.n == linear.shape[0]:
            self._pending_step = None
            return linear, quadratic, tau
        self._take_step_alone()
        return None

    def _take_step_alone(self) -> None:
        """Apply the pending step to the frames whose stored ``a`` is current, in a pass
        of its own (before new frames grow the stacks, which could move ``b``)."""
        tau, self._pending_step = self._pending_step, None
        fresh = self.store.n_fresh
        if tau is None or not fresh:
            return
        linear, quadratic = self._require_direction()[2]
        part = slice(0, fresh)
        quadratic = None if quadratic is None else quadratic[part]
        self.store.ops.advance(self.store.farfield[part], linear[part], quadratic, tau)

    def _require_direction(self) -> tuple[Any, Any, Any | None]:
        if self._direction is None:
            raise RuntimeError("FramePasses: set_direction() must come before the line search")
        return self._direction
