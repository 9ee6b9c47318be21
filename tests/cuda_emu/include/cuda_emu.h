// A CPU stand-in for the parts of the CUDA runtime and device language that csrc/ uses, so the
// kernels' own source runs on a machine without a GPU (tests/test_kernels_emulated.py).
//
// Each block of a launch runs on one OS thread, its threads as cooperative fibers: __syncthreads
// and the warp shuffles are real barriers (a fiber waits until every thread of its block or warp
// has arrived), so shared-memory races and barriers some threads skip show up as wrong results or
// a reported deadlock. Launch limits (1024 threads, 48 KiB of dynamic shared memory unless raised
// with cudaFuncSetAttribute, 227 KiB at most) fail as on an H100. tests/cuda_emu/build.py rewrites
// `kernel<<<grid, block, smem, stream>>>(args)` into
// `cuda_emu::Launcher("kernel", grid, block, smem, stream)(kernel, args)` and
// `extern __shared__ T name[]` into a pointer to the launch's dynamic shared memory.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// ------------------------------------------------------------------------------------ runtime
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
typedef void* cudaStream_t;
enum cudaDeviceAttr : int { cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

extern dim3 threadIdx, blockIdx, blockDim, gridDim;

cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetDevice(int* dev);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev);

namespace cuda_emu {
cudaError_t set_max_dynamic_smem(const void* kernel, int attr, int value);
void syncthreads();
// Every lane of the calling thread's warp puts `bits` in; returns what lane `src_lane` put in.
uint64_t warp_exchange(uint64_t bits, int src_lane, unsigned mask);
void* dynamic_smem();
void check_vector_access(const void* p, size_t bytes);

// A grid or block size as written at the launch: an integer of any width or a dim3.
struct Extent {
  int64_t x, y, z;
  Extent(dim3 d) : x(d.x), y(d.y), z(d.z) {}
  template <typename I, typename = decltype(static_cast<int64_t>(I{}) + 0)>
  Extent(I n) : x(static_cast<int64_t>(n)), y(1), z(1) {}
};

void launch(const void* kernel, const char* name, Extent grid, Extent block, int64_t smem,
            const std::function<void()>& body);

struct Launcher {
  Extent grid, block;
  int64_t smem;
  const char* name;
  Launcher(const char* n, Extent g, Extent b, int64_t s = 0, cudaStream_t = nullptr)
      : grid(g), block(b), smem(s), name(n) {}
  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), A&&... a) const {
    std::tuple<P...> args(std::forward<A>(a)...);  // converted once, as the launch does
    launch(reinterpret_cast<const void*>(kernel), name, grid, block, smem,
           [&] { std::apply(kernel, args); });
  }
};
}  // namespace cuda_emu

template <typename K>
cudaError_t cudaFuncSetAttribute(K* kernel, cudaFuncAttribute attr, int value) {
  return cuda_emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), attr, value);
}

inline void __syncthreads() { cuda_emu::syncthreads(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof(T));
  const int lane = static_cast<int>((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31);
  bits = cuda_emu::warp_exchange(bits, lane ^ lane_mask, mask);
  T out;
  memcpy(&out, &bits, sizeof(T));
  return out;
}

// Device math: the fast intrinsics are within a few ulp of these on the GPU.
inline float __expf(float v) { return expf(v); }
inline float rsqrtf(float v) { return 1.f / sqrtf(v); }

// ------------------------------------------------------------------------------------- bf16
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {  // round to nearest even, as the GPU does
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}

// common.cuh checks every 16-byte vector access here (misaligned ones fault on the GPU).
#define SNOWTRAIN_VECTOR_ACCESS(p, bytes) ::cuda_emu::check_vector_access((p), (bytes))
