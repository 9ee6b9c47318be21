"""Ahead-of-time build of snowtrain's fused kernels (on a machine with nvcc and a CUDA torch):

    pip install --no-build-isolation ./csrc        # installs the library snowtrain_kernels_C

snowtrain.kernels finds it by module name and loads it with torch.ops.load_library; without it
the kernels are compiled on first use (torch.utils.cpp_extension.load, needs ninja). Set
TORCH_CUDA_ARCH_LIST (e.g. "9.0") to choose the GPU architectures; by default the visible GPU's.
"""
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

here = Path(__file__).resolve().parent
sources = sorted(str(p.relative_to(here)) for p in here.glob("*.cu")) + ["binding.cpp"]

setup(
    name="snowtrain-kernels",
    version="0.1.0",
    description="snowtrain's fused CUDA kernels (RMSNorm, SwiGLU, RoPE, vocab-parallel cross-entropy)",
    ext_modules=[CUDAExtension(
        name="snowtrain_kernels_C", sources=sources, include_dirs=[str(here)],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]})],
    cmdclass={"build_ext": BuildExtension},
)
