"""Finding or building the CUDA extension that implements the `snowtrain_kernels` operators.

Order of attempts, once per process (the outcome is cached):

1. a prebuilt library: the module `snowtrain_kernels_C` installed by `pip install ./csrc`
   (csrc/setup.py), or the file named by $SNOWTRAIN_KERNELS_LIB;
2. a just-in-time build of csrc/*.cu + csrc/binding.cpp with `torch.utils.cpp_extension.load`
   (needs ninja, nvcc and a CUDA build of torch; about a minute, cached under
   $TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions) unless $SNOWTRAIN_KERNELS_JIT=0.

Nothing is attempted without a CUDA device. `load_extension()` returns whether the CUDA kernels
are registered; `extension_error()` says why not.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import torch

from . import ops  # noqa: F401  (the operators must be defined before their CUDA kernels load)

MODULE_NAME = "snowtrain_kernels_C"
CSRC = Path(os.environ.get("SNOWTRAIN_CSRC", Path(__file__).resolve().parents[2] / "csrc"))

_lock = threading.Lock()
_state: dict = {"loaded": None, "error": None, "path": None}


def sources(csrc: Path = CSRC) -> list[Path]:
    """The extension's translation units: every .cu kernel file and the torch binding."""
    return sorted(csrc.glob("*.cu")) + [csrc / "binding.cpp"]


def extension_loaded() -> bool:
    return bool(_state["loaded"])


def extension_error() -> str | None:
    return _state["error"]


def _prebuilt() -> str | None:
    path = os.environ.get("SNOWTRAIN_KERNELS_LIB")
    if path:
        return path
    spec = importlib.util.find_spec(MODULE_NAME)
    return spec.origin if spec is not None and spec.origin else None


def _jit(verbose: bool) -> str:
    from torch.utils import cpp_extension

    srcs = sources()
    missing = [str(p) for p in srcs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"kernel sources not found: {missing} (set SNOWTRAIN_CSRC to the "
                                f"repository's csrc/ directory)")
    cpp_extension.load(
        name=MODULE_NAME, sources=[str(p) for p in srcs],
        extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-lineinfo"],
        extra_include_paths=[str(CSRC)], is_python_module=False, verbose=verbose)
    return "jit:" + MODULE_NAME


@torch.compiler.disable
def load_extension(verbose: bool = False, *, force: bool = False) -> bool:
    """Register the CUDA kernels (load a prebuilt library or build one); True on success.
    Failure is remembered (see `extension_error()`) and not retried unless `force`."""
    with _lock:
        if _state["loaded"] is not None and not force:
            return _state["loaded"]
        _state["loaded"], _state["error"] = False, None
        if torch.version.cuda is None:
            _state["error"] = f"this torch ({torch.__version__}) is a CPU build"
            return False
        if not torch.cuda.is_available():
            _state["error"] = "no CUDA device is visible"
            return False
        try:
            prebuilt = _prebuilt()
            if prebuilt:
                torch.ops.load_library(prebuilt)
                _state["path"] = prebuilt
            elif os.environ.get("SNOWTRAIN_KERNELS_JIT", "1") == "0":
                raise RuntimeError("no prebuilt snowtrain_kernels_C and SNOWTRAIN_KERNELS_JIT=0")
            else:
                _state["path"] = _jit(verbose)
        except Exception as e:  # noqa: BLE001 - any build/load failure means "not available"
            _state["error"] = f"{type(e).__name__}: {e}"
            return False
        _state["loaded"] = True
        return True
