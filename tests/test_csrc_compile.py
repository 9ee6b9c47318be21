"""Every CUDA source in csrc/ compiles for sm_90 with this machine's nvcc, and the torch binding
compiles against torch's headers, without a GPU (a CPU build of torch is enough).

The .cu kernels include only the CUDA runtime and <cuda_bf16.h>, so each is compiled with a plain
`nvcc -c -arch=sm_90 -std=c++20` (as torch's extension builder does), and ptxas' resource usage
is checked against the block sizes the launchers use; binding.cpp, the one file that includes
torch, is compiled with the host C++ compiler against torch's include directories plus the CUDA
toolkit's (for cudaStream_t and c10/cuda). All compiles run in parallel, once per session; the
launchers the binding calls must be defined by the kernel objects. Skipped, with the reason,
where nvcc or a C++ compiler is missing.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

CSRC = Path(__file__).resolve().parents[1] / "csrc"
CU_FILES = sorted(CSRC.glob("*.cu"))
ARCH = "sm_90"
TIMEOUT_S = 170
# the defines torch.utils.cpp_extension passes to nvcc, so the kernels build the same way there
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                    "--expt-relaxed-constexpr"]


def find_nvcc() -> str | None:
    candidates = [os.environ.get("NVCC")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates.append(shutil.which("nvcc"))
    candidates += sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def cuda_include(nvcc: str) -> str:
    """The toolkit's include directory: from nvcc's own dry run (nvcc may be a wrapper script),
    else next to nvcc, $CUDA_HOME or /usr/local/cuda*."""
    dirs = []
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True,
                             text=True, timeout=60)
        for m in re.finditer(r'INCLUDES="([^"]*)"', dry.stdout + dry.stderr):
            dirs += [flag[2:] for flag in m.group(1).split() if flag.startswith("-I")]
    except (OSError, subprocess.SubprocessError):
        pass
    roots = [Path(os.path.realpath(nvcc)).parents[1]]
    roots += [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    roots += [Path(p) for p in sorted(glob.glob("/usr/local/cuda*"), reverse=True)]
    for root in roots:
        dirs += [str(root / "include"), *glob.glob(str(root / "targets" / "*" / "include"))]
    for d in dirs:
        if (Path(d) / "cuda_runtime_api.h").exists():
            return os.path.normpath(d)
    raise FileNotFoundError(f"no cuda_runtime_api.h found for {nvcc} (looked in {dirs})")


NVCC = find_nvcc()
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, $CUDA_HOME, "
                                "/usr/local/cuda*/bin): cannot compile the CUDA kernels here")


def _run(cmd: list[str]) -> tuple[list[str], int, str, float]:
    start = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        return cmd, p.returncode, p.stdout + p.stderr, time.monotonic() - start
    except subprocess.TimeoutExpired:
        return cmd, -1, f"timed out after {TIMEOUT_S}s", time.monotonic() - start


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """Compile every .cu and binding.cpp in parallel; {source name: (cmd, rc, log, seconds, obj)}."""
    if NVCC is None:
        pytest.skip("nvcc not found")
    out = tmp_path_factory.mktemp("csrc_objs")
    torch_inc = [f"-I{p}" for p in cpp_extension.include_paths()]
    jobs = {}
    for cu in CU_FILES:
        obj = out / (cu.stem + ".o")
        jobs[cu.name] = ([NVCC, "-c", f"-arch={ARCH}", "-O3", "-std=c++20", "-Xcompiler", "-fPIC",
                          "--resource-usage", *TORCH_NVCC_FLAGS, f"-I{CSRC}", *torch_inc, str(cu),
                          "-o", str(obj)], obj)
    if CXX:
        obj = out / "binding.o"
        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        jobs["binding.cpp"] = ([CXX, "-c", "-std=c++20", "-O0", "-fPIC", "-Wall", "-Werror=return-type",
                                f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{CSRC}", *torch_inc,
                                f"-I{cuda_include(NVCC)}", str(CSRC / "binding.cpp"), "-o", str(obj)],
                               obj)
    workers = max(2, os.cpu_count() or 2)
    start = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        results = dict(zip(jobs, pool.map(_run, [cmd for cmd, _ in jobs.values()])))
    out = Compiled({name: (*results[name], jobs[name][1]) for name in jobs})
    out.wall_s = time.monotonic() - start
    return out


class Compiled(dict):
    wall_s: float = 0.0


def test_there_are_kernels():
    assert {p.name for p in CU_FILES} >= {"rmsnorm.cu", "swiglu.cu", "rope.cu", "cross_entropy.cu"}
    assert (CSRC / "binding.cpp").exists()


@pytest.mark.parametrize("cu", [p.name for p in CU_FILES])
def test_kernels_do_not_include_torch(cu):
    """The split that lets CI compile with plain nvcc: torch only in binding.cpp."""
    text = (CSRC / cu).read_text()
    includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', text)
    assert not [i for i in includes if i.split("/")[0] in ("torch", "ATen", "c10")], includes


@needs_nvcc
@pytest.mark.parametrize("cu", [p.name for p in CU_FILES])
def test_cu_compiles_for_sm90(compiled, cu):
    cmd, rc, log, seconds, obj = compiled[cu]
    assert rc == 0, f"{' '.join(cmd)}\n{log}"
    assert obj.stat().st_size > 0
    cuobjdump = shutil.which("cuobjdump") or str(Path(NVCC).with_name("cuobjdump"))
    if os.path.exists(cuobjdump):
        listing = subprocess.run([cuobjdump, "--list-elf", str(obj)], capture_output=True,
                                 text=True, timeout=60).stdout
        assert ARCH in listing, listing


@needs_nvcc
@pytest.mark.skipif(CXX is None, reason="no host C++ compiler (g++/c++) to compile binding.cpp")
def test_binding_compiles_against_torch_headers(compiled):
    cmd, rc, log, seconds, obj = compiled["binding.cpp"]
    assert rc == 0, f"{' '.join(cmd)}\n{log}"


@needs_nvcc
@pytest.mark.skipif(CXX is None or shutil.which("nm") is None, reason="needs a C++ compiler and nm")
def test_binding_calls_only_launchers_the_kernels_define(compiled):
    """Every snowtrain:: function binding.o needs is defined by one of the kernel objects, with
    the same (mangled) signature: the header and the .cu files agree."""
    def symbols(obj, flag):
        out = subprocess.run(["nm", flag, str(obj)], capture_output=True, text=True).stdout
        return {line.split()[-1] for line in out.splitlines() if line.strip()}

    assert compiled["binding.cpp"][1] == 0
    needed = {s for s in symbols(compiled["binding.cpp"][4], "-u") if s.startswith("_ZN9snowtrain")}
    defined = set()
    for cu in CU_FILES:
        assert compiled[cu.name][1] == 0
        defined |= symbols(compiled[cu.name][4], "--defined-only")
    assert needed, "binding.o calls no snowtrain launcher?"
    assert needed <= defined, f"undefined launchers: {sorted(needed - defined)}"


# The most threads per block each kernel is launched with (the launchers' choices).
MAX_THREADS = {"rmsnorm_fwd_kernel": 1024, "rmsnorm_bwd_kernel": 256, "sum_partials_kernel": 1024,
               "swiglu_fwd_kernel": 256, "swiglu_bwd_kernel": 256, "rope_kernel": 256,
               "ce_fwd_kernel": 512, "ce_bwd_kernel": 512}


@needs_nvcc
@pytest.mark.parametrize("cu", [p.name for p in CU_FILES])
def test_kernels_fit_their_blocks_without_spills(compiled, cu):
    """ptxas' resource usage: registers x the largest block fit an SM's 64K registers (else the
    launch fails on the GPU only: "too many resources requested"), and nothing spills."""
    cmd, rc, log, seconds, obj = compiled[cu]
    assert rc == 0, log
    entries = re.findall(r"Compiling entry function '(\w+)'.*?Used (\d+) registers", log, re.S)
    spills = re.findall(r"Function properties for (\w+)\n\s*\d+ bytes stack frame, (\d+) bytes spill "
                        r"stores, (\d+) bytes spill loads", log)
    assert entries, log
    for name, regs in entries:
        kernel = next((k for k in MAX_THREADS if k in name), None)
        assert kernel, f"{name}: add its largest block to MAX_THREADS"
        assert int(regs) * MAX_THREADS[kernel] <= 65536, (name, regs)
    assert not [s for s in spills if s[1] != "0" or s[2] != "0"], spills


@needs_nvcc
def test_compiles_fast_enough(compiled):
    """All compiles together (in parallel) stay inside CI's budget of 3 minutes."""
    per_file = {name: round(r[3], 1) for name, r in compiled.items()}
    assert compiled.wall_s < 180, (round(compiled.wall_s, 1), per_file)
