// Fused SwiGLU: out = silu(gate) * up and its backward, elementwise, fp32 math, one rounding.
// 16-byte vectors when every pointer is aligned and n divides evenly, else one element a thread.
#include "common.cuh"

namespace snowtrain {
namespace {

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (1.f + __expf(-g)); }

constexpr int kThreads = 256;

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
swiglu_fwd_kernel(const T* __restrict__ gate, const T* __restrict__ up,
                  T* __restrict__ out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * N;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N; i < n;
       i += stride) {
    float g[N], u[N];
    load_float<T, N>(gate + i, g);
    load_float<T, N>(up + i, u);
#pragma unroll
    for (int k = 0; k < N; ++k) g[k] = g[k] * sigmoid(g[k]) * u[k];
    store_float<T, N>(out + i, g);
  }
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
swiglu_bwd_kernel(const T* __restrict__ dout, const T* __restrict__ gate,
                  const T* __restrict__ up, T* __restrict__ dgate,
                  T* __restrict__ dup, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * N;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N; i < n;
       i += stride) {
    float d[N], g[N], u[N];
    load_float<T, N>(dout + i, d);
    load_float<T, N>(gate + i, g);
    load_float<T, N>(up + i, u);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float s = sigmoid(g[k]);
      const float silu = g[k] * s;
      const float dg = d[k] * u[k] * s * (1.f + g[k] * (1.f - s));
      u[k] = d[k] * silu;  // dup
      g[k] = dg;
    }
    store_float<T, N>(dgate + i, g);
    store_float<T, N>(dup + i, u);
  }
}

int64_t grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(num_sms()) * 16;  // grid-stride beyond this
  return blocks < cap ? (blocks > 0 ? blocks : 1) : cap;
}

template <typename T>
cudaError_t fwd(const void* gate, const void* up, void* out, int64_t n, cudaStream_t stream) {
  constexpr int N = VecWidth<T>::value;
  const T *g = static_cast<const T*>(gate), *u = static_cast<const T*>(up);
  T* o = static_cast<T*>(out);
  if (n % N == 0 && aligned16(g) && aligned16(u) && aligned16(o))
    swiglu_fwd_kernel<T, N><<<grid_for(n / N), kThreads, 0, stream>>>(g, u, o, n);
  else
    swiglu_fwd_kernel<T, 1><<<grid_for(n), kThreads, 0, stream>>>(g, u, o, n);
  return cudaGetLastError();
}

template <typename T>
cudaError_t bwd(const void* dout, const void* gate, const void* up, void* dgate, void* dup,
                int64_t n, cudaStream_t stream) {
  constexpr int N = VecWidth<T>::value;
  const T *d = static_cast<const T*>(dout), *g = static_cast<const T*>(gate),
          *u = static_cast<const T*>(up);
  T *dg = static_cast<T*>(dgate), *du = static_cast<T*>(dup);
  if (n % N == 0 && aligned16(d) && aligned16(g) && aligned16(u) && aligned16(dg) && aligned16(du))
    swiglu_bwd_kernel<T, N><<<grid_for(n / N), kThreads, 0, stream>>>(d, g, u, dg, du, n);
  else
    swiglu_bwd_kernel<T, 1><<<grid_for(n), kThreads, 0, stream>>>(d, g, u, dg, du, n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t swiglu_fwd(const void* gate, const void* up, void* out, int64_t n, DType t,
                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return t == kBFloat16 ? fwd<__nv_bfloat16>(gate, up, out, n, stream)
                        : fwd<float>(gate, up, out, n, stream);
}

cudaError_t swiglu_bwd(const void* dout, const void* gate, const void* up, void* dgate, void* dup,
                       int64_t n, DType t, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return t == kBFloat16 ? bwd<__nv_bfloat16>(dout, gate, up, dgate, dup, n, stream)
                        : bwd<float>(dout, gate, up, dgate, dup, n, stream);
}

}  // namespace snowtrain
