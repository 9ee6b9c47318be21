"""Per-op choice of implementation, and the functions the model calls.

Four ops, each with its own backend:

    op             functions                                   backends
    rmsnorm        rmsnorm, add_rmsnorm                        torch, fused, te, apex
    swiglu         swiglu                                      torch, fused
    rope           apply_rope, apply_rope_qk                   torch, fused, te, apex
    cross_entropy  vocab_parallel_cross_entropy                torch, fused, te

`torch` is the reference in `snowtrain.kernels.reference` (the default everywhere); `fused` is
snowtrain's CUDA extension (csrc/); `te` / `apex` call NVIDIA Transformer Engine / Apex.

    from snowtrain import kernels
    kernels.configure({"rmsnorm": "fused", "swiglu": "fused", "rope": "fused",
                       "cross_entropy": "fused"})          # what ModelConfig.kernels holds
    kernels.set_backends(rope="torch")                     # change some ops, keep the others
    kernels.backend_for("rope")                            # -> "torch"
    with kernels.use_backends(cross_entropy="torch"): ...  # temporarily

`fused` on CPU tensors, on a dtype the kernels do not take (they take bfloat16 and float32), or
where the extension cannot be loaded or built falls back to the torch reference with one
`KernelFallbackWarning` per op and reason; with `strict` it raises `KernelFallbackError`
instead. Selecting `te` or `apex` when the package is not installed raises
`KernelBackendUnavailable` (an ImportError naming the package) at configuration time; an op the
package does not offer, an unknown op or an unknown backend raise `KernelConfigError`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Mapping

import torch

from ..config import KERNEL_OPS, KernelsConfig, suggest
from . import build, external, reference
from . import ops as _fused

OPS = KERNEL_OPS
BACKENDS = ("torch", "fused", "te", "apex")
DEFAULT_BACKEND = "torch"
SUPPORTED = {op: ("torch", "fused") + tuple(b for b in ("te", "apex") if op in external.PROVIDES[b])
             for op in OPS}
FUSED_DTYPES = (torch.bfloat16, torch.float32)


class KernelConfigError(ValueError):
    """An unknown op or backend, or a backend that does not offer the op."""


class KernelBackendUnavailable(ImportError):
    """The selected backend's package (Transformer Engine, Apex) is not installed."""


class KernelFallbackError(RuntimeError):
    """`fused` was selected with strict=True but cannot run on these tensors."""


class KernelFallbackWarning(UserWarning):
    """`fused` was selected but the torch reference runs instead (once per op and reason)."""


_config = KernelsConfig()
_warned: set[tuple[str, str]] = set()



def _check_op(op: str) -> str:
    if op not in OPS:
        raise KernelConfigError(f"unknown kernel op '{op}'{suggest(str(op), OPS)}; "
                                f"the ops are: {', '.join(OPS)}")
    return op


def _check_backend(op: str, backend) -> str:
    if backend is None:
        return DEFAULT_BACKEND
    if not isinstance(backend, str):
        raise KernelConfigError(f"kernels.{op}: the backend must be a string, one of "
                                f"{', '.join(BACKENDS)}; got {backend!r}")
    b = backend.strip().lower()
    if b not in BACKENDS:
        raise KernelConfigError(f"kernels.{op}: unknown backend '{backend}'{suggest(b, BACKENDS)}; "
                                f"the backends are: {', '.join(BACKENDS)}")
    if b not in SUPPORTED[op]:
        raise KernelConfigError(f"kernels.{op}: backend '{b}' has no {op} kernel; "
                                f"{op} can use: {', '.join(SUPPORTED[op])}")
    if b in external.PACKAGES and not external.installed(b):
        pkg, name, how = external.PACKAGES[b]
        raise KernelBackendUnavailable(
            f"kernels.{op}: backend '{b}' needs {name} (Python package '{pkg}'), which is not "
            f"installed; {how}, or choose 'fused' or 'torch'")
    return b


def _as_mapping(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, str):
        return {op: config for op in OPS}
    if isinstance(config, Mapping):
        return dict(config)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    names = [n for n in (*OPS, "strict") if hasattr(config, n)]
    if names:
        return {n: getattr(config, n) for n in names}
    raise KernelConfigError(f"kernels config must be a mapping of op to backend, a backend name "
                            f"or a KernelsConfig; got {type(config).__name__}")


def _validated(base: KernelsConfig, updates: dict, strict) -> KernelsConfig:
    new = dataclasses.replace(base)
    for key, value in updates.items():
        if key == "strict":
            new.strict = bool(value)
            continue
        setattr(new, _check_op(key), _check_backend(key, value))
    if strict is not None:
        new.strict = bool(strict)
    return new


def configure(config=None, /, *, strict: bool | None = None) -> KernelsConfig:
    """Set the backend of every op: ops the config does not name get the default ('torch').
    `config` is a mapping {op: backend} (the ModelConfig `kernels:` mapping, optionally with
    `strict`), a KernelsConfig (or any object with those attributes), one backend name for all
    ops, or None for the defaults. Validates everything before changing anything."""
    global _config
    _config = _validated(KernelsConfig(), _as_mapping(config), strict)
    _warned.clear()
    return current()


def set_backends(config=None, /, *, strict: bool | None = None, **backends) -> KernelsConfig:
    """Change the backend of the named ops only: set_backends({"rope": "fused"}) or
    set_backends(rope="fused")."""
    global _config
    updates = {**_as_mapping(config), **backends}
    _config = _validated(_config, updates, strict)
    _warned.clear()
    return current()


