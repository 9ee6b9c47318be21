// The emulator's runtime (see include/cuda_emu.h): launches, the fiber scheduler of a block, its
// barriers and warp exchanges, buffers fenced by inaccessible pages, and a C API over the
// launchers of csrc/launchers.h for ctypes.
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cuda_emu.h"
#include "launchers.h"

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace cuda_emu {
namespace {

constexpr int64_t kMaxThreads = 1024;
constexpr int64_t kDefaultSmem = 48 * 1024;   // dynamic shared memory without opting in
constexpr int64_t kMaxSmem = 227 * 1024;      // an H100's opt-in limit per block
constexpr size_t kStackBytes = 64 * 1024;

struct Barrier {
  int expected = 0, arrived = 0;
  uint64_t generation = 0;
};

struct Fiber {
  ucontext_t ctx;
  dim3 tid;
  int linear = 0;
  bool done = false;
  const char* waiting = nullptr;
};

// A buffer handed to Python: [start, start + bytes) inside pages [lo, hi) fenced by one
// inaccessible page on each side; the bytes between lo/start and end/hi hold a canary.
struct Buffer {
  char *map, *lo, *start, *hi;
  size_t map_bytes, bytes;
};
constexpr unsigned char kCanary = 0xA5;

// launch state
cudaError_t g_error = cudaSuccess;
std::string g_message;
std::string g_log;
int g_sms = 2;
std::map<const void*, int64_t> g_smem_limit;
const char* g_kernel = "";
bool g_in_launch = false;
uint64_t g_vector_accesses = 0;

// block state
ucontext_t g_scheduler;
std::vector<Fiber> g_fibers;
std::vector<std::unique_ptr<char[]>> g_stacks;
Fiber* g_current = nullptr;
const std::function<void()>* g_body = nullptr;
uint64_t g_progress = 0;
bool g_fault = false;
Barrier g_block_barrier;
std::vector<Barrier> g_warp_barriers;
std::vector<uint64_t> g_warp_slots;
std::vector<unsigned char> g_smem;

std::vector<Buffer> g_buffers;
sigjmp_buf g_segv_return;
char g_altstack[64 * 1024];

std::string where() {
  char buf[256];
  snprintf(buf, sizeof buf, "kernel %s, block (%u, %u, %u), thread (%u, %u, %u)", g_kernel,
           blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  return buf;
}

void fail(cudaError_t err, const std::string& message) {
  if (g_error == cudaSuccess) {
    g_error = err;
    g_message = message;
  }
}

// Device code hit an error the GPU would fault on: end the launch from inside a fiber.
[[noreturn]] void fault(const std::string& message) {
  fail(cudaErrorLaunchFailure, message + " (" + where() + ")");
  g_fault = true;
  g_current->done = true;
  setcontext(&g_scheduler);
  abort();
}

void wait(Barrier& b, const char* what) {
  const uint64_t gen = b.generation;
  ++g_progress;
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  g_current->waiting = what;
  while (b.generation == gen) swapcontext(&g_current->ctx, &g_scheduler);
  g_current->waiting = nullptr;
}

void fiber_main() {
  (*g_body)();
  g_current->done = true;
  ++g_progress;
}  // returns to g_scheduler through uc_link

void run_block(int64_t threads) {
  g_fibers.assign(threads, Fiber{});
  while (static_cast<int64_t>(g_stacks.size()) < threads)
    g_stacks.emplace_back(new char[kStackBytes]);
  const int64_t warps = (threads + 31) / 32;
  g_block_barrier = Barrier{static_cast<int>(threads)};
  g_warp_barriers.assign(warps, Barrier{});
  for (int64_t w = 0; w < warps; ++w)
    g_warp_barriers[w].expected = static_cast<int>(threads - 32 * w < 32 ? threads - 32 * w : 32);
  g_warp_slots.assign(warps * 32, 0);
  for (int64_t i = 0; i < threads; ++i) {
    Fiber& f = g_fibers[i];
    f.linear = static_cast<int>(i);
    f.tid = dim3(i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y));
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = g_stacks[i].get();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &g_scheduler;
    makecontext(&f.ctx, fiber_main, 0);
  }
  int64_t live = threads;
  while (live > 0) {
    const uint64_t before = g_progress;
    for (Fiber& f : g_fibers) {
      if (f.done) continue;
      g_current = &f;
      threadIdx = f.tid;
      swapcontext(&g_scheduler, &f.ctx);
      if (g_fault) return;
      if (f.done) --live;
    }
    if (live > 0 && g_progress == before) {
      int at_sync = 0, at_warp = 0;
      for (const Fiber& f : g_fibers)
        if (!f.done) (f.waiting && f.waiting[0] == '_' ? at_sync : at_warp)++;
      char buf[256];
      snprintf(buf, sizeof buf,
               "deadlock in kernel %s, block (%u, %u, %u): %lld of %lld threads exited while %d "
               "wait at __syncthreads and %d at a warp shuffle",
               g_kernel, blockIdx.x, blockIdx.y, blockIdx.z,
               static_cast<long long>(threads - live), static_cast<long long>(threads), at_sync,
               at_warp);
      fail(cudaErrorLaunchFailure, buf);
      g_fault = true;
      return;
    }
  }
}

const Buffer* buffer_near(const void* addr, const char** side) {
  const char* a = static_cast<const char*>(addr);
  for (const Buffer& b : g_buffers) {
    if (a >= b.map && a < b.lo) { *side = "before the start"; return &b; }
    if (a >= b.hi && a < b.map + b.map_bytes) { *side = "past the end"; return &b; }
  }
  return nullptr;
}

void on_segv(int, siginfo_t* info, void*) {
  if (!g_in_launch) {
    signal(SIGSEGV, SIG_DFL);
    return;  // the fault repeats with the default action
  }
  const char* side = "";
  const Buffer* b = buffer_near(info->si_addr, &side);
  char buf[512];
  if (b)
    snprintf(buf, sizeof buf, "illegal memory access at %p, %s of a %zu-byte buffer at %p (%s)",
             info->si_addr, side, b->bytes, static_cast<void*>(b->start), where().c_str());
  else
    snprintf(buf, sizeof buf, "illegal memory access at %p (%s)", info->si_addr, where().c_str());
  fail(cudaErrorLaunchFailure, buf);
  siglongjmp(g_segv_return, 1);
}

void install_segv_handler() {
  static bool done = false;
  if (done) return;
  stack_t ss{};
  ss.ss_sp = g_altstack;
  ss.ss_size = sizeof g_altstack;
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
  done = true;
}

}  // namespace

void syncthreads() { wait(g_block_barrier, "__syncthreads"); }

uint64_t warp_exchange(uint64_t bits, int src_lane, unsigned mask) {
  const int warp = g_current->linear / 32, lane = g_current->linear % 32;
  Barrier& b = g_warp_barriers[warp];
  if (mask != 0xffffffffu) fault("a shuffle with a partial lane mask (not emulated)");
  if (b.expected != 32)
    fault("a full-mask warp shuffle in a warp of " + std::to_string(b.expected) +
          " threads (blockDim is not a multiple of 32)");
  g_warp_slots[warp * 32 + lane] = bits;
  wait(b, "warp shuffle");
  const uint64_t out = src_lane >= 0 && src_lane < 32 ? g_warp_slots[warp * 32 + src_lane] : bits;
  wait(b, "warp shuffle");
  return out;
}

void* dynamic_smem() { return g_smem.data(); }

void check_vector_access(const void* p, size_t bytes) {
  g_vector_accesses += bytes == 16;
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0) {
    char buf[128];
    snprintf(buf, sizeof buf, "misaligned %zu-byte vector access at %p", bytes, p);
    fault(buf);
  }
}

