// Fused RMSNorm, optionally with the residual add in front, forward and backward.
//
// Forward: one block per row; pass 1 sums squares (and writes h = x + residual when fused), pass
// 2 re-reads the row (from L1/L2) and writes y. Backward: a persistent grid, each block walks
// rows blockIdx.x, +gridDim.x, ...; per row one reduction for mean(w*dy*xhat), then dx; the
// block keeps its partial dw in shared memory (every thread owns the same columns in every row),
// writes it to an fp32 workspace [blocks, cols], and a second small kernel sums the workspace
// over blocks into dw. All arithmetic is fp32.
#include <initializer_list>

#include "common.cuh"

namespace snowtrain {
namespace {

constexpr int kFwdThreads = 1024;  // most threads of a forward block
constexpr int kBwdThreads = 256;

// __launch_bounds__ keeps registers within what the largest block can have (a launch with more
// fails only on the GPU, "too many resources requested").
template <typename T, typename W, int N, bool RES>
__global__ void __launch_bounds__(kFwdThreads)
rmsnorm_fwd_kernel(const T* __restrict__ x, const T* __restrict__ res,
                   const W* __restrict__ w, T* __restrict__ y, T* h,
                   float* __restrict__ rstd, int64_t cols, float eps) {
  __shared__ float red[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  const int64_t step = static_cast<int64_t>(blockDim.x) * N;
  float ss = 0.f;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * N; i < cols; i += step) {
    float a[N];
    load_float<T, N>(x + base + i, a);
    if constexpr (RES) {
      float b[N];
      load_float<T, N>(res + base + i, b);
#pragma unroll
      for (int k = 0; k < N; ++k) a[k] = to_float(from_float<T>(a[k] + b[k]));  // h as stored
      store_float<T, N>(h + base + i, a);
    }
#pragma unroll
    for (int k = 0; k < N; ++k) ss += a[k] * a[k];
  }
  const float r = rsqrtf(block_sum(ss, red) / static_cast<float>(cols) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  const T* src = RES ? h : x;  // each thread re-reads only what it wrote itself
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * N; i < cols; i += step) {
    float a[N], g[N];
    load_float<T, N>(src + base + i, a);
    load_float<W, N>(w + i, g);
#pragma unroll
    for (int k = 0; k < N; ++k) a[k] = a[k] * r * g[k];
    store_float<T, N>(y + base + i, a);
  }
}

// Thread t owns columns (s * blockDim.x + t) * N + [0, N) of every row; its partial dw for them
// lives in shared memory at acc[(s * N + k) * blockDim.x + t] (consecutive threads, consecutive
// banks), so no two threads ever touch the same word.
template <typename T, typename W, int N, bool RES>
__global__ void __launch_bounds__(kBwdThreads)
rmsnorm_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                   const W* __restrict__ w, const float* __restrict__ rstd,
                   const T* __restrict__ dres, T* __restrict__ dx,
                   float* __restrict__ ws, int64_t rows, int64_t cols) {
  extern __shared__ float acc[];
  __shared__ float red[32];
  const int64_t bd = blockDim.x;
  const int64_t first = static_cast<int64_t>(threadIdx.x) * N, step = bd * N;
  for (int64_t i = first, s = 0; i < cols; i += step, ++s)
#pragma unroll
    for (int k = 0; k < N; ++k) acc[(s * N + k) * bd + threadIdx.x] = 0.f;
  const float inv_cols = 1.f / static_cast<float>(cols);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * cols;
    const float r = rstd[row];
    float dot = 0.f;
    for (int64_t i = first; i < cols; i += step) {
      float a[N], d[N], g[N];
      load_float<T, N>(x + base + i, a);
      load_float<T, N>(dy + base + i, d);
      load_float<W, N>(w + i, g);
#pragma unroll
      for (int k = 0; k < N; ++k) dot += g[k] * d[k] * a[k];
    }
    const float c = block_sum(dot, red) * r * inv_cols;  // mean(w * dy * xhat)
    int64_t s = 0;
    for (int64_t i = first; i < cols; i += step, ++s) {
      float a[N], d[N], g[N], o[N];
      load_float<T, N>(x + base + i, a);
      load_float<T, N>(dy + base + i, d);
      load_float<W, N>(w + i, g);
      if constexpr (RES) {
        load_float<T, N>(dres + base + i, o);
      } else {
#pragma unroll
        for (int k = 0; k < N; ++k) o[k] = 0.f;
      }
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float xhat = a[k] * r;
        o[k] += r * (g[k] * d[k] - xhat * c);
        acc[(s * N + k) * bd + threadIdx.x] += d[k] * xhat;
      }
      store_float<T, N>(dx + base + i, o);
    }
  }
  float* out = ws + static_cast<int64_t>(blockIdx.x) * cols;
  for (int64_t i = first, s = 0; i < cols; i += step, ++s)
