"""csrc/'s CUDA kernels, their own source, run on the CPU emulator of tests/cuda_emu and checked
against float64 math: every launcher of csrc/launchers.h on the vectorised and the scalar path,
several blocks per grid and grid-stride loops (2 emulated multiprocessors), the backward's
persistent grid and its opt-in shared memory. Buffers end at inaccessible pages (an access past
the end fails the launch, naming the kernel, block and thread), their neighbouring bytes are
checked for stray writes, and outputs start as NaN so an element the kernel never wrote shows.

The emulator runs each block's threads as fibers with real barriers, so it also catches barriers
some threads skip and misuse of warp shuffles; the last tests build deliberately faulty kernels to
show each check fires. What it cannot show is speed, or races between blocks: the GPU tests
(`gpu` marker) and benchmarks/bench_kernels_gpu.py cover those on a GPU.

Then the whole `fused` backend: csrc/binding.cpp built against torch with the emulated kernels
(registered for CPU tensors), so snowtrain.kernels' operators, their autograd and the model run
through the binding's checks and allocations to the kernels: every op against the torch
reference, and a tiny GQA Llama's training losses with fused kernels equal to those with torch
kernels, in one process and with tensor parallelism over 2 gloo ranks (the vocabulary-parallel
cross-entropy's all-reduces around the kernels).
"""
from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest
import torch

from cuda_emu import build, emulated_fused
from snowtrain.testing import run_distributed

F64, BF16, F32 = torch.float64, torch.bfloat16, torch.float32
DTYPE_CODE = {F32: 0, BF16: 1}
TOL = {BF16: 1e-2, F32: 1e-5}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if build.compiler() is None:
        pytest.skip("no C++ compiler (g++) to build the emulated kernels")
    lib = build.load(build.build(tmp_path_factory.mktemp("cuda_emu")))
    lib.emu_set_sms(2)
    return lib


class Device:
    """Tensors in the emulator's fenced buffers, and launcher calls that check them."""

    def __init__(self, lib):
        self.lib, self.buffers = lib, []

    def empty(self, shape, dtype, offset: int = 0) -> torch.Tensor:
        """A tensor of NaNs (for floats) whose data starts `offset` bytes past a 16-byte
        boundary and ends next to an inaccessible page."""
        numel = 1
        for s in shape:
            numel *= s
        nbytes = max(numel, 1) * torch.empty((), dtype=dtype).element_size()
        ptr = self.lib.emu_alloc(nbytes, offset)
        assert ptr, "emu_alloc failed"
        self.buffers.append(ptr)
        raw = (ctypes.c_ubyte * nbytes).from_address(ptr)
        t = torch.frombuffer(raw, dtype=dtype)[:numel].view(shape)
        t.fill_(float("nan") if dtype.is_floating_point else -1)
        return t

    def put(self, src: torch.Tensor, dtype=None, offset: int = 0) -> torch.Tensor:
        t = self.empty(src.shape, dtype or src.dtype, offset)
        t.copy_(src)
        return t

    def call(self, fn: str, *args):
        self.lib.emu_reset()
        ptrs = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        rc = getattr(self.lib, fn)(*ptrs)
        assert rc == 0, f"{fn}: error {rc}: {self.lib.emu_last_message().decode()}"
        for p in self.buffers:
            assert self.lib.emu_stray_writes(p) == 0, f"{fn} wrote outside a buffer"

    def launches(self) -> list[str]:
        return self.lib.emu_launch_log().decode().splitlines()

    def vector_accesses(self) -> int:
        return self.lib.emu_vector_accesses()

    def free(self):
        for p in self.buffers:
            self.lib.emu_free(p)
        self.buffers.clear()


@pytest.fixture
def dev(lib):
    d = Device(lib)
    yield d
    d.free()


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype, what: str):
    """Every element written (no NaN) and within bf16/fp32 rounding of the float64 value."""
    got = got.double()
    assert not torch.isnan(got).any(), f"{what}: elements never written (or NaN)"
    tol = TOL[dtype]
    scale = want.abs().max().clamp_min(1e-30)
    err = (got - want).abs()
    bad = err > tol * want.abs() + tol * scale
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} elements off; worst "
                           f"{err.max().item():.3g} against max |value| {scale.item():.3g}")


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ RMSNorm
# (rows, cols, x dtype, weight dtype, fused residual add, byte offset of the inputs)
RMSNORM_CASES = [
    (5, 256, BF16, BF16, False, 0),     # 16-byte vectors, one step per thread
    (3, 2048, BF16, F32, True, 0),      # fp32 weight, residual fused
    (2, 16384, BF16, BF16, True, 0),    # two steps per thread; backward needs 64 KiB of smem
    (4, 1000, F32, BF16, False, 4),     # misaligned: one element per thread
    (3, 77, F32, F32, True, 0),         # cols not a multiple of the vector width
    (40, 2048, BF16, BF16, False, 0),   # more rows than the backward's persistent blocks
    (150, 256, BF16, F32, True, 0),     # 128 blocks of 32 threads: more partial dw rows than 32
]