cudaError_t set_max_dynamic_smem(const void* kernel, int attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > kMaxSmem)
    return cudaErrorInvalidValue;
  g_smem_limit[kernel] = value;
  return cudaSuccess;
}

void launch(const void* kernel, const char* name, Extent grid, Extent block, int64_t smem,
            const std::function<void()>& body) {
  g_kernel = name;
  char buf[512];
  snprintf(buf, sizeof buf, "%s grid=(%lld,%lld,%lld) block=(%lld,%lld,%lld) smem=%lld\n", name,
           (long long)grid.x, (long long)grid.y, (long long)grid.z, (long long)block.x,
           (long long)block.y, (long long)block.z, (long long)smem);
  g_log += buf;
  const bool grid_ok = grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffLL &&
                       grid.y <= 65535 && grid.z <= 65535;
  const bool block_ok = block.x >= 1 && block.y >= 1 && block.z >= 1 && block.z <= 64 &&
                        block.x * block.y * block.z <= kMaxThreads;
  if (!grid_ok || !block_ok) {
    fail(cudaErrorInvalidConfiguration, std::string("invalid configuration argument: ") + buf);
    return;
  }
  const auto limit = g_smem_limit.find(kernel);
  const int64_t smem_limit = limit == g_smem_limit.end() ? kDefaultSmem : limit->second;
  if (smem < 0 || smem > (smem_limit > kDefaultSmem ? smem_limit : kDefaultSmem)) {
    fail(cudaErrorInvalidValue, std::string("too much dynamic shared memory (") +
                                    std::to_string(smem) + " bytes, limit " +
                                    std::to_string(smem_limit) + "): " + buf);
    return;
  }
  install_segv_handler();
  gridDim = dim3(grid.x, grid.y, grid.z);
  blockDim = dim3(block.x, block.y, block.z);
  g_body = &body;
  g_fault = false;
  g_in_launch = true;
  if (sigsetjmp(g_segv_return, 1) == 0) {
    for (unsigned z = 0; z < gridDim.z && !g_fault; ++z)
      for (unsigned y = 0; y < gridDim.y && !g_fault; ++y)
        for (unsigned x = 0; x < gridDim.x && !g_fault; ++x) {
          blockIdx = dim3(x, y, z);
          g_smem.assign(static_cast<size_t>(smem), 0xff);  // uninitialised reads see NaNs
          run_block(block.x * block.y * block.z);
        }
  }
  g_in_launch = false;
  g_body = nullptr;
}

}  // namespace cuda_emu