#pragma unroll
    for (int k = 0; k < N; ++k) out[i + k] = acc[(s * N + k) * bd + threadIdx.x];
}

// dw[c] = sum_p ws[p, c]: blocks of 32 columns x 32 partial rows, reduced through shared memory.
template <typename W>
__global__ void __launch_bounds__(1024)
sum_partials_kernel(const float* __restrict__ ws, W* __restrict__ dw,
                    int64_t parts, int64_t cols) {
  __shared__ float tile[32][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.f;
  if (c < cols)
    for (int64_t p = threadIdx.y; p < parts; p += 32) s += ws[p * cols + c];
  tile[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0) {
    float t = 0.f;
#pragma unroll 8
    for (int k = 0; k < 32; ++k) t += tile[k][threadIdx.x];
    if (c < cols) dw[c] = from_float<W>(t);
  }
}

// Up to 256 threads, no more than there are vectors in a row; a multiple of 32.
template <int N>
int bwd_threads(int64_t cols) {
  return row_threads((cols + N - 1) / N, kBwdThreads);
}

// Shared memory of the backward: the partial dw of a block, every slot of every thread.
template <int N>
size_t bwd_smem(int64_t cols, int threads) {
  const int64_t step = static_cast<int64_t>(threads) * N;
  return static_cast<size_t>((cols + step - 1) / step * step) * sizeof(float);
}

int64_t bwd_blocks(int64_t rows, int threads) {
  const int64_t per_sm = 2048 / threads > 0 ? 2048 / threads : 1;
  const int64_t blocks = static_cast<int64_t>(num_sms()) * per_sm;
  return rows < blocks ? rows : blocks;
}

template <typename T, typename W, int N>
cudaError_t fwd_impl(const void* x, const void* res, const void* w, void* y, void* h, float* rstd,
                     int64_t rows, int64_t cols, float eps, cudaStream_t stream) {
  const int threads = row_threads((cols + N - 1) / N, kFwdThreads);
  if (res)
    rmsnorm_fwd_kernel<T, W, N, true><<<rows, threads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(res), static_cast<const W*>(w),
        static_cast<T*>(y), static_cast<T*>(h), rstd, cols, eps);
  else
    rmsnorm_fwd_kernel<T, W, N, false><<<rows, threads, 0, stream>>>(
        static_cast<const T*>(x), nullptr, static_cast<const W*>(w), static_cast<T*>(y), nullptr,
        rstd, cols, eps);
  return cudaGetLastError();
}

template <typename T, typename W, int N>
cudaError_t bwd_impl(const void* dy, const void* x, const void* w, const float* rstd,
                     const void* dres, void* dx, void* dw, float* ws, int64_t rows, int64_t cols,
                     cudaStream_t stream) {
  const int threads = bwd_threads<N>(cols);
  const int64_t blocks = bwd_blocks(rows, threads);
  const size_t smem = bwd_smem<N>(cols, threads);
  if (blocks > 0) {
    auto kernel = dres ? rmsnorm_bwd_kernel<T, W, N, true> : rmsnorm_bwd_kernel<T, W, N, false>;
    if (smem > 48 * 1024) {
      cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem));
      if (e != cudaSuccess) return e;
    }
    kernel<<<blocks, threads, smem, stream>>>(
        static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const W*>(w), rstd,
        static_cast<const T*>(dres), static_cast<T*>(dx), ws, rows, cols);
  }
  sum_partials_kernel<W><<<(cols + 31) / 32, dim3(32, 32), 0, stream>>>(ws, static_cast<W*>(dw),
                                                                        blocks, cols);
  return cudaGetLastError();
}

