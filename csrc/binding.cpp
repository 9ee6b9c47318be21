// Torch glue for the fused kernels: CUDA implementations of the `snowtrain_kernels::*` operators.
//
// The operators' schemas, fake (meta) implementations, CPU implementations and autograd formulas
// are registered from Python (snowtrain/kernels/ops.py) before this library is loaded; this file
// only adds the CUDA kernels (TORCH_LIBRARY_IMPL). It checks devices, dtypes and shapes, makes
// inputs contiguous, allocates outputs and calls the launchers of launchers.h on the current
// stream. It is the only translation unit that includes torch; the .cu files do not.
#if !__has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
// A CPU build of torch ships c10/cuda headers without this generated file (which only matters on
// Windows); let the headers do without it, so this file also compiles against a CPU torch in CI.
#define C10_CUDA_NO_CMAKE_CONFIGURE_FILE
#endif

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "launchers.h"

namespace snowtrain {
namespace {

using at::Tensor;

DType dtype_of(const Tensor& t, const char* what) {
  if (t.scalar_type() == at::kBFloat16) return kBFloat16;
  if (t.scalar_type() == at::kFloat) return kFloat32;
  TORCH_CHECK(false, "snowtrain fused kernels: ", what, " must be bfloat16 or float32, got ",
              t.scalar_type());
}

void check_cuda(const Tensor& t, const Tensor& like, const char* what) {
  TORCH_CHECK(t.is_cuda(), "snowtrain fused kernels: ", what, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == like.device(), "snowtrain fused kernels: ", what, " is on ",
              t.device(), " but the input is on ", like.device());
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "snowtrain fused kernel ", op, " failed: ",
              cudaGetErrorString(err));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Rows of a tensor seen as [rows, last dim]: the product of the leading dimensions.
int64_t rows_of(const Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

// --------------------------------------------------------------------------------- RMSNorm

std::tuple<Tensor, Tensor, Tensor> rmsnorm_common(const Tensor& x_, const Tensor* res_,
                                                  const Tensor& w_, double eps) {
  check_cuda(x_, x_, "x");
  check_cuda(w_, x_, "weight");
  TORCH_CHECK(x_.dim() >= 1 && w_.dim() == 1 && w_.size(0) == x_.size(-1),
              "rmsnorm: weight must be [hidden] with hidden = x.shape[-1]; got x ", x_.sizes(),
              ", weight ", w_.sizes());
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous(), w = w_.contiguous();
  const DType xt = dtype_of(x, "x"), wt = dtype_of(w, "weight");
  Tensor res, h;
  if (res_) {
    check_cuda(*res_, x_, "residual");
    TORCH_CHECK(res_->sizes() == x_.sizes() && res_->scalar_type() == x_.scalar_type(),
                "add_rmsnorm: residual must match x in shape and dtype");
    res = res_->contiguous();
    h = at::empty_like(x);
  }
  const int64_t cols = x.size(-1), rows = rows_of(x);
  Tensor y = at::empty_like(x);
  auto rs = x.sizes().vec();
  rs.pop_back();
  Tensor rstd = at::empty(rs, x.options().dtype(at::kFloat));
  check_launch(rmsnorm_fwd(x.data_ptr(), res_ ? res.data_ptr() : nullptr, w.data_ptr(),
                           y.data_ptr(), res_ ? h.data_ptr() : nullptr, rstd.data_ptr<float>(),
                           rows, cols, static_cast<float>(eps), xt, wt, stream()),
               "rmsnorm_fwd");
  return {y, h, rstd};
}

std::tuple<Tensor, Tensor> rmsnorm_fwd_op(const Tensor& x, const Tensor& weight, double eps) {
  auto [y, h, rstd] = rmsnorm_common(x, nullptr, weight, eps);
  return {y, rstd};
}

std::tuple<Tensor, Tensor, Tensor> add_rmsnorm_fwd_op(const Tensor& x, const Tensor& residual,
                                                      const Tensor& weight, double eps) {
  return rmsnorm_common(x, &residual, weight, eps);
}

std::tuple<Tensor, Tensor> rmsnorm_bwd_op(const Tensor& grad_y_, const Tensor& x_,
                                          const Tensor& w_, const Tensor& rstd_,
                                          const std::optional<Tensor>& grad_res_) {
  check_cuda(x_, x_, "x");
  check_cuda(grad_y_, x_, "grad_y");
  check_cuda(w_, x_, "weight");
  check_cuda(rstd_, x_, "rstd");
  TORCH_CHECK(grad_y_.sizes() == x_.sizes() && grad_y_.scalar_type() == x_.scalar_type(),
              "rmsnorm_bwd: grad_y must match x in shape and dtype");
  TORCH_CHECK(rstd_.scalar_type() == at::kFloat && rstd_.numel() == rows_of(x_),
              "rmsnorm_bwd: rstd must be float32 with one value per row");
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous(), dy = grad_y_.contiguous(), w = w_.contiguous(),
               rstd = rstd_.contiguous();
  Tensor dres;
  if (grad_res_.has_value() && grad_res_->defined()) {
    check_cuda(*grad_res_, x_, "grad_res");
    TORCH_CHECK(grad_res_->sizes() == x_.sizes() && grad_res_->scalar_type() == x_.scalar_type(),
                "rmsnorm_bwd: grad_res must match x in shape and dtype");
    dres = grad_res_->contiguous();
  }
  const DType xt = dtype_of(x, "x"), wt = dtype_of(w, "weight");
  const int64_t cols = x.size(-1), rows = rows_of(x);
  Tensor dx = at::empty_like(x), dw = at::empty_like(w);
  Tensor ws = at::empty({rmsnorm_bwd_workspace(rows, cols), cols}, x.options().dtype(at::kFloat));
  check_launch(rmsnorm_bwd(dy.data_ptr(), x.data_ptr(), w.data_ptr(), rstd.data_ptr<float>(),
                           dres.defined() ? dres.data_ptr() : nullptr, dx.data_ptr(),
                           dw.data_ptr(), ws.data_ptr<float>(), rows, cols, xt, wt, stream()),
               "rmsnorm_bwd");
  return {dx, dw};
}

// ---------------------------------------------------------------------------------- SwiGLU

Tensor swiglu_fwd_op(const Tensor& gate_, const Tensor& up_) {
  check_cuda(gate_, gate_, "gate");
  check_cuda(up_, gate_, "up");
  TORCH_CHECK(gate_.sizes() == up_.sizes() && gate_.scalar_type() == up_.scalar_type(),
              "swiglu: gate and up must match in shape and dtype; got ", gate_.sizes(), " ",
              gate_.scalar_type(), " and ", up_.sizes(), " ", up_.scalar_type());
  const c10::cuda::CUDAGuard guard(gate_.device());
  const Tensor gate = gate_.contiguous(), up = up_.contiguous();
  Tensor out = at::empty_like(gate);
  check_launch(swiglu_fwd(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel(),
                          dtype_of(gate, "gate"), stream()),
               "swiglu_fwd");
  return out;
}

std::tuple<Tensor, Tensor> swiglu_bwd_op(const Tensor& grad_, const Tensor& gate_,
                                         const Tensor& up_) {
  check_cuda(gate_, gate_, "gate");
  check_cuda(up_, gate_, "up");
  check_cuda(grad_, gate_, "grad");
  TORCH_CHECK(gate_.sizes() == up_.sizes() && grad_.sizes() == gate_.sizes() &&
                  gate_.scalar_type() == up_.scalar_type() &&
                  grad_.scalar_type() == gate_.scalar_type(),
              "swiglu_bwd: grad, gate and up must match in shape and dtype");
  const c10::cuda::CUDAGuard guard(gate_.device());
  const Tensor gate = gate_.contiguous(), up = up_.contiguous(), grad = grad_.contiguous();
  Tensor dgate = at::empty_like(gate), dup = at::empty_like(up);
  check_launch(swiglu_bwd(grad.data_ptr(), gate.data_ptr(), up.data_ptr(), dgate.data_ptr(),
                          dup.data_ptr(), gate.numel(), dtype_of(gate, "gate"), stream()),
               "swiglu_bwd");
  return {dgate, dup};
}

// ------------------------------------------------------------------------------------ RoPE

void check_rope(const Tensor& x, const Tensor& cos, const Tensor& sin, const char* what) {
  check_cuda(x, x, what);
  check_cuda(cos, x, "cos");
  check_cuda(sin, x, "sin");
  TORCH_CHECK(x.dim() == 4, "rope: ", what, " must be [batch, seq, heads, head_dim], got ",
              x.sizes());
  TORCH_CHECK(x.size(3) % 2 == 0, "rope: head_dim must be even, got ", x.size(3));
  TORCH_CHECK(cos.dim() == 2 && cos.size(0) == x.size(1) && cos.size(1) == x.size(3) &&
                  sin.sizes() == cos.sizes(),
              "rope: cos and sin must be [seq, head_dim] = [", x.size(1), ", ", x.size(3),
              "], got ", cos.sizes(), " and ", sin.sizes());
}

std::tuple<Tensor, Tensor> rope_impl(const Tensor& q_, const Tensor* k_, const Tensor& cos_,
                                     const Tensor& sin_, bool transpose) {
  check_rope(q_, cos_, sin_, "q");
  if (k_) {
    check_rope(*k_, cos_, sin_, "k");
    TORCH_CHECK(k_->size(0) == q_.size(0) && k_->size(1) == q_.size(1) &&
                    k_->size(3) == q_.size(3) && k_->scalar_type() == q_.scalar_type() &&
                    k_->device() == q_.device(),
                "rope_qk: q and k must share batch, seq, head_dim, dtype and device");
  }
  const c10::cuda::CUDAGuard guard(q_.device());
  const Tensor q = q_.contiguous();
  const Tensor k = k_ ? k_->contiguous() : Tensor();
  const Tensor cos = cos_.to(at::kFloat).contiguous(), sin = sin_.to(at::kFloat).contiguous();
  Tensor qo = at::empty_like(q);
  Tensor ko = k_ ? at::empty_like(k) : Tensor();
  check_launch(rope(q.data_ptr(), k_ ? k.data_ptr() : nullptr, qo.data_ptr(),
                    k_ ? ko.data_ptr() : nullptr, cos.data_ptr<float>(), sin.data_ptr<float>(),
                    q.size(0), q.size(1), q.size(2), k_ ? k.size(2) : 0, q.size(3), transpose,
                    dtype_of(q, "q"), stream()),
               "rope");
  return {qo, ko};
}

Tensor rope_op(const Tensor& x, const Tensor& cos, const Tensor& sin, bool transpose) {
  return std::get<0>(rope_impl(x, nullptr, cos, sin, transpose));
}

std::tuple<Tensor, Tensor> rope_qk_op(const Tensor& q, const Tensor& k, const Tensor& cos,
                                      const Tensor& sin, bool transpose) {
  return rope_impl(q, &k, cos, sin, transpose);
}

// --------------------------------------------------------------------------- cross-entropy

std::tuple<Tensor, Tensor, Tensor> ce_fwd_op(const Tensor& logits_, const Tensor& target_,
                                             int64_t vocab_start) {
  check_cuda(logits_, logits_, "logits");
  check_cuda(target_, logits_, "target");
  TORCH_CHECK(logits_.dim() == 2 && target_.dim() == 1 && target_.size(0) == logits_.size(0),
              "cross_entropy: logits must be [rows, vocab_shard] and target [rows]; got ",
              logits_.sizes(), " and ", target_.sizes());
  TORCH_CHECK(logits_.size(1) > 0, "cross_entropy: empty vocabulary shard");
  const c10::cuda::CUDAGuard guard(logits_.device());
  const Tensor logits = logits_.contiguous(), target = target_.to(at::kLong).contiguous();
  const int64_t rows = logits.size(0);
  const auto opts = logits.options().dtype(at::kFloat);
  Tensor vmax = at::empty({rows}, opts), sum_exp = at::empty({rows}, opts),
         picked = at::empty({rows}, opts);
  check_launch(ce_fwd(logits.data_ptr(), target.data_ptr<int64_t>(), vmax.data_ptr<float>(),
                      sum_exp.data_ptr<float>(), picked.data_ptr<float>(), rows, logits.size(1),
                      vocab_start, dtype_of(logits, "logits"), stream()),
               "ce_fwd");
  return {vmax, sum_exp, picked};
}

Tensor ce_bwd_op(const Tensor& grad_loss_, const Tensor& logits_, const Tensor& target_,
                 const Tensor& lse_, int64_t vocab_start) {
  check_cuda(logits_, logits_, "logits");
  check_cuda(target_, logits_, "target");
  check_cuda(lse_, logits_, "lse");
  check_cuda(grad_loss_, logits_, "grad_loss");
  const int64_t rows = logits_.dim() == 2 ? logits_.size(0) : -1;
  TORCH_CHECK(rows >= 0 && target_.numel() == rows && lse_.numel() == rows &&
                  grad_loss_.numel() == rows,
              "cross_entropy backward: logits must be [rows, vocab_shard] and target, lse and "
              "grad_loss hold one value per row");
  const c10::cuda::CUDAGuard guard(logits_.device());
  const Tensor logits = logits_.contiguous(), target = target_.to(at::kLong).contiguous();
  const Tensor lse = lse_.to(at::kFloat).contiguous(),
               g = grad_loss_.to(at::kFloat).contiguous();
  Tensor grad = at::empty_like(logits);
  check_launch(ce_bwd(logits.data_ptr(), target.data_ptr<int64_t>(), lse.data_ptr<float>(),
                      g.data_ptr<float>(), grad.data_ptr(), rows, logits.size(1), vocab_start,
                      dtype_of(logits, "logits"), stream()),
               "ce_bwd");
  return grad;
}

}  // namespace
}  // namespace snowtrain

TORCH_LIBRARY_IMPL(snowtrain_kernels, CUDA, m) {
  m.impl("rmsnorm_fwd", &snowtrain::rmsnorm_fwd_op);
  m.impl("add_rmsnorm_fwd", &snowtrain::add_rmsnorm_fwd_op);
  m.impl("rmsnorm_bwd", &snowtrain::rmsnorm_bwd_op);
  m.impl("swiglu_fwd", &snowtrain::swiglu_fwd_op);
  m.impl("swiglu_bwd", &snowtrain::swiglu_bwd_op);
  m.impl("rope", &snowtrain::rope_op);
  m.impl("rope_qk", &snowtrain::rope_qk_op);
  m.impl("ce_fwd", &snowtrain::ce_fwd_op);
  m.impl("ce_bwd", &snowtrain::ce_bwd_op);
}