using cuda_emu::g_error;

cudaError_t cudaGetLastError() {
  const cudaError_t e = g_error;
  g_error = cudaSuccess;
  return e;
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}

cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = cuda_emu::g_sms;
  return cudaSuccess;
}

// ------------------------------------------------------------------------- C API for ctypes
using snowtrain::DType;

extern "C" {

// Emulated multiprocessors: few, so the launchers' grid caps and grid-stride loops come into play.
void emu_set_sms(int sms) { cuda_emu::g_sms = sms; }
const char* emu_last_message() { return cuda_emu::g_message.c_str(); }
// Launches ("name grid=(...) block=(...) smem=N" lines) and 16-byte accesses since the last reset.
const char* emu_launch_log() { return cuda_emu::g_log.c_str(); }
uint64_t emu_vector_accesses() { return cuda_emu::g_vector_accesses; }
void emu_reset() {
  cuda_emu::g_log.clear();
  cuda_emu::g_vector_accesses = 0;
  cuda_emu::g_message.clear();
}

// `bytes` at an address that is `offset` (mod 16) past a 16-byte boundary, ending within 32
// bytes of an inaccessible page.
void* emu_alloc(size_t bytes, size_t offset) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t data = (bytes + offset + 32 + page - 1) / page * page;
  void* m = mmap(nullptr, data + 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
  if (m == MAP_FAILED) return nullptr;
  cuda_emu::Buffer b;
  b.map = static_cast<char*>(m);
  b.map_bytes = data + 2 * page;
  b.lo = b.map + page;
  b.hi = b.lo + data;
  mprotect(b.map, page, PROT_NONE);
  mprotect(b.hi, page, PROT_NONE);
  uintptr_t s = (reinterpret_cast<uintptr_t>(b.hi) - bytes) & ~static_cast<uintptr_t>(15);
  s += offset % 16;
  if (s + bytes > reinterpret_cast<uintptr_t>(b.hi)) s -= 16;
  b.start = reinterpret_cast<char*>(s);
  b.bytes = bytes;
  memset(b.lo, cuda_emu::kCanary, data);
  cuda_emu::g_buffers.push_back(b);
  return b.start;
}

// Bytes written outside [p, p + bytes) within the buffer's pages (0 when none).
size_t emu_stray_writes(void* p) {
  for (const cuda_emu::Buffer& b : cuda_emu::g_buffers) {
    if (b.start != p) continue;
    size_t n = 0;
    for (const char* c = b.lo; c < b.start; ++c) n += static_cast<unsigned char>(*c) != cuda_emu::kCanary;
    for (const char* c = b.start + b.bytes; c < b.hi; ++c)
      n += static_cast<unsigned char>(*c) != cuda_emu::kCanary;
    return n;
  }
  return static_cast<size_t>(-1);
}

void emu_free(void* p) {
  for (size_t i = 0; i < cuda_emu::g_buffers.size(); ++i) {
    if (cuda_emu::g_buffers[i].start != p) continue;
    munmap(cuda_emu::g_buffers[i].map, cuda_emu::g_buffers[i].map_bytes);
    cuda_emu::g_buffers.erase(cuda_emu::g_buffers.begin() + i);
    return;
  }
}

int emu_rmsnorm_fwd(const void* x, const void* residual, const void* w, void* y, void* h,
                    float* rstd, int64_t rows, int64_t cols, float eps, int xt, int wt) {
  return snowtrain::rmsnorm_fwd(x, residual, w, y, h, rstd, rows, cols, eps, DType(xt),
                                DType(wt), nullptr);
}

int64_t emu_rmsnorm_bwd_workspace(int64_t rows, int64_t cols) {
  return snowtrain::rmsnorm_bwd_workspace(rows, cols);
}

int emu_rmsnorm_bwd(const void* dy, const void* x, const void* w, const float* rstd,
                    const void* dres, void* dx, void* dw, float* ws, int64_t rows, int64_t cols,
                    int xt, int wt) {
  return snowtrain::rmsnorm_bwd(dy, x, w, rstd, dres, dx, dw, ws, rows, cols, DType(xt),
                                DType(wt), nullptr);
}

int emu_swiglu_fwd(const void* gate, const void* up, void* out, int64_t n, int t) {
  return snowtrain::swiglu_fwd(gate, up, out, n, DType(t), nullptr);
}

int emu_swiglu_bwd(const void* dout, const void* gate, const void* up, void* dgate, void* dup,
                   int64_t n, int t) {
  return snowtrain::swiglu_bwd(dout, gate, up, dgate, dup, n, DType(t), nullptr);
}

int emu_rope(const void* q, const void* k, void* qo, void* ko, const float* cos, const float* sin,
             int64_t batch, int64_t seq, int64_t hq, int64_t hk, int64_t dim, int transpose,
             int t) {
  return snowtrain::rope(q, k, qo, ko, cos, sin, batch, seq, hq, hk, dim, transpose != 0, DType(t),
                         nullptr);
}

int emu_ce_fwd(const void* logits, const int64_t* target, float* row_max, float* sum_exp,
               float* tgt, int64_t rows, int64_t cols, int64_t vocab_start, int t) {
  return snowtrain::ce_fwd(logits, target, row_max, sum_exp, tgt, rows, cols, vocab_start,
                           DType(t), nullptr);
}

int emu_ce_bwd(const void* logits, const int64_t* target, const float* lse, const float* g,
               void* grad, int64_t rows, int64_t cols, int64_t vocab_start, int t) {
  return snowtrain::ce_bwd(logits, target, lse, g, grad, rows, cols, vocab_start, DType(t),
                           nullptr);
}

}  // extern "C"
