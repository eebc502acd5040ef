// Frame transforms of our own (engine/transforms.py), compiled after ptycho.cu in the
// same module (they use its count_value, poisson_pixel and block_accumulate).
//
// Unnormalised 2-D DFTs of square N x N single-precision frames, N = A B, as one pass
// along the rows and one along the columns; each 1-D transform is the four-step
// (Cooley-Tukey) split of N into A and B, with n = B n1 + n2 and k = k1 + A k2:
//   X[k1 + A k2] = sum_n2 W_B^(n2 k2) W_N^(n2 k1) sum_n1 W_A^(n1 k1) x[B n1 + n2]
//   x[B n1 + n2] = sum_k1 W_A^-(n1 k1) W_N^-(n2 k1) sum_k2 W_B^-(n2 k2) X[k1 + A k2]
// with W_M = exp(-2 pi i / M) (cuFFT's and NumPy's forward sign). The A- and B-point
// DFTs are radix-2 in registers (A, B <= 32); the W_N twiddles come from a table
// `twiddle[m] = W_N^m` (made in double on the host); the exchange between the two
// steps goes through shared memory, padded so that a half-warp's accesses within one
// line fall on distinct banks (the column kernels at 512, 8 columns a block, have two
// lines in a half-warp: two-way conflicts).
//
// `columns_poisson` fuses the column pass of the forward transform, the Poisson
// gradient of ptycho.cu's `poisson_gradient` and the column pass of the inverse
// transform: a thread block holds C whole columns of a frame, and a thread the B far
// field pixels k1 + A k2 of one column after the forward step, which is where the
// inverse transform's first step starts. So the gradient pass reads and writes the
// frame stack once between the two row passes, instead of a transform's passes, the
// gradient kernel's and the inverse's.

// cos(2 pi m / 32) (folds to a literal for a constant m).
__device__ __forceinline__ float cos32(int m) {
  constexpr float quarter[9] = {1.0f,         0.980785280f, 0.923879533f,
                                0.831469612f, 0.707106781f, 0.555570233f,
                                0.382683432f, 0.195090322f, 0.0f};
  m &= 31;
  const int q = m > 16 ? 32 - m : m;
  return q <= 8 ? quarter[q] : -quarter[16 - q];
}

// v <- W_32^t v (forward) or W_32^-t v; the trivial factors without arithmetic.
template <bool INVERSE>
__device__ __forceinline__ complex<float> rotate32(complex<float> v, int t) {
  if (t == 0) return v;
  if (t == 8) return INVERSE ? complex<float>(-v.imag(), v.real()) : complex<float>(v.imag(), -v.real());
  const float c = cos32(t), s = INVERSE ? cos32(t + 24) : -cos32(t + 24);  // sin = cos(. - 8)
  return complex<float>(c * v.real() - s * v.imag(), c * v.imag() + s * v.real());
}

__host__ __device__ constexpr int log2_of(int n) { return n > 1 ? 1 + log2_of(n / 2) : 0; }

__host__ __device__ constexpr int bit_reverse(int i, int bits) {
  return bits == 0 ? 0 : ((i & 1) << (bits - 1)) | bit_reverse(i >> 1, bits - 1);
}

// In-register unnormalised M-point DFT (M a power of two <= 32), radix-2 decimation in
// time; every index is a compile-time constant once the loops are unrolled.
template <int M, bool INVERSE>
__device__ __forceinline__ void dft(complex<float> (&v)[M]) {
  constexpr int BITS = log2_of(M);
  complex<float> u[M];
#pragma unroll
  for (int i = 0; i < M; ++i) u[i] = v[bit_reverse(i, BITS)];
#pragma unroll
  for (int stage = 0; stage < BITS; ++stage) {
    const int half = 1 << stage;
#pragma unroll
    for (int pair = 0; pair < M / 2; ++pair) {
      const int m = pair % half, top = (pair / half) * 2 * half + m;
      const complex<float> x = rotate32<INVERSE>(u[top + half], m * (16 >> stage));
      u[top + half] = u[top] - x;
      u[top] = u[top] + x;
    }
  }
#pragma unroll
  for (int i = 0; i < M; ++i) v[i] = u[i];
}

