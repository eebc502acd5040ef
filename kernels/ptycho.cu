// Fused ML_grad kernels for bluesky_ptycho (CuPy RawModule, C++17).
//
// Twins of the NumPy/CuPy array code in bluesky_ptycho/engine/operators.py; the
// GPU tests compare each kernel (with the transforms around it) with its twin.
// Conventions:
//   * a stack has n frames of rows x cols pixels, frame-major, DC at the corner;
//   * frame j's window starts at object pixel corners[2j], corners[2j+1];
//   * frame j's sub-pixel-shifted probe P_j = sum_k w_jk T_k is made in registers
//     from the K whole-pixel-shifted taps T_k and weights w (engine/shift.py);
//   * counts are either real (< 0 marks an excluded pixel) or uint16 with
//     COUNT_EXCLUDED (65535) marking an excluded pixel (engine/counts.py);
//   * `scale` folds the unitary FFT's 1/sqrt(rows cols) into the element-wise
//     pass next to an unnormalised cuFFT transform (no separate scaling pass);
//   * reductions accumulate in double: block sums, then one atomicAdd per block;
//   * the object gradient (complex) and the illumination (real) are scattered
//     into two object-sized arrays, so they need no copying out afterwards; with
//     PTYCHO_VECTOR_ATOMICS (sm_90+, single precision) one 8-byte atomic adds a
//     gradient pixel, and one 16-byte atomic the probe-gradient taps' interleaved
//     (re, im, power, unused) sums.

#include <cupy/complex.cuh>

using index_t = long long;

#define COUNT_EXCLUDED 65535

// Counts as real photons, negative where excluded.
template <typename R>
__device__ inline R count_value(R count) { return count; }
template <typename R>
__device__ inline R count_value(unsigned short count) {
  return count == COUNT_EXCLUDED ? R(-1) : R(count);
}

// Sum `value` over the block; thread 0 adds it to `out`.
__device__ inline void block_accumulate(double value, double* out) {
  __shared__ double partial[32];
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_down_sync(0xffffffff, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < (blockDim.x + 31) / 32 ? partial[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2)
      value += __shfl_down_sync(0xffffffff, value, offset);
    if (lane == 0) atomicAdd(out, value);
  }
}

// acc[0..2] += (a, b, c): one vector atomic where the hardware has it.
__device__ inline void add3(float* acc, float a, float b, float c) {
#ifdef PTYCHO_VECTOR_ATOMICS
  float4 value;
  value.x = a;
  value.y = b;
  value.z = c;
  value.w = 0.f;
  atomicAdd(reinterpret_cast<float4*>(acc), value);
#else
  atomicAdd(acc, a);
  atomicAdd(acc + 1, b);
  atomicAdd(acc + 2, c);
#endif
}
__device__ inline void add3(double* acc, double a, double b, double c) {
  atomicAdd(acc, a);
  atomicAdd(acc + 1, b);
  atomicAdd(acc + 2, c);
}

// *acc += value: one vector atomic where the hardware has it.
__device__ inline void add2(complex<float>* acc, complex<float> value) {
#ifdef PTYCHO_VECTOR_ATOMICS
  atomicAdd(reinterpret_cast<float2*>(acc), make_float2(value.real(), value.imag()));
#else
  atomicAdd(reinterpret_cast<float*>(acc), value.real());
  atomicAdd(reinterpret_cast<float*>(acc) + 1, value.imag());
#endif
}
__device__ inline void add2(complex<double>* acc, complex<double> value) {
  atomicAdd(reinterpret_cast<double*>(acc), value.real());
  atomicAdd(reinterpret_cast<double*>(acc) + 1, value.imag());
}

template <typename R>
__device__ inline R pixel_nll(R intensity, R count) {
  if (count < 0) return 0;
  if (count == 0) return intensity;
  return intensity - count - count * log(intensity / count);
}

// A far-field pixel's gradient scale m (1 - n / I) a, or with `amplitude`
// scale m (1 - sqrt(n / I)) a (engine/poisson.py), m = 0 where excluded (n < 0);
// its NLL m (I - n - n ln(I / n)) (Poisson's either way) added to `nll`.
template <typename R>
__device__ inline complex<R> poisson_pixel(complex<R> a, R n, R eps, R scale, int amplitude,
                                           double& nll) {
  const R intensity = a.real() * a.real() + a.imag() * a.imag() + eps;
  nll += pixel_nll(intensity, n);
  const R ratio = amplitude ? sqrt(n / intensity) : n / intensity;
  return n < 0 ? complex<R>(0, 0) : (scale * (R(1) - ratio)) * a;
}

