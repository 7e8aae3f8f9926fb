"""Builds the optional native extensions; fastopt works without them (Numba, then NumPy).

FASTOPT_CUDA=0/1 forces the CUDA extension off/on (default: on when nvcc is found). A failed
build of either extension is skipped with one line, except that FASTOPT_CUDA=1 makes a failed
CUDA build an error.
"""
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -fno-trapping-math: selects on float compares (Lion's sign) become blends, not branches; no
# result changes (it only stops GCC from keeping FP exception flags exact).
CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
             "-fvisibility=hidden"]
# sm_80 and sm_90 machine code plus compute_90 PTX for newer GPUs. --fmad=false: no product
# is fused into a sum, so the norm and Halton bits (and the optimizer's) equal the CPU's.
NVCC_FLAGS = ["-std=c++17", "-O3", "--fmad=false", "-Icsrc", "-Xcompiler", "-fPIC",
              "-gencode=arch=compute_80,code=sm_80",
              "-gencode=arch=compute_90,code=[sm_90,compute_90]"]
CUDA = os.environ.get("FASTOPT_CUDA", "")


def cuda_home(nvcc):
    if not nvcc:
        raise RuntimeError("FASTOPT_CUDA=1 but nvcc is not on PATH")
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                 os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            return home
    raise RuntimeError(f"nvcc is {nvcc} but no CUDA include directory was found; set CUDA_HOME")


def extensions():
    try:
        from pybind11.setup_helpers import ParallelCompile, Pybind11Extension
    except ImportError:  # no pybind11: the pure-Python package still installs, and says so
        cpu = Extension("fastopt._C", [])
        cpu.missing = "pybind11 is not installed in the build environment"
        return [cpu]
    ParallelCompile("FASTOPT_BUILD_JOBS", default=0).install()  # 0 = all cores
    cpu = Pybind11Extension(
        "fastopt._C", sorted(glob("csrc/cpu/*.cpp")) + ["csrc/bindings.cpp"],
        include_dirs=["csrc"], cxx_std=17, extra_compile_args=CXX_FLAGS,
        extra_link_args=["-fopenmp"])
    nvcc = shutil.which("nvcc")
    if CUDA == "0" or (nvcc is None and CUDA != "1"):
        return [cpu]
    # The CUDA runtime is linked statically: importing needs no libcudart, only a driver to run.
    gpu = Pybind11Extension("fastopt._C_cuda", ["csrc/cuda/bindings.cpp"], cxx_std=17,
                            include_dirs=["csrc"], extra_compile_args=["-O2"],
                            libraries=["cudart_static", "rt", "pthread", "dl"])
    gpu.cu_sources, gpu.nvcc = sorted(glob("csrc/cuda/*.cu")), nvcc
    return [cpu, gpu]


class OptionalBuildExt(build_ext):
    """A failed native build leaves a working package on the Numba/NumPy backends."""

    def build_extension(self, ext):
        try:
            if hasattr(ext, "missing"):
                raise RuntimeError(ext.missing)
            if hasattr(ext, "cu_sources"):
                ext.extra_objects = self.compile_cuda(ext)
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - any compiler failure means: skip it, say so once
            if hasattr(ext, "cu_sources") and CUDA == "1":
                raise
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            rest = ("device arrays will use the numba-cuda backend" if hasattr(ext, "cu_sources")
                    else "fastopt will run on the numba/numpy backends")
            print(f"fastopt: native build of {ext.name} skipped ({first}); {rest}",
                  file=sys.stderr)
            self._skipped = getattr(self, "_skipped", set()) | {ext.name}

    def compile_cuda(self, ext):
        """nvcc -c each .cu file (in parallel; unchanged ones are kept) -> object files."""
        home = cuda_home(ext.nvcc)
        ext.include_dirs.append(os.path.join(home, "include"))
        ext.library_dirs.append(os.path.join(home, "lib64"))
        headers = glob("csrc/common/*.h") + glob("csrc/cuda/*.h") + glob("csrc/cuda/*.cuh")

        def one(src):
            obj = os.path.join(self.build_temp, src + ".o")
            newest = max(os.path.getmtime(f) for f in [src, *headers, __file__])
            if self.force or not os.path.exists(obj) or os.path.getmtime(obj) < newest:
                os.makedirs(os.path.dirname(obj), exist_ok=True)
                out = subprocess.run([ext.nvcc, *NVCC_FLAGS, "-c", src, "-o", obj],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.stderr.write(out.stdout + out.stderr if CUDA == "1" else "")
                    errors = [ln for ln in out.stderr.splitlines() if "error" in ln]
                    raise RuntimeError(f"nvcc failed on {src}: {(errors or ['?'])[0]}")
            return obj

        with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
            return list(pool.map(one, ext.cu_sources))

    def copy_extensions_to_source(self):
        built = [e for e in self.extensions if e.name not in getattr(self, "_skipped", ())]
        self.extensions, everything = built, self.extensions
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = everything


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
