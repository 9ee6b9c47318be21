"""One Python entry per fused op. Each has a torch reference (`snowtrain.kernels.reference`);
the CUDA versions (csrc/, registered as `torch.ops.snowtrain_kernels.*` by
`snowtrain.kernels.ops`) run where they are built and the tensors are on a GPU, chosen per op
through `configure` / `set_backends` (see `snowtrain.kernels.dispatch`)."""
from . import reference
from .build import extension_error, extension_loaded, load_extension
from .dispatch import (BACKENDS, OPS, KernelBackendUnavailable, KernelConfigError,
                       KernelFallbackError, KernelFallbackWarning, KernelsConfig, add_rmsnorm,
                       apply_rope, apply_rope_qk, backend_for, configure, current,
                       effective_backend, prepare, rmsnorm, set_backends, swiglu, use_backends,
                       vocab_parallel_cross_entropy)
from .reference import rope_cos_sin

__all__ = [
    "BACKENDS", "OPS", "KernelBackendUnavailable", "KernelConfigError", "KernelFallbackError",
    "KernelFallbackWarning", "KernelsConfig", "add_rmsnorm", "apply_rope", "apply_rope_qk",
    "backend_for", "configure", "current", "effective_backend", "extension_error",
    "extension_loaded", "load_extension", "prepare", "reference", "rmsnorm", "rope_cos_sin",
    "set_backends", "swiglu", "use_backends", "vocab_parallel_cross_entropy",
]
