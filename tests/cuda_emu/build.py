"""Builds csrc/'s kernels for the CPU emulator (include/cuda_emu.h) and loads them with ctypes.

The .cu sources are compiled unchanged except for two rewrites the C++ compiler needs: a launch
`kernel<<<grid, block, smem, stream>>>(args)` becomes
`::cuda_emu::Launcher("kernel", grid, block, smem, stream)(kernel, args)`, and
`extern __shared__ T name[];` a pointer to the launch's dynamic shared memory.

With `torch_binding`, csrc/binding.cpp joins them, registered for CPU tensors instead of CUDA
ones (two more rewrites, below; include/c10/cuda stands in for the CUDA guard and stream), so
that `torch.ops.load_library` of the result sends the `snowtrain_kernels` operators on CPU tensors
through the binding to the emulated kernels.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
CSRC = HERE.parents[1] / "csrc"

# a launch starts a statement: after a line start, `;`, `{` or `}`
_LAUNCH = re.compile(r"(^|[;{}])(\s*)([^;{}\n]*?)<<<(.*?)>>>\(", re.MULTILINE)
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\s*\]\s*;")


def rewrite(source: str) -> str:
    """The source with its launches and dynamic shared memory in the emulator's C++ form."""
    def launch(m: re.Match) -> str:
        kernel = m.group(3).strip()
        return f'{m.group(1)}{m.group(2)}::cuda_emu::Launcher("{kernel}", {m.group(4)})({kernel}, '

    out = _LAUNCH.sub(launch, source)
    out = _EXTERN_SHARED.sub(r"\1* \2 = static_cast<\1*>(::cuda_emu::dynamic_smem());", out)
    if "<<<" in out:
        raise ValueError("a kernel launch the emulator's rewrite does not understand is left")
    return out


# binding.cpp's two CUDA-only spots, each expected exactly once
BINDING_REWRITES = (("t.is_cuda()", "t.is_cpu()"),
                    ("TORCH_LIBRARY_IMPL(snowtrain_kernels, CUDA, m)",
                     "TORCH_LIBRARY_IMPL(snowtrain_kernels, CPU, m)"))


def rewrite_binding(source: str) -> str:
    for old, new in BINDING_REWRITES:
        if source.count(old) != 1:
            raise ValueError(f"binding.cpp: expected `{old}` once, found it {source.count(old)} "
                             "times; update tests/cuda_emu/build.py's BINDING_REWRITES")
        source = source.replace(old, new)
    return source


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


def build(out_dir: Path, csrc: Path = CSRC, extra_units: list[Path] = (),
          torch_binding: bool = False) -> Path:
    """Compile every csrc/*.cu (and `extra_units`, .cu files that include csrc's headers) plus
    the emulator's runtime into out_dir/libsnowtrain_emu.so (with `torch_binding`, binding.cpp
    too, linked against torch)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    src_dir = out_dir / "src"
    src_dir.mkdir(parents=True, exist_ok=True)
    for p in [*csrc.glob("*.cu"), *csrc.glob("*.cuh"), *csrc.glob("*.h"), *map(Path, extra_units)]:
        (src_dir / p.name).write_text(rewrite(p.read_text()))
    include = [f"-I{HERE / 'include'}", f"-I{src_dir}"]
    base = ["-O2", "-g", "-fPIC", "-U_FORTIFY_SOURCE", "-Wall", "-Wno-unknown-pragmas",
            "-Wno-unused-function"]
    units = {u: ["-std=c++17", *base, *include] for u in sorted(src_dir.glob("*.cu"))}
    units[HERE / "runtime.cpp"] = ["-std=c++17", *base, *include]
    link = []
    if torch_binding:
        import torch
        from torch.utils import cpp_extension
        (src_dir / "binding.cpp").write_text(rewrite_binding((csrc / "binding.cpp").read_text()))
        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        units[src_dir / "binding.cpp"] = [
            "-std=c++20", *base, f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *include,
            *(f"-I{p}" for p in cpp_extension.include_paths())]
        libs = cpp_extension.library_paths()
        link = [*(f"-L{p}" for p in libs), *(f"-Wl,-rpath,{p}" for p in libs),
                "-ltorch", "-ltorch_cpu", "-lc10"]

    def compile_one(unit: Path) -> Path:
        obj = out_dir / (unit.name + ".o")
        cmd = [cxx, *units[unit], "-x", "c++", "-c", str(unit), "-o", str(obj)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"emulator build of {unit.name} failed:\n{done.stderr[-4000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=4) as pool:
        objects = list(pool.map(compile_one, units))
    lib = out_dir / "libsnowtrain_emu.so"
    done = subprocess.run([cxx, "-shared", "-o", str(lib), *map(str, objects), *link],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"emulator link failed:\n{done.stderr[-4000:]}")
    return lib


def load(lib_path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(lib_path))
    P, I64, F32, INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    signatures = {
        "emu_set_sms": (None, [INT]),
        "emu_last_message": (ctypes.c_char_p, []),
        "emu_launch_log": (ctypes.c_char_p, []),
        "emu_vector_accesses": (ctypes.c_uint64, []),
        "emu_reset": (None, []),
        "emu_alloc": (P, [ctypes.c_size_t, ctypes.c_size_t]),
        "emu_stray_writes": (ctypes.c_size_t, [P]),
        "emu_free": (None, [P]),
        "emu_rmsnorm_fwd": (INT, [P, P, P, P, P, P, I64, I64, F32, INT, INT]),
        "emu_rmsnorm_bwd_workspace": (I64, [I64, I64]),
        "emu_rmsnorm_bwd": (INT, [P, P, P, P, P, P, P, P, I64, I64, INT, INT]),
        "emu_swiglu_fwd": (INT, [P, P, P, I64, INT]),
        "emu_swiglu_bwd": (INT, [P, P, P, P, P, I64, INT]),
        "emu_rope": (INT, [P, P, P, P, P, P, I64, I64, I64, I64, I64, INT, INT]),
        "emu_ce_fwd": (INT, [P, P, P, P, P, I64, I64, I64, INT]),
        "emu_ce_bwd": (INT, [P, P, P, P, P, I64, I64, I64, INT]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib
