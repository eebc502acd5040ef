// Host stand-in for CuPy's complex.cuh (tests/cuda_host.py): std::complex, and the
// CUDA built-ins kernels/*.cu use, for one thread a block run block after block.
#pragma once
#include <algorithm>
#include <cmath>
#include <complex>

template <typename T>
using complex = std::complex<T>;
using std::log;
using std::max;
using std::min;
using std::sqrt;

struct host_dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline host_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__

// One thread a block: a barrier has nothing to wait for, a shuffle no other lane.
inline void __syncthreads() {}
template <typename T>
inline T __shfl_down_sync(unsigned, T, int) { return T(0); }
template <typename T>
inline T __shfl_xor_sync(unsigned, T, int) { return T(0); }
template <typename T>
inline T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
