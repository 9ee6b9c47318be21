// Fused vocab-parallel cross-entropy over a shard of the logits [rows, cols], without an fp32
// copy of them. Forward: one block per row and one read of the row, keeping an online
// (max, sum of exp relative to that max) pair and picking up the target's logit. Backward:
// grad = (exp(logit - lse) - onehot) * grad_loss, recomputed from the saved (bf16) logits and
// the per-row global log-sum-exp, written in the logits' type.
#include "common.cuh"

namespace snowtrain {
namespace {

constexpr int kThreads = 512;

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
ce_fwd_kernel(const T* __restrict__ logits, const int64_t* __restrict__ target,
              float* __restrict__ row_max, float* __restrict__ sum_exp,
              float* __restrict__ tgt_logit, int64_t cols, int64_t vocab_start) {
  __shared__ MaxSum red[32];
  const T* row = logits + static_cast<int64_t>(blockIdx.x) * cols;
  MaxSum acc{-INFINITY, 0.f};
  const int64_t step = static_cast<int64_t>(blockDim.x) * N;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * N; i < cols; i += step) {
    float a[N];
    load_float<T, N>(row + i, a);
    float m = a[0];
#pragma unroll
    for (int k = 1; k < N; ++k) m = fmaxf(m, a[k]);
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < N; ++k) s += __expf(a[k] - m);
    acc = combine(acc, MaxSum{m, s});
  }
  acc = block_max_sum(acc, red);
  if (threadIdx.x == 0) {
    row_max[blockIdx.x] = acc.m;
    sum_exp[blockIdx.x] = acc.s;
    const int64_t t = target[blockIdx.x] - vocab_start;
    tgt_logit[blockIdx.x] = (t >= 0 && t < cols) ? to_float(row[t]) : 0.f;
  }
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
ce_bwd_kernel(const T* __restrict__ logits, const int64_t* __restrict__ target,
              const float* __restrict__ lse, const float* __restrict__ grad_loss,
              T* __restrict__ grad, int64_t cols, int64_t vocab_start) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  const float l = lse[blockIdx.x], g = grad_loss[blockIdx.x];
  const int64_t t = target[blockIdx.x] - vocab_start;  // may lie outside [0, cols)
  const int64_t step = static_cast<int64_t>(blockDim.x) * N;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * N; i < cols; i += step) {
    float a[N];
    load_float<T, N>(logits + base + i, a);
#pragma unroll
    for (int k = 0; k < N; ++k) a[k] = (__expf(a[k] - l) - (i + k == t ? 1.f : 0.f)) * g;
    store_float<T, N>(grad + base + i, a);
  }
}

template <typename T>
cudaError_t fwd(const void* logits, const int64_t* target, float* row_max, float* sum_exp,
                float* tgt, int64_t rows, int64_t cols, int64_t vocab_start, cudaStream_t stream) {
  constexpr int N = VecWidth<T>::value;
  const T* x = static_cast<const T*>(logits);
  if (cols % N == 0 && aligned16(x))
    ce_fwd_kernel<T, N><<<rows, row_threads(cols / N, kThreads), 0, stream>>>(
        x, target, row_max, sum_exp, tgt, cols, vocab_start);
  else
    ce_fwd_kernel<T, 1><<<rows, row_threads(cols, kThreads), 0, stream>>>(
        x, target, row_max, sum_exp, tgt, cols, vocab_start);
  return cudaGetLastError();
}

template <typename T>
cudaError_t bwd(const void* logits, const int64_t* target, const float* lse, const float* g,
                void* grad, int64_t rows, int64_t cols, int64_t vocab_start, cudaStream_t stream) {
  constexpr int N = VecWidth<T>::value;
  const T* x = static_cast<const T*>(logits);
  T* o = static_cast<T*>(grad);
  if (cols % N == 0 && aligned16(x) && aligned16(o))
    ce_bwd_kernel<T, N><<<rows, row_threads(cols / N, kThreads), 0, stream>>>(
        x, target, lse, g, o, cols, vocab_start);
  else
    ce_bwd_kernel<T, 1><<<rows, row_threads(cols, kThreads), 0, stream>>>(
        x, target, lse, g, o, cols, vocab_start);
  return cudaGetLastError();
}

}  // namespace

cudaError_t ce_fwd(const void* logits, const int64_t* target, float* row_max, float* sum_exp,
                   float* tgt_logit, int64_t rows, int64_t cols, int64_t vocab_start, DType t,
                   cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (cols == 0) return cudaErrorInvalidValue;
  return t == kBFloat16
             ? fwd<__nv_bfloat16>(logits, target, row_max, sum_exp, tgt_logit, rows, cols,
                                  vocab_start, stream)
             : fwd<float>(logits, target, row_max, sum_exp, tgt_logit, rows, cols, vocab_start,
                          stream);
}

cudaError_t ce_bwd(const void* logits, const int64_t* target, const float* lse,
                   const float* grad_loss, void* grad, int64_t rows, int64_t cols,
                   int64_t vocab_start, DType t, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  return t == kBFloat16 ? bwd<__nv_bfloat16>(logits, target, lse, grad_loss, grad, rows, cols,
                                             vocab_start, stream)
                        : bwd<float>(logits, target, lse, grad_loss, grad, rows, cols,
                                     vocab_start, stream);
}

}  // namespace snowtrain
