// Fused rotate-half RoPE on q and k in one launch, forward (M x) and backward (M^T dy).
//
// For a row of head_dim = 2 * half and j < half, with c = cos[pos], s = sin[pos]:
//   forward   y[j] = x[j] c[j] - x[j+half] s[j]      y[j+half] = x[j+half] c[j+half] + x[j] s[j+half]
//   transpose y[j] = x[j] c[j] + x[j+half] s[j+half] y[j+half] = x[j+half] c[j+half] - x[j] s[j]
// One thread handles N elements of each half of one (token, head) row; rows of q come first,
// then rows of k. cos/sin are fp32 [seq, head_dim]; the position of a row is (row / heads) % seq.
#include "common.cuh"

namespace snowtrain {
namespace {

constexpr int kThreads = 256;

template <typename T, int N, bool TRANSPOSE>
__global__ void __launch_bounds__(kThreads)
rope_kernel(const T* __restrict__ q, const T* __restrict__ k, T* __restrict__ qo,
            T* __restrict__ ko, const float* __restrict__ cos,
            const float* __restrict__ sin, int64_t seq, int64_t hq, int64_t hk,
            int64_t half, int64_t rows_q, int64_t work) {
  const int64_t per_row = half / N;
  const int64_t dim = 2 * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < work;
       t += stride) {
    int64_t row = t / per_row;
    const int64_t j = (t - row * per_row) * N;
    const T* src = q;
    T* dst = qo;
    int64_t heads = hq;
    if (row >= rows_q) {
      row -= rows_q;
      src = k;
      dst = ko;
      heads = hk;
    }
    const int64_t pos = (row / heads) % seq;
    src += row * dim;
    dst += row * dim;
    const float* c = cos + pos * dim;
    const float* s = sin + pos * dim;
    float a[N], b[N], c1[N], c2[N], s1[N], s2[N];
    load_float<T, N>(src + j, a);
    load_float<T, N>(src + half + j, b);
    load_float<float, N>(c + j, c1);
    load_float<float, N>(c + half + j, c2);
    load_float<float, N>(s + j, s1);
    load_float<float, N>(s + half + j, s2);
    float o1[N], o2[N];
#pragma unroll
    for (int e = 0; e < N; ++e) {
      if (TRANSPOSE) {
        o1[e] = a[e] * c1[e] + b[e] * s2[e];
        o2[e] = b[e] * c2[e] - a[e] * s1[e];
      } else {
        o1[e] = a[e] * c1[e] - b[e] * s1[e];
        o2[e] = b[e] * c2[e] + a[e] * s2[e];
      }
    }
    store_float<T, N>(dst + j, o1);
    store_float<T, N>(dst + half + j, o2);
  }
}

template <typename T, int N>
cudaError_t launch(const void* q, const void* k, void* qo, void* ko, const float* cos,
                   const float* sin, int64_t batch, int64_t seq, int64_t hq, int64_t hk,
                   int64_t half, bool transpose, cudaStream_t stream) {
  const int64_t rows_q = batch * seq * hq, rows = rows_q + batch * seq * hk;
  const int64_t work = rows * (half / N);
  constexpr int threads = kThreads;
  int64_t blocks = (work + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(num_sms()) * 32;
  if (blocks > cap) blocks = cap;
  auto args = [&](auto kernel) {
    kernel<<<blocks, threads, 0, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                           static_cast<T*>(qo), static_cast<T*>(ko), cos, sin,
                                           seq, hq, hk, half, rows_q, work);
  };
  if (transpose)
    args(rope_kernel<T, N, true>);
  else
    args(rope_kernel<T, N, false>);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch(const void* q, const void* k, void* qo, void* ko, const float* cos,
                     const float* sin, int64_t batch, int64_t seq, int64_t hq, int64_t hk,
                     int64_t half, bool transpose, cudaStream_t stream) {
  constexpr int N = VecWidth<T>::value;
  const bool vec = half % N == 0 && aligned16(q) && aligned16(qo) && aligned16(cos) &&
                   aligned16(sin) && (hk == 0 || (aligned16(k) && aligned16(ko)));
  return vec ? launch<T, N>(q, k, qo, ko, cos, sin, batch, seq, hq, hk, half, transpose, stream)
             : launch<T, 1>(q, k, qo, ko, cos, sin, batch, seq, hq, hk, half, transpose, stream);
}

}  // namespace

cudaError_t rope(const void* q, const void* k, void* q_out, void* k_out, const float* cos,
                 const float* sin, int64_t batch, int64_t seq, int64_t hq, int64_t hk, int64_t dim,
                 bool transpose, DType t, cudaStream_t stream) {
  if (batch * seq * (hq + hk) == 0 || dim == 0) return cudaSuccess;
  if (dim % 2) return cudaErrorInvalidValue;
  if (hq == 0) {  // only k: treat it as q
    q = k;
    q_out = k_out;
    hq = hk;
    hk = 0;
  }
  const int64_t half = dim / 2;
  return t == kBFloat16
             ? dispatch<__nv_bfloat16>(q, k, q_out, k_out, cos, sin, batch, seq, hq, hk, half,
                                       transpose, stream)
             : dispatch<float>(q, k, q_out, k_out, cos, sin, batch, seq, hq, hk, half, transpose,
                               stream);
}

}  // namespace snowtrain
