// Shared device helpers: element conversion, 16-byte vectors, warp and block reductions.
// Only CUDA headers here: the kernels compile with plain nvcc, without torch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "launchers.h"

namespace snowtrain {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Hook for the CPU emulator of the tests (tests/cuda_emu), which checks each vector access's
// alignment; nothing on the GPU.
#ifndef SNOWTRAIN_VECTOR_ACCESS
#define SNOWTRAIN_VECTOR_ACCESS(p, bytes)
#endif

// N elements moved as one (16-byte for N = 16 / sizeof(T)) load or store.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  SNOWTRAIN_VECTOR_ACCESS(p, sizeof(Vec<T, N>));
  return *reinterpret_cast<const Vec<T, N>*>(p);
}
template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  SNOWTRAIN_VECTOR_ACCESS(p, sizeof(Vec<T, N>));
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// Load N consecutive elements as floats, in chunks of at most 16 bytes (the caller guarantees the
// alignment of p to min(16, N * sizeof(T)) bytes); store N floats rounded to T likewise.
template <typename T, int N>
__device__ __forceinline__ void load_float(const T* p, float (&out)[N]) {
  constexpr int C = (16 / (int)sizeof(T)) < N ? (16 / (int)sizeof(T)) : N;
#pragma unroll
  for (int c = 0; c < N; c += C) {
    const Vec<T, C> v = load_vec<T, C>(p + c);
#pragma unroll
    for (int k = 0; k < C; ++k) out[c + k] = to_float(v.v[k]);
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_float(T* p, const float (&in)[N]) {
  constexpr int C = (16 / (int)sizeof(T)) < N ? (16 / (int)sizeof(T)) : N;
#pragma unroll
  for (int c = 0; c < N; c += C) {
    Vec<T, C> v;
#pragma unroll
    for (int k = 0; k < C; ++k) v.v[k] = from_float<T>(in[c + k]);
    store_vec<T, C>(p + c, v);
  }
}

// Elements per 16-byte vector.
template <typename T>
struct VecWidth {
  static constexpr int value = 16 / sizeof(T);
};

__host__ __device__ inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block, returned to every thread. `shared` holds >= 32 floats; blockDim.x is a
// multiple of 32. Safe to call repeatedly (synchronises before reusing `shared`).
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : 0.f;
  return warp_sum(v);
}

// Online softmax statistics: (m, s) stands for s * exp(m); combining two keeps the larger max.
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

__device__ __forceinline__ MaxSum warp_max_sum(MaxSum v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = combine(v, other);
  }
  return v;
}

__device__ __forceinline__ MaxSum block_max_sum(MaxSum v, MaxSum* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : MaxSum{-INFINITY, 0.f};
  return warp_max_sum(v);
}

inline int num_sms() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0)
    return 108;
  return sms;
}

// Threads for a one-block-per-row kernel over `vecs` vectors per row: a multiple of 32 in
// [32, max_threads].
inline int row_threads(int64_t vecs, int max_threads) {
  int64_t t = ((vecs + 31) / 32) * 32;
  if (t < 32) t = 32;
  if (t > max_threads) t = max_threads;
  return static_cast<int>(t);
}

}  // namespace snowtrain
