"""Probe: the Poisson gradient as a cuFFT JIT-LTO store callback (CuPy 14, ``cb_ver="jit"``).

For batched single-precision C2C transforms of stacked frames it times the
plain forward transform; the transform followed by the engine's
``poisson_gradient`` kernel and inverse transform (``CudaOperators.nll_and_chi``);
and the forward transform whose store callback makes the Poisson gradient from
the far field and the counts as it stores. ``MODE`` bits select the callback's
work: 1 reads the counts, 2 sums the NLL (warp-aggregated atomics over 1,024
slots), 4 stores ``a`` for every k-th frame. It also records the callback plan's
build time and the callback's gradient, ``a`` and NLL against the kernel's.
docs/benchmarks.md (twelfth session) has the outcome. From the repository root
on a GPU machine::

    python docs/gpu_cufft_callback_probe.py     # JSON to $OUT/probe.json
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import cupy as cp
import numpy as np
from cupy.cuda import cufft
from cupyx.scipy.fftpack import get_fft_plan

sys.path.insert(0, ".")
from bluesky_ptycho.engine import poisson  # noqa: E402
from bluesky_ptycho.engine.cuda_operators import CudaOperators  # noqa: E402

CALLBACK = r"""
struct PoissonStoreInfo {
  const unsigned short* counts; float2* farfield; double* nll;
  long long frame_size; long long sample_stride; long long sample_phase;
  float eps; float scale; int amplitude; int slots_mask;
};
__device__ inline float count_value(unsigned short c) { return c == 65535 ? -1.f : (float)c; }
__device__ void ptycho_poisson_store(void* out, unsigned long long i, float2 a, void* info_,
                                     void* shared) {
  const PoissonStoreInfo* info = (const PoissonStoreInfo*)info_;
#if MODE & 1
  const float n = count_value(info->counts[i]);
#else
  const float n = 3.f;
#endif
  const float intensity = a.x * a.x + a.y * a.y + info->eps;
  double nll = 0.0;
  float2 g = make_float2(0.f, 0.f);
  if (n >= 0.f) {
    nll = n == 0.f ? (double)intensity : (double)(intensity - n - n * logf(intensity / n));
    const float ratio = info->amplitude ? sqrtf(n / intensity) : n / intensity;
    const float w = info->scale * (1.f - ratio);
    g = make_float2(w * a.x, w * a.y);
  }
  ((float2*)out)[i] = g;
#if MODE & 4
  if (info->farfield != nullptr) {
    const long long frame = (long long)(i / (unsigned long long)info->frame_size);
    if (frame % info->sample_stride == info->sample_phase) info->farfield[i] = a;
  }
#endif
#if MODE & 2
  unsigned lane;
  asm("mov.u32 %0, %%laneid;" : "=r"(lane));
  const unsigned mask = __activemask();
  double* slot = info->nll + ((i >> 5) & (unsigned long long)info->slots_mask);
  if (mask == 0xffffffffu) {
    for (int off = 16; off > 0; off /= 2) nll += __shfl_xor_sync(0xffffffffu, nll, off);
    if (lane == 0) atomicAdd(slot, nll);
  } else {
    atomicAdd(slot, nll);
  }
#endif
}
"""
SLOTS = 1024
CASES = (((256, 256), 512, 8), ((128, 128), 2048, 2), ((128, 128), 512, 8))
MODES = (7, 5, 3, 6, 0)


def info_words(counts, farfield, nll, frame_size: int, stride: int, scale: float) -> np.ndarray:
    """PoissonStoreInfo packed into eight 64-bit words."""
    words = np.zeros(8, np.uint64)
    words[:3] = [counts.data.ptr, 0 if farfield is None else farfield.data.ptr, nll.data.ptr]
    words[3:6] = [frame_size, stride, 0]
    floats = np.array([poisson.EPS_PHOTONS, scale], np.float32).view(np.uint32)
    ints = np.array([0, SLOTS - 1], np.int32).view(np.uint32)
    words[6:8] = np.concatenate([floats, ints]).view(np.uint64)
    return words


def timed_ms(fn, reps: int = 20) -> float:
    fn()
    cp.cuda.Device().synchronize()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / reps


def run(shape: tuple[int, int], chunk: int, chunks: int, mode: int) -> dict:
    rows, cols = shape
    frame_size = rows * cols
    info = cp.zeros(8, cp.uint64)
    template = cp.empty((chunk, rows, cols), cp.complex64)
    started = time.perf_counter()
    with cp.fft.config.set_cufft_callbacks(
        cb_store=f"#define MODE {mode}\n{CALLBACK}",
        cb_store_name="ptycho_poisson_store",
        cb_store_data=info.data,
        cb_ver="jit",
    ):
        callback_plan = get_fft_plan(template, axes=(1, 2), value_type="C2C")
    cp.cuda.Device().synchronize()
    result = {"plan_s": time.perf_counter() - started}
    plan = get_fft_plan(template, axes=(1, 2), value_type="C2C")
    rng = cp.random.default_rng(0)
    n = chunk * chunks
    waves = rng.standard_normal((n, rows, cols), dtype=cp.float32) * (1 + 1j)
    waves = (waves * np.float32(30 / np.sqrt(frame_size))).astype(cp.complex64)
    farfields = cp.fft.fft2(waves).astype(cp.complex64)  # what the unnormalised transform gives
    counts = rng.poisson(cp.abs(farfields) ** 2).astype(cp.float32)
    counts[:, 0, :3] = -1
    counts = cp.where(counts < 0, 65535, cp.minimum(counts, 65534)).astype(cp.uint16)
    ops = CudaOperators(cp, shape, "float32", "cubic")
    scale = float(1 / np.sqrt(frame_size))
    parts = [slice(c * chunk, (c + 1) * chunk) for c in range(chunks)]
    want_chi, want_nll = cp.empty_like(waves), cp.zeros(1)
    for part in parts:  # the engine's kernel, without its inverse transform's effect
        grad = want_chi[part]
        ops.nll_and_chi(farfields[part].copy(), counts[part], grad, total=want_nll)
        ops._forward(grad)  # undo the kernel's unnormalised inverse transform
        grad /= frame_size
    slots, stored, got = cp.zeros(SLOTS), cp.zeros_like(waves), cp.empty_like(waves)
    work = cp.empty_like(template)
    for part in parts:
        work[...] = waves[part]
        info.set(info_words(counts[part], stored[part], slots, frame_size, 1, scale))
        callback_plan.fft(work, work, cufft.CUFFT_FORWARD)
        got[part] = work

    def relative_error(value, want) -> float:
        return float(cp.linalg.norm(value - want) / cp.linalg.norm(want))

    if mode & 1:
        result["chi_relative_error"] = relative_error(got, want_chi)
    if mode & 4:
        result["a_relative_error"] = relative_error(stored, farfields)
    if mode & 3 == 3:
        result["nll_callback"], result["nll_kernel"] = float(slots.sum()), float(want_nll[0])
    buffers = [waves[part].copy() for part in parts]
    gradients = [cp.empty_like(b) for b in buffers]

    def plain():
        for buffer in buffers:
            plan.fft(buffer, buffer, cufft.CUFFT_FORWARD)

    def plain_and_kernel():
        for part, buffer, grad in zip(parts, buffers, gradients, strict=True):
            plan.fft(buffer, buffer, cufft.CUFFT_FORWARD)
            ops.nll_and_chi(buffer, counts[part], grad)

    copy_words = cp.ElementwiseKernel("uint64 x", "uint64 y", "y = x", "copy_words")

    def with_callback(stride: int):
        words = [
            cp.asarray(info_words(counts[p], None if stride == 0 else stored[p], slots,
                                  frame_size, max(stride, 1), scale))
            for p in parts
        ]  # fmt: skip

        def fn():
            for buffer, word in zip(buffers, words, strict=True):
                copy_words(word, info)
                callback_plan.fft(buffer, buffer, cufft.CUFFT_FORWARD)

        return fn

    result["ms_plain_fft"] = timed_ms(plain)
    result["ms_fft_kernel_and_inverse"] = timed_ms(plain_and_kernel)
    for stride in (1, 8, 0) if mode == 7 else (8,):
        result[f"ms_fft_callback_store_a_every_{stride}"] = timed_ms(with_callback(stride))
    return result


def main() -> None:
    results = {"cufft_version": cufft.getVersion(), "cupy": cp.__version__}
    for shape, chunk, chunks in CASES:
        for mode in MODES:
            key = f"{shape[0]}x{chunk}x{chunks}-uint16-mode{mode}"
            try:
                results[key] = run(shape, chunk, chunks, mode)
            except Exception as exc:  # a failed plan or launch is a result too
                traceback.print_exc()
                results[key] = repr(exc)
            print(key, json.dumps(results[key], indent=1), flush=True)
    with open(os.path.join(os.environ.get("OUT", "."), "probe.json"), "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
