"""Adapters to the kernels of NVIDIA Transformer Engine (`te`) and NVIDIA Apex (`apex`).

Each adapter takes and returns what the torch reference of its op does. Which package offers
which op (an op not listed has no adapter; selecting it is a configuration error):

    te:   rmsnorm (transformer_engine.pytorch.RMSNorm), rope (apply_rotary_pos_emb, fused),
          cross_entropy (transformer_engine.pytorch.cross_entropy.parallel_cross_entropy)
    apex: rmsnorm (FusedRMSNormAffineMixedDtypesFunction),
          rope (apex.transformer.functional.fused_apply_rotary_pos_emb_cached)

These packages are optional and only work on CUDA tensors; nothing here is imported before an
adapter runs.
"""
from __future__ import annotations

import importlib
import importlib.util

import torch

PACKAGES = {
    "te": ("transformer_engine", "NVIDIA Transformer Engine",
           "pip install --no-build-isolation transformer-engine[pytorch]"),
    "apex": ("apex", "NVIDIA Apex", "build it from https://github.com/NVIDIA/apex"),
}

PROVIDES = {
    "te": ("rmsnorm", "rope", "cross_entropy"),
    "apex": ("rmsnorm", "rope"),
}


def installed(backend: str) -> bool:
    module = PACKAGES[backend][0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _import(backend: str, module: str):
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001
        pkg, name, how = PACKAGES[backend]
        raise ImportError(f"kernels backend '{backend}' needs {name} (Python package '{pkg}'): "
                          f"importing {module} failed ({type(e).__name__}: {e}); {how}") from e


# ------------------------------------------------------------------------------ Transformer Engine

_te_norms: dict = {}


def te_rmsnorm(x, weight, eps):
    te = _import("te", "transformer_engine.pytorch")
    key = (weight.shape[0], float(eps), weight.dtype, weight.device)
    norm = _te_norms.get(key)
    if norm is None:
        norm = te.RMSNorm(weight.shape[0], eps=eps, params_dtype=weight.dtype, device=weight.device)
        _te_norms[key] = norm
    # our weight stands in for the module's own parameter, so gradients reach the model's
    return torch.func.functional_call(norm, {"weight": weight}, (x,))


def _te_rope_fn():
    for module in ("transformer_engine.pytorch.attention.rope", "transformer_engine.pytorch.attention"):
        try:
            fn = getattr(importlib.import_module(module), "apply_rotary_pos_emb", None)
        except ImportError:
            continue
        if fn is not None:
            return fn
    _import("te", "transformer_engine.pytorch")
    raise ImportError("kernels backend 'te': this Transformer Engine has no apply_rotary_pos_emb")


def te_apply_rope(x, cos, sin):
    # TE takes the angles [seq, 1, 1, head_dim] and computes cos/sin itself (fp32)
    freqs = torch.atan2(sin.float(), cos.float())[:, None, None, :]
    return _te_rope_fn()(x, freqs, tensor_format="bshd", fused=True)


def te_cross_entropy(logits, target, vocab_start, group, world):
    module = _import("te", "transformer_engine.pytorch.cross_entropy")
    if world > 1:
        import torch.distributed as dist
        rank = dist.get_rank(group)
        if vocab_start != rank * logits.shape[-1]:
            raise ValueError(f"te cross_entropy assumes rank r holds vocabulary ids starting at "
                             f"r * shard = {rank * logits.shape[-1]}, got vocab_start={vocab_start}")
    shape = target.shape
    loss = module.parallel_cross_entropy(logits.reshape(1, -1, logits.shape[-1]),
                                         target.reshape(1, -1), 0.0, False,
                                         group if world > 1 else None)
    return loss.reshape(shape)


# ------------------------------------------------------------------------------------------ Apex

def apex_rmsnorm(x, weight, eps):
    module = _import("apex", "apex.normalization.fused_layer_norm")
    return module.FusedRMSNormAffineMixedDtypesFunction.apply(x, weight, (weight.shape[0],), eps)


def apex_apply_rope(x, cos, sin):
    module = _import("apex", "apex.transformer.functional")
    # Apex wants [seq, batch, heads, dim] and cos/sin [seq, 1, 1, dim]
    out = module.fused_apply_rotary_pos_emb_cached(
        x.transpose(0, 1), cos[:, None, None, :].to(x.dtype), sin[:, None, None, :].to(x.dtype))
    return out.transpose(0, 1)


ADAPTERS = {
    ("te", "rmsnorm"): te_rmsnorm,
    ("te", "rope"): te_apply_rope,
    ("te", "cross_entropy"): te_cross_entropy,
    ("apex", "rmsnorm"): apex_rmsnorm,
    ("apex", "rope"): apex_apply_rope,
}