def backend_for(op: str) -> str:
    """The backend configured for `op` (before any fallback)."""
    return getattr(_config, _check_op(op))


def current() -> KernelsConfig:
    return dataclasses.replace(_config)


@contextlib.contextmanager
def use_backends(config=None, /, *, strict: bool | None = None, **backends):
    """Temporarily change some ops' backends (like set_backends); restored on exit."""
    global _config
    saved = _config
    set_backends(config, strict=strict, **backends)
    try:
        yield current()
    finally:
        _config = saved


def prepare(verbose: bool = False) -> dict[str, str]:
    """Load (or build) the CUDA extension now if any op is set to 'fused' and a GPU is visible,
    rather than on first use; call it before torch.compile. Returns the backend each op will
    run with on CUDA tensors."""
    if any(b == "fused" for b in _config.backends().values()) and torch.cuda.is_available():
        build.load_extension(verbose)
    return {op: _effective(op, "cuda" if torch.cuda.is_available() else "cpu") for op in OPS}


def _fused_problem(tensors, dtype_tensors) -> str | None:
    dev = tensors[0].device
    if dev.type != "cuda":
        return f"the tensors are on {dev.type}"
    for t in dtype_tensors:
        if t.dtype not in FUSED_DTYPES:
            return f"dtype {t.dtype} is not supported (bfloat16, float32)"
    loaded = build._state["loaded"]
    if loaded is None:
        loaded = build.load_extension()
    if not loaded:
        return f"the CUDA extension is not available ({build.extension_error()})"
    return None


def _effective(op: str, device: str) -> str:
    b = backend_for(op)
    if b != "fused":
        return b
    if device != "cuda":
        return "torch"
    return "fused" if (build._state["loaded"] or build.load_extension()) else "torch"


def effective_backend(op: str, *tensors: torch.Tensor) -> str:
    """The backend that would run `op` on these tensors (after any fallback), without warning."""
    b = backend_for(op)
    if b != "fused" or not tensors:
        return b
    return "torch" if _fused_problem(tensors, tensors) else "fused"


def _select(op: str, tensors, dtype_tensors) -> str:
    b = getattr(_config, op)
    if b != "fused":
        return b
    problem = _fused_problem(tensors, dtype_tensors)
    if problem is None:
        return "fused"
    if _config.strict:
        raise KernelFallbackError(f"kernels.{op}: backend 'fused' cannot run: {problem} "
                                  f"(strict=True; use strict=False to fall back to torch)")
    if (op, problem) not in _warned:
        _warned.add((op, problem))
        warnings.warn(f"kernels.{op}: backend 'fused' cannot run ({problem}); using the torch "
                      f"reference instead", KernelFallbackWarning, stacklevel=3)
    return "torch"


# ------------------------------------------------------------------------- the ops, dispatched

def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama RMSNorm over the last dim, fp32 math, returned in x's dtype."""
    b = _select("rmsnorm", (x, weight), (x, weight))
    if b == "fused":
        return _fused.rmsnorm(x, weight, eps)
    if b == "torch":
        return reference.rmsnorm(x, weight, eps)
    return external.ADAPTERS[(b, "rmsnorm")](x, weight, eps)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rmsnorm(h), h) with h = x + residual, in one kernel with the `fused` backend."""
    b = _select("rmsnorm", (x, residual, weight), (x, residual, weight))
    if b == "fused" and x.dtype == residual.dtype and x.shape == residual.shape:
        return _fused.add_rmsnorm(x, residual, weight, eps)
    if b in ("fused", "torch"):
        return reference.add_rmsnorm(x, residual, weight, eps)
    h = x + residual
    return external.ADAPTERS[(b, "rmsnorm")](h, weight, eps), h


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up."""
    b = _select("swiglu", (gate, up), (gate, up))
    if b == "fused" and gate.dtype == up.dtype and gate.shape == up.shape:
        return _fused.swiglu(gate, up)
    return reference.swiglu(gate, up)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x [batch, seq, heads, head_dim], cos/sin [seq, head_dim]."""
    b = _select("rope", (x, cos, sin), (x,))
    if b == "fused":
        return _fused.apply_rope(x, cos, sin)
    if b == "torch":
        return reference.apply_rope(x, cos, sin)
    return external.ADAPTERS[(b, "rope")](x, cos, sin)


def apply_rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on q and k (one launch with `fused`; k may have fewer heads)."""
    b = _select("rope", (q, k, cos, sin), (q, k))
    if b == "fused" and q.dtype == k.dtype:
        return _fused.apply_rope_qk(q, k, cos, sin)
    if b in ("fused", "torch"):
        return reference.apply_rope_qk(q, k, cos, sin)
    fn = external.ADAPTERS[(b, "rope")]
    return fn(q, cos, sin), fn(k, cos, sin)


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, vocab_start: int = 0,
                                 group=None, world: int = 1) -> torch.Tensor:
    """Per-token loss [*] (fp32): logits [*, vocab/world] hold vocabulary ids
    [vocab_start, vocab_start + shard); never gathers the full logits."""
    b = _select("cross_entropy", (logits, target), (logits,))
    if b == "fused":
        return _fused.vocab_parallel_cross_entropy(logits, target, vocab_start, group, world)
    if b == "torch":
        return reference.vocab_parallel_cross_entropy(logits, target, vocab_start, group, world)
    return external.ADAPTERS[(b, "cross_entropy")](logits, target, vocab_start, group, world)
