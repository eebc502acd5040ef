// Fused ML_grad kernels for bluesky_ptycho (CuPy RawModule, C++17).
//
// Twins of the NumPy/CuPy array code in bluesky_ptycho/engine/operators.py; the
// GPU tests compare each kernel with its twin. Conventions:
//   * a stack has n frames of rows x cols pixels, frame-major, DC at the corner;
//   * frame j's window starts at object pixel corners[2j], corners[2j+1];
//   * the probe seen by frame j is the weighted sum of the probe shifted by
//     (tap_rows[k], tap_cols[k]) pixels with weights[n_taps j + k]
//     (out[r, c] = in[r - dy, c - dx], circular): the interpolated
//     sub-pixel shift of bluesky_ptycho/engine/shift.py;
//   * counts < 0 mark excluded pixels;
//   * reductions accumulate in double: block sums, then one atomicAdd per block.

#include <cupy/complex.cuh>

using index_t = long long;

// Geometry of a frame stack, shared by the stack kernels.
template <typename R>
struct Stack {
  const int* corners;    // (n, 2) window corners on the object
  const R* weights;      // (n, n_taps) interpolation weights
  const int* tap_rows;   // (n_taps,) whole-pixel shifts
  const int* tap_cols;
  int n_taps;
  index_t n_frames;
  int rows, cols, object_cols;
};

// Kernel parameters that describe a stack (CuPy passes scalars and pointers only).
#define STACK_PARAMS                                                                  \
  const int *corners, const R *weights, const int *tap_rows, const int *tap_cols,   \
      int n_taps, index_t n_frames, int rows, int cols, int object_cols
#define STACK_INIT \
  const Stack<R> s{corners, weights, tap_rows, tap_cols, n_taps, n_frames, rows, cols, object_cols}

template <typename R>
__device__ inline complex<R> shifted_probe(const complex<R>* probe, const Stack<R>& s, index_t j,
                                           int r, int c) {
  const R* w = s.weights + (index_t)s.n_taps * j;
  complex<R> v(0, 0);
  for (int k = 0; k < s.n_taps; ++k) {
    int rr = r - s.tap_rows[k], cc = c - s.tap_cols[k];
    rr += rr < 0 ? s.rows : (rr >= s.rows ? -s.rows : 0);  // taps shift by at most 2
    cc += cc < 0 ? s.cols : (cc >= s.cols ? -s.cols : 0);
    v += w[k] * probe[rr * s.cols + cc];
  }
  return v;
}

template <typename R>
__device__ inline index_t object_index(const Stack<R>& s, index_t j, int r, int c) {
  return (index_t)(s.corners[2 * j] + r) * s.object_cols + s.corners[2 * j + 1] + c;
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

template <typename R>
__device__ inline R pixel_nll(R intensity, R count) {
  if (count < 0) return 0;
  if (count == 0) return intensity;
  return intensity - count - count * log(intensity / count);
}

// grad = m (1 - n / I) a;  nll += sum m (I - n - n ln(I / n)).
template <typename R>
__global__ void poisson_gradient(const complex<R>* farfield, const R* counts,
                                 complex<R>* grad, double* nll, index_t size, R eps) {
  double local = 0;
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    const complex<R> a = farfield[i];
    const R n = counts[i];
    const R intensity = a.real() * a.real() + a.imag() * a.imag() + eps;
    local += pixel_nll(intensity, n);
    grad[i] = n < 0 ? complex<R>(0, 0) : (R(1) - n / intensity) * a;
  }
  block_accumulate(local, nll);
}

// out[0] += L'(tau), out[1] += L''(tau) along a(t) = a + t b + t^2 c (c may be null).
template <typename R>
__global__ void line_search_terms(const complex<R>* farfield, const complex<R>* linear,
                                  const complex<R>* quadratic, const R* counts, R tau,
                                  double* out, index_t size, R eps) {
  double slope = 0, curvature = 0;
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    const R n = counts[i];
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

// Object gradient and illumination (scattered with atomics); with `probe_terms`
// also conj(O_j) chi_j into `chi` (in place) and |O_j|^2 into `view_power`.
template <typename R>
__global__ void object_gradient(complex<R>* chi, const complex<R>* probe, const complex<R>* object,
                                STACK_PARAMS, complex<R>* grad_object, R* illumination,
                                R* view_power, int probe_terms) {
  STACK_INIT;
  const index_t frame_size = (index_t)s.rows * s.cols;
  const index_t size = s.n_frames * frame_size;
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    const index_t j = i / frame_size;
    const int p = (int)(i - j * frame_size), r = p / s.cols, c = p - r * s.cols;
    const complex<R> pj = shifted_probe(probe, s, j, r, c);
    const index_t k = object_index(s, j, r, c);
    const complex<R> x = chi[i];
    const complex<R> g = conj(pj) * x;
    R* target = reinterpret_cast<R*>(grad_object + k);
    atomicAdd(target, g.real());
    atomicAdd(target + 1, g.imag());
    atomicAdd(illumination + k, pj.real() * pj.real() + pj.imag() * pj.imag());
    if (probe_terms) {
      const complex<R> o = object[k];
      chi[i] = conj(o) * x;
      view_power[i] = o.real() * o.real() + o.imag() * o.imag();
    }
  }
}

// Exit waves P_j O_j, or the search-direction terms
//   linear = P_j dO_j + dP_j O_j,  quadratic = dP_j dO_j   (dprobe may be null:
//   then linear = P_j dO_j and quadratic is untouched).
template <typename R>
__global__ void exit_waves(const complex<R>* probe, const complex<R>* dprobe,
                           const complex<R>* object, const complex<R>* dobject, STACK_PARAMS,
                           complex<R>* linear, complex<R>* quadratic) {
  STACK_INIT;
  const index_t frame_size = (index_t)s.rows * s.cols;
  const index_t size = s.n_frames * frame_size;
  for (index_t i = blockIdx.x * (index_t)blockDim.x + threadIdx.x; i < size;
       i += (index_t)blockDim.x * gridDim.x) {
    const index_t j = i / frame_size;
    const int p = (int)(i - j * frame_size), r = p / s.cols, c = p - r * s.cols;
    const index_t k = object_index(s, j, r, c);
    const complex<R> pj = shifted_probe(probe, s, j, r, c);
    if (dobject == nullptr) {
      linear[i] = pj * object[k];
      continue;
    }
    const complex<R> dobj = dobject[k];
    complex<R> lin = pj * dobj;
    if (dprobe != nullptr) {
      const complex<R> dpj = shifted_probe(dprobe, s, j, r, c);
      lin += dpj * object[k];
      quadratic[i] = dpj * dobj;
    }
    linear[i] = lin;
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