// grad = poisson_pixel(a) of each pixel, nll += the stack's NLL.
// With `linear` non-null the previous step is taken first, in the same pass:
// a += tau linear + tau^2 quadratic (quadratic may be null), written back, with tau
// read from the device (`step[0]`, the line search's; unread without `linear`). `grad`
// may be `linear` itself (each pixel is read before it is written).
template <typename R, typename C>
__global__ void poisson_gradient(complex<R>* farfield, const C* counts, const complex<R>* linear,
                                 const complex<R>* quadratic, const double* step,
                                 complex<R>* grad, double* nll, index_t size, R eps, R scale,
                                 int amplitude) {
  const R tau = linear != nullptr ? R(step[0]) : R(0);
  double local = 0;
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    complex<R> a = farfield[i];
    if (linear != nullptr) {
      a += tau * linear[i];
      if (quadratic != nullptr) a += (tau * tau) * quadratic[i];
      farfield[i] = a;
    }
    grad[i] = poisson_pixel(a, count_value<R>(counts[i]), eps, scale, amplitude, local);
  }
  block_accumulate(local, nll);
}

// 1 / x: the fast hardware reciprocal in single precision (2 ulp), exact in double.
__device__ inline float reciprocal(float x) { return __fdividef(1.f, x); }
__device__ inline double reciprocal(double x) { return 1.0 / x; }

// 1 / sqrt(x): the hardware approximation in single precision, exact in double.
__device__ inline float reciprocal_sqrt(float x) { return rsqrtf(x); }
__device__ inline double reciprocal_sqrt(double x) { return 1.0 / sqrt(x); }

// At each of the LINE_SEARCH_SAMPLES steps t_s (set by the host to
// len(poisson.LINE_SEARCH_SAMPLES); `steps` on the device, in double: the line
// search's state): out[2 s] += L'(t_s), out[2 s + 1] += L''(t_s)
// along a(t) = a + t b + t^2 c (c may be null): one read of the stacks for all steps.
// L is Poisson's or, with `amplitude`, the amplitude model's (engine/poisson.py:
// weight 1 - sqrt(n / I), curvature coefficient sqrt(n) / (2 I^1.5)).
// A thread sums its grid-stride share (a few hundred pixels) in the real type,
// then the block sums in double. The stacks may be views of every k-th frame of
// larger ones: frame f of the far fields, of the direction's (linear and quadratic)
// and of the counts starts at pixel f * stride * frame_size, each with its own
// stride in frames (1: contiguous); `size` counts the pixels of the frames viewed.
template <typename R, typename C>
__global__ void line_search_terms(const complex<R>* __restrict__ farfield,
                                  const complex<R>* __restrict__ linear,
                                  const complex<R>* __restrict__ quadratic,
                                  const C* __restrict__ counts, const double* __restrict__ steps,
                                  double* out, index_t size, index_t frame_size,
                                  int farfield_stride, int direction_stride, int counts_stride,
                                  R eps, int amplitude) {
  R tau[LINE_SEARCH_SAMPLES], slope[LINE_SEARCH_SAMPLES], curvature[LINE_SEARCH_SAMPLES];
#pragma unroll
  for (int s = 0; s < LINE_SEARCH_SAMPLES; ++s) {
    tau[s] = R(steps[s]);
    slope[s] = curvature[s] = 0;
  }
  const bool strided = farfield_stride != 1 || direction_stride != 1 || counts_stride != 1;
#pragma unroll 2
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    index_t ia = i, ib = i, in = i;
    if (strided) {
      const index_t f = i / frame_size, p = i - f * frame_size;
      ia = f * farfield_stride * frame_size + p;
      ib = f * direction_stride * frame_size + p;
      in = f * counts_stride * frame_size + p;
    }
    const R n = count_value<R>(counts[in]);
    if (n < 0) continue;
    const R root = sqrt(n);  // amplitude model only
    const complex<R> a = farfield[ia], b = linear[ib];
    const complex<R> c = quadratic == nullptr ? complex<R>(0, 0) : quadratic[ib];
#pragma unroll
    for (int s = 0; s < LINE_SEARCH_SAMPLES; ++s) {
      const complex<R> model = a + tau[s] * b + (tau[s] * tau[s]) * c;
      const complex<R> velocity = b + (R(2) * tau[s]) * c;
      const R intensity = model.real() * model.real() + model.imag() * model.imag() + eps;
      const R d1 = R(2) * (model.real() * velocity.real() + model.imag() * velocity.imag());
      const R d2 = R(2) * (velocity.real() * velocity.real() + velocity.imag() * velocity.imag()) +
                   R(4) * (model.real() * c.real() + model.imag() * c.imag());
      R ratio, second;
      if (amplitude) {
        const R inverse_root = reciprocal_sqrt(intensity);
        ratio = root * inverse_root;
        second = R(0.5) * ratio * inverse_root * inverse_root;
      } else {
        const R inverse = reciprocal(intensity);
        ratio = n * inverse;
        second = ratio * inverse;
      }
      slope[s] += (R(1) - ratio) * d1;
      curvature[s] += (R(1) - ratio) * d2 + second * d1 * d1;
    }
  }