bool vectorizable(int64_t cols, int n, std::initializer_list<const void*> ptrs) {
  if (cols % n) return false;
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return true;
}

}  // namespace

cudaError_t rmsnorm_fwd(const void* x, const void* residual, const void* w, void* y, void* h_out,
                        float* rstd, int64_t rows, int64_t cols, float eps, DType xt, DType wt,
                        cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  const bool vec = vectorizable(cols, xt == kBFloat16 ? 8 : 4, {x, residual, w, y, h_out});
#define SNOWTRAIN_FWD(T, W, N) fwd_impl<T, W, N>(x, residual, w, y, h_out, rstd, rows, cols, eps, stream)
  if (xt == kBFloat16 && wt == kBFloat16)
    return vec ? SNOWTRAIN_FWD(__nv_bfloat16, __nv_bfloat16, 8) : SNOWTRAIN_FWD(__nv_bfloat16, __nv_bfloat16, 1);
  if (xt == kBFloat16 && wt == kFloat32)
    return vec ? SNOWTRAIN_FWD(__nv_bfloat16, float, 8) : SNOWTRAIN_FWD(__nv_bfloat16, float, 1);
  if (xt == kFloat32 && wt == kBFloat16)
    return vec ? SNOWTRAIN_FWD(float, __nv_bfloat16, 4) : SNOWTRAIN_FWD(float, __nv_bfloat16, 1);
  return vec ? SNOWTRAIN_FWD(float, float, 4) : SNOWTRAIN_FWD(float, float, 1);
#undef SNOWTRAIN_FWD
}

int64_t rmsnorm_bwd_workspace(int64_t rows, int64_t cols) {
  // the path with the fewest threads per block has the most blocks
  const int t8 = bwd_threads<8>(cols), t4 = bwd_threads<4>(cols), t1 = bwd_threads<1>(cols);
  const int fewest = t8 < t4 ? (t8 < t1 ? t8 : t1) : (t4 < t1 ? t4 : t1);
  return bwd_blocks(rows, fewest);
}

cudaError_t rmsnorm_bwd(const void* dy, const void* x, const void* w, const float* rstd,
                        const void* dres, void* dx, void* dw, float* workspace, int64_t rows,
                        int64_t cols, DType xt, DType wt, cudaStream_t stream) {
  if (cols == 0) return cudaSuccess;
  const bool vec = vectorizable(cols, xt == kBFloat16 ? 8 : 4, {dy, x, w, dres, dx});
#define SNOWTRAIN_BWD(T, W, N) bwd_impl<T, W, N>(dy, x, w, rstd, dres, dx, dw, workspace, rows, cols, stream)
  if (xt == kBFloat16 && wt == kBFloat16)
    return vec ? SNOWTRAIN_BWD(__nv_bfloat16, __nv_bfloat16, 8) : SNOWTRAIN_BWD(__nv_bfloat16, __nv_bfloat16, 1);
  if (xt == kBFloat16 && wt == kFloat32)
    return vec ? SNOWTRAIN_BWD(__nv_bfloat16, float, 8) : SNOWTRAIN_BWD(__nv_bfloat16, float, 1);
  if (xt == kFloat32 && wt == kBFloat16)
    return vec ? SNOWTRAIN_BWD(float, __nv_bfloat16, 4) : SNOWTRAIN_BWD(float, __nv_bfloat16, 1);
  return vec ? SNOWTRAIN_BWD(float, float, 4) : SNOWTRAIN_BWD(float, float, 1);
#undef SNOWTRAIN_BWD
}

}  // namespace snowtrain