// v W_N^m (forward) or v W_N^-m, from the table.
template <bool INVERSE>
__device__ __forceinline__ complex<float> twiddled(complex<float> v,
                                                   const complex<float>* __restrict__ twiddle,
                                                   int m) {
  const complex<float> w = twiddle[m];
  return INVERSE ? v * conj(w) : v * w;
}

// One line of N = A B elements in shared memory between the two steps: element
// (k1, n2) at k1 (B + 1) + n2; lines LINE apart (one past a multiple of 16 in complex
// units, so consecutive lines start two banks apart).
template <int A, int B>
struct Exchange {
  static constexpr int PAD = B + 1;
  static constexpr int LINE = A * PAD + 1;
  static __device__ __forceinline__ int at(int k1, int n2) { return k1 * PAD + n2; }
};

// First step of the forward transform of a line (element stride `stride` from `x`),
// task n2: A-point DFT over n1, twiddle, into the exchange.
template <int A, int B, bool INVERSE>
__device__ __forceinline__ void first_step(const complex<float>* x, index_t stride, int n2,
                                           const complex<float>* __restrict__ twiddle,
                                           complex<float>* line) {
  complex<float> v[A];
#pragma unroll
  for (int n1 = 0; n1 < A; ++n1) v[n1] = x[(B * n1 + n2) * stride];
  dft<A, INVERSE>(v);
#pragma unroll
  for (int k1 = 0; k1 < A; ++k1) line[Exchange<A, B>::at(k1, n2)] = twiddled<INVERSE>(v[k1], twiddle, n2 * k1);
}

// Second step, task k1: the B elements (k1, .) of the exchange through a B-point DFT:
// v[k2] = X[k1 + A k2].
template <int A, int B, bool INVERSE>
__device__ __forceinline__ void second_step(const complex<float>* line, int k1,
                                            complex<float> (&v)[B]) {
#pragma unroll
  for (int n2 = 0; n2 < B; ++n2) v[n2] = line[Exchange<A, B>::at(k1, n2)];
  dft<B, INVERSE>(v);
}

// In-place 1-D transforms of length N = A B along the rows of `stack` (n_rows rows of
// N contiguous elements: every row of every frame), LINES rows a block.
template <int A, int B, int LINES, bool INVERSE>
__global__ void transform_rows(complex<float>* stack, const complex<float>* __restrict__ twiddle,
                               index_t n_rows) {
  constexpr int N = A * B;
  __shared__ complex<float> exchange[LINES * Exchange<A, B>::LINE];
  const index_t first = (index_t)blockIdx.x * LINES;
  for (int task = threadIdx.x; task < LINES * B; task += blockDim.x) {
    const int l = task / B, n2 = task % B;
    if (first + l < n_rows)
      first_step<A, B, INVERSE>(stack + (first + l) * N, 1, n2, twiddle,
                                exchange + l * Exchange<A, B>::LINE);
  }
  __syncthreads();
  for (int task = threadIdx.x; task < LINES * A; task += blockDim.x) {
    const int l = task / A, k1 = task % A;
    if (first + l >= n_rows) continue;
    complex<float> v[B];
    second_step<A, B, INVERSE>(exchange + l * Exchange<A, B>::LINE, k1, v);
    complex<float>* x = stack + (first + l) * N;
#pragma unroll
    for (int k2 = 0; k2 < B; ++k2) x[k1 + A * k2] = v[k2];
  }
}