#pragma unroll
  for (int s = 0; s < LINE_SEARCH_SAMPLES; ++s) {
    block_accumulate(slope[s], out + 2 * s);
    __syncthreads();
    block_accumulate(curvature[s], out + 2 * s + 1);
    __syncthreads();
  }
}

// Frame-loop kernels: LANES adjacent threads of a warp (template argument, dividing
// K and 32) own frame pixel p = (blockIdx.x blockDim.x + threadIdx.x) / LANES, and
// blockIdx.y a group of `frames_per_block` (<= MAX_BLOCK_FRAMES) consecutive frames.
// The K shifted probe taps T_k(p) (engine/shift.py tap_stack, (K, rows, cols)) are
// loaded once into registers, K / LANES per lane, and each frame's sub-pixel-shifted
// probe is made there, its lanes' partial sums added with warp shuffles:
//   P_j(p) = sum_k weights[j K + k] T_k(p)
// so no (n, rows, cols) probe stack is ever written or read. Splitting the taps over
// lanes divides a thread's registers for them (16 complex taps, 16 tap sums), so more
// threads are in flight to hide the reads' latency. The group's window offsets and
// weights are staged in shared memory first, and each thread reads the next frame's
// window pixels while it works on this one. Every lane of a warp takes part in the
// shuffles (lanes past the frame's last pixel read and write nothing).

// The sum of `value` over the LANES lanes of a pixel (every lane gets it).
template <int LANES, typename R>
__device__ inline complex<R> lane_sum(complex<R> value) {
#pragma unroll
  for (int offset = 1; offset < LANES; offset *= 2) {
    value += complex<R>(__shfl_xor_sync(0xffffffff, value.real(), offset),
                        __shfl_xor_sync(0xffffffff, value.imag(), offset));
  }
  return value;
}

template <typename R, int K>
__device__ inline void load_taps(const complex<R>* __restrict__ taps, index_t frame_size, int p,
                                 complex<R> (&t)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) t[k] = taps[k * frame_size + p];
}

template <typename R, int K>
__device__ inline complex<R> shifted(const complex<R> (&t)[K], const R* w) {
  complex<R> value(0, 0);
#pragma unroll
  for (int k = 0; k < K; ++k) value += w[k] * t[k];
  return value;
}

// The block's frames: `offsets[f]`, the object pixel of window [0, 0] of its f-th
// frame, and `block_weights[f K + k]`; returns how many frames the block has. Every
// thread of the block must call it (it ends with a barrier).
template <typename R, int K>
__device__ inline int stage_frames(const int* __restrict__ corners, const R* __restrict__ weights,
                                   int n_frames, int frames_per_block, int object_cols,
                                   index_t* offsets, R* block_weights) {
  const int first = blockIdx.y * frames_per_block;
  const int count = min(n_frames - first, frames_per_block);
  for (int f = threadIdx.x; f < count; f += blockDim.x)
    offsets[f] = (index_t)corners[2 * (first + f)] * object_cols + corners[2 * (first + f) + 1];
  for (int i = threadIdx.x; i < count * K; i += blockDim.x)
    block_weights[i] = weights[(index_t)first * K + i];
  __syncthreads();
  return count;
}