def rmsnorm_f64(h, w, eps):
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w


@pytest.mark.parametrize("rows, cols, xt, wt, fused, offset", RMSNORM_CASES)
def test_emulated_rmsnorm_forward_and_backward(dev, rows, cols, xt, wt, fused, offset):
    g, eps = gen(rows * cols), 1e-5
    x = dev.put(torch.randn(rows, cols, generator=g), xt, offset)
    w = dev.put(1 + 0.1 * torch.randn(cols, generator=g), wt, offset)
    res = dev.put(torch.randn(rows, cols, generator=g), xt, offset) if fused else None
    y, rstd = dev.empty((rows, cols), xt), dev.empty((rows,), F32)
    h = dev.empty((rows, cols), xt) if fused else None
    dev.call("emu_rmsnorm_fwd", x, res, w, y, h, rstd, rows, cols, eps, DTYPE_CODE[xt],
             DTYPE_CODE[wt])
    vectorised = offset == 0 and cols % (8 if xt == BF16 else 4) == 0
    assert (dev.vector_accesses() > 0) == vectorised
    if fused:  # h = x + residual, rounded once to x's dtype
        assert torch.equal(h, (x.double() + res.double()).to(xt))
    h64 = (h if fused else x).double()
    w64 = w.double().requires_grad_()
    h64.requires_grad_()
    y64 = rmsnorm_f64(h64, w64, eps)
    assert_close(y, y64.detach(), xt, "y")
    assert_close(rstd, torch.rsqrt(h64.detach().pow(2).mean(-1) + eps), F32, "rstd")

    dy = dev.put(torch.randn(rows, cols, generator=g), xt, offset)
    dres = dev.put(torch.randn(rows, cols, generator=g), xt, offset) if fused else None
    dx, dw = dev.empty((rows, cols), xt), dev.empty((cols,), wt)
    ws = dev.empty((dev.lib.emu_rmsnorm_bwd_workspace(rows, cols), cols), F32)
    dev.call("emu_rmsnorm_bwd", dy, h if fused else x, w, rstd, dres, dx, dw, ws, rows, cols,
             DTYPE_CODE[xt], DTYPE_CODE[wt])
    dh64, dw64 = torch.autograd.grad(y64, (h64, w64), dy.double())
    if fused:
        dh64 = dh64 + dres.double()
    assert_close(dx, dh64, xt, "dx")
    assert_close(dw, dw64, wt, "dw")
    if cols * 4 > 48 * 1024:  # the backward opted in to more than 48 KiB of shared memory
        assert any("smem=65536" in line for line in dev.launches())


# ------------------------------------------------------------------------------------- SwiGLU
# (n, dtype, byte offset of gate)
SWIGLU_CASES = [(4096, BF16, 0), (1001, BF16, 0), (100_000, F32, 0), (4096, BF16, 2)]


@pytest.mark.parametrize("n, dt, offset", SWIGLU_CASES)
def test_emulated_swiglu_forward_and_backward(dev, n, dt, offset):
    g = gen(n)
    gate = dev.put(3 * torch.randn(n, generator=g), dt, offset)
    up, dout = dev.put(torch.randn(n, generator=g), dt), dev.put(torch.randn(n, generator=g), dt)
    out = dev.empty((n,), dt)
    dev.call("emu_swiglu_fwd", gate, up, out, n, DTYPE_CODE[dt])
    assert (dev.vector_accesses() > 0) == (offset == 0 and n % (8 if dt == BF16 else 4) == 0)
    g64, u64 = gate.double().requires_grad_(), up.double().requires_grad_()
    o64 = torch.nn.functional.silu(g64) * u64
    assert_close(out, o64.detach(), dt, "out")
    dgate, dup = dev.empty((n,), dt), dev.empty((n,), dt)
    dev.call("emu_swiglu_bwd", dout, gate, up, dgate, dup, n, DTYPE_CODE[dt])
    want_g, want_u = torch.autograd.grad(o64, (g64, u64), dout.double())
    assert_close(dgate, want_g, dt, "dgate")
    assert_close(dup, want_u, dt, "dup")


