"""kernels/transforms.cu against cuFFT: agreement and time per iteration's worth of frames.

For each case ``SIZE:FRAMES`` (default 128:4096, 256:4096, 512:1024), on a random
stack worked through in the engine's chunks (``operators.CHUNK_PIXELS``):

* agreement: the own forward and inverse 2-D transforms against cuFFT's, and the
  fused gradient chain (row pass, ``columns_poisson``, inverse row pass) against
  cuFFT + ``poisson_gradient`` + cuFFT (``CudaOperators`` made with cuFFT): far
  fields, chi and NLL, uint16 counts with excluded pixels, both noise models;
* time (CUDA events, median of 20 after 5 warm-ups): cuFFT forward, own forward,
  own row and column passes, and the two gradient chains.

JSON to ``$OUT/transforms_probe.json``. On a GPU machine::

    PYTHONPATH=. python docs/gpu_transforms_probe.py [SIZE:FRAMES ...]
"""

from __future__ import annotations

import json
import os
import sys

import cupy as cp
import numpy as np

from bluesky_ptycho.engine import cuda_operators, poisson
from bluesky_ptycho.engine.operators import frame_chunks

CASES = ("128:4096", "256:4096", "512:1024")
WARM, TIMED = 5, 20


def operators(size: int, own: bool) -> cuda_operators.CudaOperators:
    choice = "fused" if own else "cufft"
    return cuda_operators.CudaOperators(cp, (size, size), "float32", "cubic", transforms=choice)


def milliseconds(function, chunks) -> float:
    for _ in range(WARM):
        for chunk in chunks:
            function(chunk)
    times = []
    for _ in range(TIMED):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for chunk in chunks:
            function(chunk)
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def relative(a, b) -> float:
    return float(cp.abs(a - b).max() / cp.abs(b).max())


def case(text: str) -> dict:
    size, n_frames = (int(v) for v in text.split(":"))
    own, cufft = operators(size, True), operators(size, False)
    transforms = own.own_transforms
    rng = cp.random.default_rng(1)
    shape = (n_frames, size, size)
    stack = rng.standard_normal(shape, "float32") + 1j * rng.standard_normal(shape, "float32")
    stack = (stack * own._scale * 30).astype(cp.complex64)
    counts = cp.minimum(cp.random.poisson(cp.abs(cp.fft.fft2(stack[:8], norm="ortho")) ** 2), 60000)
    counts = cp.tile(counts.astype(cp.uint16), (n_frames // 8, 1, 1))
    counts[:, :3, :5] = 65535  # excluded
    chunks = [slice(c.start, c.stop) for c in frame_chunks(0, n_frames, (size, size))]
    row: dict = {"case": text, "chunk_frames": chunks[0].stop}

    probe = stack[:64].copy()
    want = cp.fft.fft2(probe)
    got = probe.copy()
    transforms.forward(got)
    row["forward_relative_error"] = relative(got, want)
    got = probe.copy()
    transforms.inverse(got)
    row["inverse_relative_error"] = relative(got, cp.fft.ifft2(probe) * size * size)
    for model in poisson.NOISE_MODELS:
        part = slice(0, 64)
        farfield_want = probe.copy()
        cufft._forward(farfield_want)
        nll_want, chi_want = cufft.nll_and_chi(farfield_want, counts[part], noise_model=model)
        work, chi, nll = probe.copy(), cp.empty_like(probe), cp.zeros(1, "float64")
        transforms.rows(work)
        transforms.columns_poisson(
            work,
            counts[part],
            work,
            chi,
            nll,
            poisson.EPS_PHOTONS,
            own._scale,
            model == "amplitude",
        )
        transforms.rows(chi, inverse=True)
        row[f"{model}_farfield_relative_error"] = relative(work, farfield_want)
        row[f"{model}_chi_relative_error"] = relative(chi, chi_want)
        row[f"{model}_nll"] = [float(nll[0]), float(nll_want[0])]

    work = cp.empty_like(stack)
    chi = cp.empty_like(stack)
    nll = cp.zeros(1, "float64")

    def cufft_forward(c):
        cufft._forward(work[c])

    def own_forward(c):
        transforms.forward(work[c])

    def own_rows(c):
        transforms.rows(work[c])

    def own_columns(c):
        transforms.columns(work[c])

    def cufft_chain(c):
        cufft._forward(work[c])
        cufft.nll_and_chi(work[c], counts[c], chi[c], total=nll)

    def own_chain(c):
        transforms.rows(work[c])
        transforms.columns_poisson(
            work[c], counts[c], work[c], chi[c], nll, poisson.EPS_PHOTONS, own._scale, False
        )
        transforms.rows(chi[c], inverse=True)

    def own_columns_poisson(c):
        transforms.columns_poisson(
            work[c], counts[c], work[c], chi[c], nll, poisson.EPS_PHOTONS, own._scale, False
        )

    for name, function in (
        ("cufft_forward", cufft_forward),
        ("own_forward", own_forward),
        ("own_rows", own_rows),
        ("own_columns", own_columns),
        ("own_columns_poisson", own_columns_poisson),
        ("cufft_gradient_chain", cufft_chain),
        ("own_gradient_chain", own_chain),
    ):
        work[...] = stack
        row[f"{name}_ms"] = milliseconds(function, chunks)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    rows = []
    for text in sys.argv[1:] or CASES:
        rows.append(case(text))
        cp.get_default_memory_pool().free_all_blocks()
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "transforms_probe.json"), "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