// scale P_j O_j (dobject null), or the search-direction terms
//   linear = scale (P_j dO_j + dP_j O_j),  quadratic = scale dP_j dO_j  (dtaps may be
//   null: then linear = scale P_j dO_j and quadratic is untouched).
// Frames first_frame.. of the geometry; outputs start at that frame.
template <typename R, int K, int LANES>
__global__ void waves(const complex<R>* __restrict__ taps, const complex<R>* __restrict__ dtaps,
                      const R* __restrict__ weights, const complex<R>* __restrict__ object,
                      const complex<R>* __restrict__ dobject, const int* __restrict__ corners,
                      int n_frames, int rows, int cols, int object_cols, int frames_per_block,
                      R scale, complex<R>* __restrict__ linear,
                      complex<R>* __restrict__ quadratic) {
  constexpr int KL = K / LANES;  // taps a lane holds
  __shared__ index_t offsets[MAX_BLOCK_FRAMES];
  __shared__ R block_weights[MAX_BLOCK_FRAMES * K];
  const int count = stage_frames<R, K>(corners, weights, n_frames, frames_per_block,
                                       object_cols, offsets, block_weights);
  const index_t frame_size = (index_t)rows * cols;
  const int lane = threadIdx.x % LANES;
  const int p = (blockIdx.x * blockDim.x + threadIdx.x) / LANES;
  const bool active = p < frame_size;
  const int r = active ? p / cols : 0;
  const index_t local = (index_t)r * object_cols + (active ? p - r * cols : 0);
  const bool direction = dobject != nullptr, probe_moves = dtaps != nullptr;
  const bool reads_object = active && (!direction || probe_moves);
  const bool reads_direction = active && direction;
  complex<R> t[KL], dt[KL];
  if (active) load_taps<R, KL>(taps + lane * KL * frame_size, frame_size, p, t);
  if (active && probe_moves) load_taps<R, KL>(dtaps + lane * KL * frame_size, frame_size, p, dt);
  complex<R> o_next(0, 0), d_next(0, 0);  // the next frame's window pixels
  if (reads_object) o_next = object[offsets[0] + local];
  if (reads_direction) d_next = dobject[offsets[0] + local];
  const index_t first = (index_t)blockIdx.y * frames_per_block;
  for (int f = 0; f < count; ++f) {
    const complex<R> o = o_next, d = d_next;
    if (f + 1 < count) {
      const index_t k = offsets[f + 1] + local;
      if (reads_object) o_next = object[k];
      if (reads_direction) d_next = dobject[k];
    }
    const R* w = block_weights + f * K + lane * KL;
    const index_t i = (first + f) * frame_size + p;
    const complex<R> pj = lane_sum<LANES>(shifted<R, KL>(t, w));
    if (!direction) {
      if (active && lane == 0) linear[i] = scale * (pj * o);
      continue;
    }
    complex<R> lin = pj * d;
    if (probe_moves) {
      const complex<R> dpj = lane_sum<LANES>(shifted<R, KL>(dt, w));
      lin += dpj * o;
      if (active && lane == LANES - 1) quadratic[i] = scale * (dpj * d);
    }
    if (active && lane == 0) linear[i] = scale * lin;
  }
}