# --------------------------------------------------------------------------------------- RoPE
# (batch, seq, q heads, k heads, head dim, dtype); k heads 0 = q alone, q heads 0 = k alone
ROPE_CASES = [(2, 5, 4, 2, 64, BF16), (1, 3, 2, 1, 12, F32), (2, 4, 3, 0, 16, BF16),
              (1, 6, 0, 2, 32, F32)]


def rope_f64(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


@pytest.mark.parametrize("batch, seq, hq, hk, dim, dt", ROPE_CASES)
@pytest.mark.parametrize("transpose", [False, True])
def test_emulated_rope_on_q_and_k(dev, batch, seq, hq, hk, dim, dt, transpose):
    g = gen(batch * seq * dim + hq)
    # unrelated tables (not cos/sin of one angle), so a mixed-up index cannot cancel out
    cos, sin = dev.put(torch.randn(seq, dim, generator=g)), dev.put(torch.randn(seq, dim, generator=g))
    q = dev.put(torch.randn(batch, seq, hq, dim, generator=g), dt) if hq else None
    k = dev.put(torch.randn(batch, seq, hk, dim, generator=g), dt) if hk else None
    qo = dev.empty((batch, seq, hq, dim), dt) if hq else None
    ko = dev.empty((batch, seq, hk, dim), dt) if hk else None
    dev.call("emu_rope", q, k, qo, ko, cos, sin, batch, seq, hq, hk, dim, int(transpose),
             DTYPE_CODE[dt])
    for x, out, name in ((q, qo, "q"), (k, ko, "k")):
        if x is None:
            continue
        if transpose:  # the adjoint of the forward map, by autograd
            probe = torch.zeros_like(x, dtype=F64, requires_grad=True)
            want, = torch.autograd.grad(rope_f64(probe, cos.double(), sin.double()), probe,
                                        x.double())
        else:
            want = rope_f64(x.double(), cos.double(), sin.double())
        assert_close(out, want, dt, name)


# ------------------------------------------------------------------------------ cross-entropy
# (rows, columns of this vocabulary shard, its first vocabulary id, dtype)
CE_CASES = [(3, 4000, 4000, BF16), (2, 1001, 0, F32), (2, 32000, 32000, BF16), (4, 96, 50, F32)]


@pytest.mark.parametrize("rows, cols, vocab_start, dt", CE_CASES)
def test_emulated_cross_entropy_shard(dev, rows, cols, vocab_start, dt):
    g = gen(rows * cols)
    logits = dev.put(4 * torch.randn(rows, cols, generator=g), dt)
    # targets inside this shard, below it and above it
    tgt = torch.randint(vocab_start, vocab_start + cols, (rows,), generator=g)
    tgt[0] = max(vocab_start - 1, 0) if vocab_start else vocab_start + cols + 3
    target = dev.put(tgt)
    row_max, sum_exp, picked = (dev.empty((rows,), F32) for _ in range(3))
    dev.call("emu_ce_fwd", logits, target, row_max, sum_exp, picked, rows, cols, vocab_start,
             DTYPE_CODE[dt])
    l64 = logits.double()
    m64 = l64.max(-1).values
    assert_close(row_max, m64, F32, "row max")
    assert_close(sum_exp, (l64 - m64[:, None]).exp().sum(-1), F32, "sum of exp")
    local = tgt - vocab_start
    inside = (local >= 0) & (local < cols)
    want_pick = torch.where(inside, l64.gather(1, local.clamp(0, cols - 1)[:, None])[:, 0], 0.0)
    assert_close(picked, want_pick, F32, "target logit")

    # backward against the softmax of the whole vocabulary: this shard's slice of it
    other = 4 * torch.randn(rows, 500, generator=g, dtype=F64)
    lse64 = torch.logsumexp(torch.cat([l64, other], dim=1), dim=1)
    lse, grad_loss = dev.put(lse64.float()), dev.put(torch.rand(rows, generator=g) + 0.5)
    grad = dev.empty((rows, cols), dt)
    dev.call("emu_ce_bwd", logits, target, lse, grad_loss, grad, rows, cols, vocab_start,
             DTYPE_CODE[dt])
    want = (l64 - lse.double()[:, None]).exp()
    want[inside, local[inside]] -= 1
    assert_close(grad, want * grad_loss.double()[:, None], dt, "grad")


# ------------------------------------------------------------- the emulator's checks do fire

FAULTY = r"""
#include "common.cuh"
namespace {
__global__ void reads_past_the_end(const float* x, float* y, int64_t n) {
  const int64_t i = blockIdx.x * blockDim.x + threadIdx.x;
  y[i % n] = x[i];  // no bound check: the last block reads past x
}
__global__ void sync_in_a_branch(float* y) {
  __shared__ float s[32];
  if (threadIdx.x < 32) { s[threadIdx.x] = 1.f; __syncthreads(); }
  y[threadIdx.x] = 0.f;
}
__global__ void unaligned_vector(const float* x, float* y) {
  float a[4];
  snowtrain::load_float<float, 4>(x + 1, a);
  y[0] = a[0];
}
__global__ void big_smem(float* y) {
  extern __shared__ float buf[];
  buf[threadIdx.x] = 1.f;
  y[threadIdx.x] = buf[threadIdx.x];
}
__global__ void block_sum_odd(float* y) {
  __shared__ float red[32];
  y[threadIdx.x] = snowtrain::block_sum(1.f, red);
}
}  // namespace
extern "C" int fault_oob(const float* x, float* y, int64_t n) {
  reads_past_the_end<<<(n + 31) / 32 + 1, 32>>>(x, y, n); return cudaGetLastError(); }
extern "C" int fault_sync(float* y) { sync_in_a_branch<<<1, 64>>>(y); return cudaGetLastError(); }
extern "C" int fault_align(const float* x, float* y) {
  unaligned_vector<<<1, 32>>>(x, y); return cudaGetLastError(); }
extern "C" int fault_smem(float* y) {
  big_smem<<<1, 32, 64 * 1024>>>(y); return cudaGetLastError(); }
extern "C" int fault_warp(float* y) { block_sum_odd<<<1, 48>>>(y); return cudaGetLastError(); }
extern "C" int fault_threads(float* y) { big_smem<<<1, 2048, 16>>>(y); return cudaGetLastError(); }
"""


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    if build.compiler() is None:
        pytest.skip("no C++ compiler (g++) to build the emulated kernels")
    out = tmp_path_factory.mktemp("cuda_emu_faulty")
    (out / "faulty.cu").write_text(FAULTY)
    lib = build.load(build.build(out / "build", extra_units=[out / "faulty.cu"]))
    for name in ("fault_oob", "fault_sync", "fault_align", "fault_smem", "fault_warp",
                 "fault_threads"):
        getattr(lib, name).restype = ctypes.c_int
    return lib


@pytest.mark.parametrize("fn, args, message", [
    ("fault_oob", "xyn", "past the end of a 400-byte buffer"),
    ("fault_sync", "y", "deadlock in kernel sync_in_a_branch, block (0, 0, 0): 32 of 64 threads "
                        "exited while 32 wait at __syncthreads"),
    ("fault_align", "xy", "misaligned 16-byte vector access"),
    ("fault_smem", "y", "too much dynamic shared memory (65536 bytes, limit 49152)"),
    ("fault_warp", "y", "a full-mask warp shuffle in a warp of 16 threads"),
    ("fault_threads", "y", "invalid configuration argument"),
])
def test_emulator_reports_faulty_kernels(faulty, fn, args, message):
    d = Device(faulty)
    try:
        x, y = d.put(torch.ones(100)), d.empty((4096,), F32)
        values = {"x": x.data_ptr(), "y": y.data_ptr(), "n": 100}
        faulty.emu_reset()
        rc = getattr(faulty, fn)(*(ctypes.c_void_p(values[a]) if a != "n" else ctypes.c_int64(100)
                                   for a in args))
        assert rc != 0
        assert message in faulty.emu_last_message().decode()
    finally:
        d.free()


# ------------------------------------------------- the fused backend through binding.cpp

@pytest.fixture(scope="module")
def binding_lib(tmp_path_factory):
    if build.compiler() is None:
        pytest.skip("no C++ compiler (g++) to build the emulated kernels")
    return str(build.build(tmp_path_factory.mktemp("cuda_emu_binding"), torch_binding=True))


def test_fused_backend_through_the_binding_on_emulated_kernels(binding_lib):
    done = subprocess.run([sys.executable, emulated_fused.__file__, binding_lib],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.startswith("ok:"), done.stdout


def test_tensor_parallel_llama_with_fused_kernels_on_emulated_kernels(binding_lib):
    results = run_distributed(emulated_fused.tp_worker, 2, binding_lib, timeout_s=300)
    for want, got, launches in results:
        assert launches > 0
        assert emulated_fused.close(got, want, 1e-4), (got, want)
    assert results[0][1] == results[1][1]  # both ranks report the same (all-reduced) losses