// In-place 1-D transforms of length N along the columns of each N x N frame of
// `stack`: block (blockIdx.x, blockIdx.y) takes columns C blockIdx.x.. of frame
// blockIdx.y.
template <int A, int B, int C, bool INVERSE>
__global__ void transform_columns(complex<float>* stack,
                                  const complex<float>* __restrict__ twiddle) {
  constexpr int N = A * B;
  __shared__ complex<float> exchange[C * Exchange<A, B>::LINE];
  complex<float>* frame = stack + (index_t)blockIdx.y * N * N + blockIdx.x * C;
  for (int task = threadIdx.x; task < C * B; task += blockDim.x) {
    const int c = task % C, n2 = task / C;
    first_step<A, B, INVERSE>(frame + c, N, n2, twiddle, exchange + c * Exchange<A, B>::LINE);
  }
  __syncthreads();
  for (int task = threadIdx.x; task < C * A; task += blockDim.x) {
    const int c = task % C, k1 = task / C;
    complex<float> v[B];
    second_step<A, B, INVERSE>(exchange + c * Exchange<A, B>::LINE, k1, v);
#pragma unroll
    for (int k2 = 0; k2 < B; ++k2) frame[(index_t)(k1 + A * k2) * N + c] = v[k2];
  }
}

// The gradient pass between the row passes (file comment): `stack` holds frames
// transformed along their rows; the column transform makes the far fields a, of which
// those of the frames kept_first + j kept_stride (j < kept_count) are written to frame
// j of `farfield` (none when it is null), ptycho.cu's poisson_pixel the gradient scale
// m (1 - n / I) a (or the amplitude model's) and the NLL (added to `nll`), and the
// inverse column transform of the gradient is written to `chi` (which may be `stack`).
// Grid as transform_columns'.
template <int A, int B, int C, typename Count>
__global__ void columns_poisson(const complex<float>* stack, complex<float>* farfield,
                                int kept_first, int kept_stride, int kept_count,
                                const Count* __restrict__ counts, complex<float>* chi,
                                const complex<float>* __restrict__ twiddle, double* nll,
                                float eps, float scale, int amplitude) {
  constexpr int N = A * B;
  __shared__ complex<float> exchange[C * Exchange<A, B>::LINE];
  const index_t offset = (index_t)blockIdx.y * N * N + blockIdx.x * C;
  const int kept = (int)blockIdx.y - kept_first;  // this frame's place among those kept
  complex<float>* kept_columns = nullptr;
  if (farfield != nullptr && kept >= 0 && kept % kept_stride == 0 &&
      kept / kept_stride < kept_count)
    kept_columns = farfield + (index_t)(kept / kept_stride) * N * N + blockIdx.x * C;
  for (int task = threadIdx.x; task < C * B; task += blockDim.x) {
    const int c = task % C, n2 = task / C;
    first_step<A, B, false>(stack + offset + c, N, n2, twiddle,
                            exchange + c * Exchange<A, B>::LINE);
  }
  __syncthreads();
  double local = 0;
  for (int task = threadIdx.x; task < C * A; task += blockDim.x) {
    const int c = task % C, k1 = task / C;
    complex<float>* line = exchange + c * Exchange<A, B>::LINE;
    complex<float> v[B];
    second_step<A, B, false>(line, k1, v);
#pragma unroll
    for (int k2 = 0; k2 < B; ++k2) {
      const index_t i = offset + (index_t)(k1 + A * k2) * N + c;
      if (kept_columns != nullptr) kept_columns[(index_t)(k1 + A * k2) * N + c] = v[k2];
      v[k2] = poisson_pixel(v[k2], count_value<float>(counts[i]), eps, scale, amplitude, local);
    }
    dft<B, true>(v);  // the inverse's first step over k2, in place of this thread's line
#pragma unroll
    for (int n2 = 0; n2 < B; ++n2)
      line[Exchange<A, B>::at(k1, n2)] = twiddled<true>(v[n2], twiddle, n2 * k1);
  }
  __syncthreads();
  for (int task = threadIdx.x; task < C * B; task += blockDim.x) {
    const int c = task % C, n2 = task / C;
    const complex<float>* line = exchange + c * Exchange<A, B>::LINE;
    complex<float> v[A];
#pragma unroll
    for (int k1 = 0; k1 < A; ++k1) v[k1] = line[Exchange<A, B>::at(k1, n2)];
    dft<A, true>(v);
#pragma unroll
    for (int n1 = 0; n1 < A; ++n1) chi[offset + (index_t)(B * n1 + n2) * N + c] = v[n1];
  }
  block_accumulate(local, nll);
}