// Object gradient into `grad` and illumination into `illumination`; with
// `tap_acc` non-null also this block's per-tap probe-gradient sums, added at its end
// into tap_acc (4 reals per tap pixel: re, im of the gradient, power, unused):
//   sum_j w_jk conj(O_j(p)) chi_j(p),  sum_j w_jk |O_j(p)|^2
// (combined and shifted back on the host side), each lane its own taps' sums. With
// `chi` null only the illumination is accumulated.
template <typename R, int K, int LANES>
__global__ void object_gradient(const complex<R>* __restrict__ chi,
                                const complex<R>* __restrict__ taps,
                                const R* __restrict__ weights,
                                const complex<R>* __restrict__ object,
                                const int* __restrict__ corners, int n_frames, int rows, int cols,
                                int object_cols, int frames_per_block, complex<R>* grad,
                                R* illumination, R* tap_acc) {
  constexpr int KL = K / LANES;  // taps a lane holds
  __shared__ index_t offsets[MAX_BLOCK_FRAMES];
  __shared__ R block_weights[MAX_BLOCK_FRAMES * K];
  const int count = stage_frames<R, K>(corners, weights, n_frames, frames_per_block,
                                       object_cols, offsets, block_weights);
  const index_t frame_size = (index_t)rows * cols;
  const int lane = threadIdx.x % LANES;
  const int p = (blockIdx.x * blockDim.x + threadIdx.x) / LANES;
  const bool active = p < frame_size;
  const int r = active ? p / cols : 0;
  const index_t local = (index_t)r * object_cols + (active ? p - r * cols : 0);
  const bool with_chi = chi != nullptr, probe_terms = with_chi && tap_acc != nullptr;
  // a pixel's lanes share its atomics: the illumination on the first lane, the
  // gradient on the last (one thread when LANES is 1)
  const bool adds_illumination = active && lane == 0;
  const bool adds_gradient = active && lane == LANES - 1;
  complex<R> t[KL], gsum[KL];
  R psum[KL];
  if (active) load_taps<R, KL>(taps + lane * KL * frame_size, frame_size, p, t);
#pragma unroll
  for (int k = 0; k < KL; ++k) {
    gsum[k] = complex<R>(0, 0);
    psum[k] = 0;
  }
  const index_t first = (index_t)blockIdx.y * frames_per_block;
  complex<R> x_next(0, 0), o_next(0, 0);  // the next frame's chi and window pixels
  if (active && with_chi) x_next = chi[first * frame_size + p];
  if (active && probe_terms) o_next = object[offsets[0] + local];
  for (int f = 0; f < count; ++f) {
    const complex<R> x = x_next, o = o_next;
    if (active && f + 1 < count) {
      if (with_chi) x_next = chi[(first + f + 1) * frame_size + p];
      if (probe_terms) o_next = object[offsets[f + 1] + local];
    }
    const R* w = block_weights + f * K + lane * KL;
    const index_t k_obj = offsets[f] + local;
    const complex<R> pj = lane_sum<LANES>(shifted<R, KL>(t, w));
    if (adds_illumination)
      atomicAdd(illumination + k_obj, pj.real() * pj.real() + pj.imag() * pj.imag());
    if (!with_chi) continue;
    if (adds_gradient) add2(grad + k_obj, conj(pj) * x);
    if (probe_terms) {
      const complex<R> h = conj(o) * x;
      const R view_power = o.real() * o.real() + o.imag() * o.imag();
#pragma unroll
      for (int k = 0; k < KL; ++k) {
        gsum[k] += w[k] * h;
        psum[k] += w[k] * view_power;
      }
    }
  }
  if (!probe_terms || !active) return;
#pragma unroll
  for (int k = 0; k < KL; ++k)
    add3(tap_acc + 4 * ((lane * KL + k) * frame_size + p), gsum[k].real(), gsum[k].imag(),
         psum[k]);
}

// The probe's K whole-pixel shifts (engine/shift.py tap_stack), circular:
//   out[k, r, c] = probe[r - shifts[2k], c - shifts[2k + 1]]   (modulo rows, cols)
template <typename R>
__global__ void shift_taps(const complex<R>* probe, const int* shifts, int n_taps, int rows,
                           int cols, complex<R>* out) {
  const index_t frame_size = (index_t)rows * cols, size = n_taps * frame_size;
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    const int k = i / frame_size, p = i - k * frame_size, r = p / cols, c = p - r * cols;
    const int source_r = ((r - shifts[2 * k]) % rows + rows) % rows;
    const int source_c = ((c - shifts[2 * k + 1]) % cols + cols) % cols;
    out[i] = probe[source_r * cols + source_c];
  }
}

// The adjoint's outer sum (engine/shift.py combine_taps) of the probe-gradient tap
// accumulator of object_gradient ((K, rows, cols, 4): re, im, power, unused):
//   grad[r, c] = sum_k (re, im)[k, r + shifts[2k], c + shifts[2k + 1]],  power likewise.
template <typename R>
__global__ void combine_taps(const R* tap_acc, const int* shifts, int n_taps, int rows,
                             int cols, complex<R>* grad, R* power) {
  const index_t frame_size = (index_t)rows * cols;
  for (index_t p = blockIdx.x * (index_t)blockDim.x + threadIdx.x; p < frame_size;
       p += (index_t)blockDim.x * gridDim.x) {
    const int r = p / cols, c = p - r * cols;
    R re = 0, im = 0, sum = 0;
    for (int k = 0; k < n_taps; ++k) {
      const int source_r = (r + shifts[2 * k] + rows) % rows;
      const int source_c = (c + shifts[2 * k + 1] + cols) % cols;
      const R* acc = tap_acc + 4 * (k * frame_size + source_r * cols + source_c);
      re += acc[0];
      im += acc[1];
      sum += acc[2];
    }
    grad[p] = complex<R>(re, im);
    power[p] = sum;
  }
}

// a += tau b + tau^2 c (c may be null), tau = step[0] read from the device.
template <typename R>
__global__ void advance(complex<R>* farfield, const complex<R>* linear,
                        const complex<R>* quadratic, const double* step, index_t size) {
  const R tau = R(step[0]);
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    complex<R> a = farfield[i] + tau * linear[i];
    if (quadratic != nullptr) a += (tau * tau) * quadratic[i];
    farfield[i] = a;
  }
}
