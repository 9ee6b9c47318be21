// The emulator's stand-in for c10/cuda/CUDAStream.h: launches run synchronously, on no stream.
#pragma once
#include "cuda_emu.h"

namespace c10 {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream() { return {}; }
}  // namespace cuda
}  // namespace c10
