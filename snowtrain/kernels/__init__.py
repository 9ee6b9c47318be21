"""One Python entry per fused op. Each has a torch reference here; fused CUDA versions plug in
through `snowtrain.kernels.dispatch` where they are built."""
from .reference import apply_rope, rmsnorm, rope_cos_sin, swiglu, vocab_parallel_cross_entropy

__all__ = ["apply_rope", "rmsnorm", "rope_cos_sin", "swiglu", "vocab_parallel_cross_entropy"]
