// Host-side entry points of snowtrain's fused kernels.
//
// The .cu files that implement these include only the CUDA runtime and <cuda_bf16.h>, so they
// compile with a plain `nvcc -c` (no torch headers); binding.cpp, the one translation unit that
// sees torch, checks and allocates tensors and calls these with raw pointers and the current
// stream. Every tensor passed here is contiguous; rows x cols is the tensor flattened to 2-D.
// Every function returns the launch's cudaError_t (cudaSuccess when nothing was launched).
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace snowtrain {

// Element types the kernels read and write. Accumulation is always fp32.
enum DType : int { kFloat32 = 0, kBFloat16 = 1 };

// ------------------------------------------------------------------------------------- RMSNorm
// y = x / sqrt(mean(x^2) + eps) * w per row; rstd[row] = 1 / sqrt(mean(x^2) + eps) (fp32).
// With `residual` non-null the input is h = x + residual (rounded to x's type, written to
// `h_out`), and the norm is taken of h: the pre-norm block's "add, then normalise".
cudaError_t rmsnorm_fwd(const void* x, const void* residual, const void* w, void* y, void* h_out,
                        float* rstd, int64_t rows, int64_t cols, float eps, DType xt, DType wt,
                        cudaStream_t stream);

// Blocks the backward uses, hence rows of its fp32 workspace (rmsnorm_bwd_workspace x cols).
int64_t rmsnorm_bwd_workspace(int64_t rows, int64_t cols);

// dx = rstd * (w*dy - xhat * mean(w*dy*xhat)) [+ dres], xhat = x*rstd; dw = sum_rows dy*xhat.
// `dres` (nullable) is the gradient arriving at the residual output h of the fused add.
cudaError_t rmsnorm_bwd(const void* dy, const void* x, const void* w, const float* rstd,
                        const void* dres, void* dx, void* dw, float* workspace, int64_t rows,
                        int64_t cols, DType xt, DType wt, cudaStream_t stream);

// -------------------------------------------------------------------------------------- SwiGLU
// out = silu(gate) * up, elementwise over n elements.
cudaError_t swiglu_fwd(const void* gate, const void* up, void* out, int64_t n, DType t,
                       cudaStream_t stream);
// dgate = dout * up * s * (1 + gate * (1 - s)), dup = dout * gate * s, s = sigmoid(gate).
cudaError_t swiglu_bwd(const void* dout, const void* gate, const void* up, void* dgate, void* dup,
                       int64_t n, DType t, cudaStream_t stream);

// ---------------------------------------------------------------------------------------- RoPE
// Rotate-half RoPE on q [batch, seq, hq, dim] and k [batch, seq, hk, dim] (hk may be 0) in one
// launch; cos/sin are fp32 [seq, dim]. transpose=false: out = x*cos + rotate_half(x)*sin;
// transpose=true applies the transposed map (the backward: dx = M^T dy).
cudaError_t rope(const void* q, const void* k, void* q_out, void* k_out, const float* cos,
                 const float* sin, int64_t batch, int64_t seq, int64_t hq, int64_t hk, int64_t dim,
                 bool transpose, DType t, cudaStream_t stream);

// ------------------------------------------------------------------------------- cross-entropy
// One pass over each row of the local vocabulary shard logits [rows, cols]:
//   row_max[r]  = max_j logits[r, j]
//   sum_exp[r]  = sum_j exp(logits[r, j] - row_max[r])         (online, relative to row_max)
//   tgt_logit[r] = logits[r, target[r] - vocab_start] if that column is in this shard, else 0.
// The caller all-reduces the max, rescales sum_exp by exp(row_max - global_max) and
// all-reduces (picked, sum_exp); see snowtrain/kernels/fused.py.
cudaError_t ce_fwd(const void* logits, const int64_t* target, float* row_max, float* sum_exp,
                   float* tgt_logit, int64_t rows, int64_t cols, int64_t vocab_start, DType t,
                   cudaStream_t stream);

// grad[r, j] = (exp(logits[r, j] - lse[r]) - [j == target[r] - vocab_start]) * grad_loss[r],
// written in the logits' type; lse is the global log-sum-exp (fp32), grad_loss fp32.
cudaError_t ce_bwd(const void* logits, const int64_t* target, const float* lse,
                   const float* grad_loss, void* grad, int64_t rows, int64_t cols,
                   int64_t vocab_start, DType t, cudaStream_t stream);

}  // namespace snowtrain
