// Fused ML_grad kernels for bluesky_ptycho (CuPy RawModule, C++17).
//
// Twins of the NumPy/CuPy array code in bluesky_ptycho/engine/operators.py; the
// GPU tests compare each kernel (with the transforms around it) with its twin.
// Conventions:
//   * a stack has n frames of rows x cols pixels, frame-major, DC at the corner;
//   * frame j's window starts at object pixel corners[2j], corners[2j+1];
//   * probes are stacks too: frame j's sub-pixel-shifted probe P_j, made by
//     bluesky_ptycho/engine/shift.py (one matrix product per chunk of frames);
//   * counts are either real (< 0 marks an excluded pixel) or uint16 with
//     COUNT_EXCLUDED (65535) marking an excluded pixel (engine/counts.py);
//   * `scale` folds the unitary FFT's 1/sqrt(rows cols) into the element-wise
//     pass next to an unnormalised cuFFT transform (no separate scaling pass);
//   * reductions accumulate in double: block sums, then one atomicAdd per block;
//   * the object gradient and illumination are scattered into one interleaved
//     accumulator (re, im, illumination, unused) per object pixel: with
//     PTYCHO_VECTOR_ATOMICS (sm_90+, single precision) one 16-byte atomic adds
//     all three.

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

// Object index seen by stack element i (frame j, pixel (r, c)).
__device__ inline index_t object_index(index_t i, const int* corners, int rows, int cols,
                                       int object_cols) {
  const index_t frame_size = (index_t)rows * cols;
  const index_t j = i / frame_size;
  const int p = (int)(i - j * frame_size), r = p / cols, c = p - r * cols;
  return (index_t)(corners[2 * j] + r) * object_cols + corners[2 * j + 1] + c;
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

template <typename R>
__device__ inline R pixel_nll(R intensity, R count) {
  if (count < 0) return 0;
  if (count == 0) return intensity;
  return intensity - count - count * log(intensity / count);
}

// grad = scale m (1 - n / I) a;  nll += sum m (I - n - n ln(I / n)).
template <typename R, typename C>
__global__ void poisson_gradient(const complex<R>* farfield, const C* counts, complex<R>* grad,
                                 double* nll, index_t size, R eps, R scale) {
  double local = 0;
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    const complex<R> a = farfield[i];
    const R n = count_value<R>(counts[i]);
    const R intensity = a.real() * a.real() + a.imag() * a.imag() + eps;
    local += pixel_nll(intensity, n);
    grad[i] = n < 0 ? complex<R>(0, 0) : (scale * (R(1) - n / intensity)) * a;
  }
  block_accumulate(local, nll);
}

// out[0] += L'(tau), out[1] += L''(tau) along a(t) = a + t b + t^2 c (c may be null).
template <typename R, typename C>
__global__ void line_search_terms(const complex<R>* farfield, const complex<R>* linear,
                                  const complex<R>* quadratic, const C* counts, R tau,
                                  double* out, index_t size, R eps) {
  double slope = 0, curvature = 0;
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    const R n = count_value<R>(counts[i]);
    if (n < 0) continue;
    complex<R> model = farfield[i] + tau * linear[i];
    complex<R> velocity = linear[i];
    R d2 = 0;
    if (quadratic != nullptr) {
      const complex<R> c = quadratic[i];
      model += (tau * tau) * c;
      velocity += (R(2) * tau) * c;
      d2 = R(4) * (model.real() * c.real() + model.imag() * c.imag());
    }
    const R intensity = model.real() * model.real() + model.imag() * model.imag() + eps;
    const R d1 = R(2) * (model.real() * velocity.real() + model.imag() * velocity.imag());
    d2 += R(2) * (velocity.real() * velocity.real() + velocity.imag() * velocity.imag());
    const R ratio = n / intensity;
    slope += (double)((R(1) - ratio) * d1);
    curvature += (double)((R(1) - ratio) * d2 + ratio / intensity * d1 * d1);
  }
  block_accumulate(slope, out);
  __syncthreads();
  block_accumulate(curvature, out + 1);
}

// Object gradient and illumination into `acc` (4 reals per object pixel); with
// `view_power` non-null also conj(O_j) chi_j into `chi` (in place) and |O_j|^2
// into `view_power`. With `chi` null only the illumination is accumulated.
template <typename R>
__global__ void object_gradient(complex<R>* chi, const complex<R>* probes, const complex<R>* object,
                                const int* corners, index_t size, int rows, int cols,
                                int object_cols, R* acc, R* view_power) {
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    const index_t k = object_index(i, corners, rows, cols, object_cols);
    const complex<R> pj = probes[i];
    const R power = pj.real() * pj.real() + pj.imag() * pj.imag();
    if (chi == nullptr) {
      atomicAdd(acc + 4 * k + 2, power);
      continue;
    }
    const complex<R> x = chi[i];
    const complex<R> g = conj(pj) * x;
    add3(acc + 4 * k, g.real(), g.imag(), power);
    if (view_power != nullptr) {
      const complex<R> o = object[k];
      chi[i] = conj(o) * x;
      view_power[i] = o.real() * o.real() + o.imag() * o.imag();
    }
  }
}

// scale P_j O_j (dobject null), or the search-direction terms
//   linear = scale (P_j dO_j + dP_j O_j),  quadratic = scale dP_j dO_j  (dprobes may be
//   null: then linear = scale P_j dO_j and quadratic is untouched).
template <typename R>
__global__ void exit_waves(const complex<R>* probes, const complex<R>* dprobes,
                           const complex<R>* object, const complex<R>* dobject, const int* corners,
                           index_t size, int rows, int cols, int object_cols, R scale,
                           complex<R>* linear, complex<R>* quadratic) {
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    const index_t k = object_index(i, corners, rows, cols, object_cols);
    const complex<R> pj = probes[i];
    if (dobject == nullptr) {
      linear[i] = scale * (pj * object[k]);
      continue;
    }
    const complex<R> dobj = dobject[k];
    complex<R> lin = pj * dobj;
    if (dprobes != nullptr) {
      const complex<R> dpj = dprobes[i];
      lin += dpj * object[k];
      quadratic[i] = scale * (dpj * dobj);
    }
    linear[i] = scale * lin;
  }
}

// a += tau b + tau^2 c (c may be null).
template <typename R>
__global__ void advance(complex<R>* farfield, const complex<R>* linear,
                        const complex<R>* quadratic, R tau, index_t size) {
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    complex<R> a = farfield[i] + tau * linear[i];
    if (quadratic != nullptr) a += (tau * tau) * quadratic[i];
    farfield[i] = a;
  }
}
