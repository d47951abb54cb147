"""Build and install pyengine.

The Python package is ``pyengine``; the Triton kernels in ``kernels/`` are installed as ``pyengine.kernels``.
The C++/CUDA extension ``pyengine._C`` is built from ``csrc/`` when that folder holds sources: ``*.cpp`` always,
``*.cu`` only when the installed torch was built with CUDA (a CPU-only torch, as on CI, cannot link CUDA code;
CI compile-checks the ``.cu`` files separately with plain ``nvcc``).

Install with ``pip install --no-build-isolation -e .``: build isolation would download a CUDA torch.
"""
import glob
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def extension_modules():
    cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cu = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    if not cpp and not cu:
        return [], {}
    import torch
    from torch.utils import cpp_extension

    openmp = ["-fopenmp"]
    # -ffp-contract=off: no FMA contraction, so every target_clones variant rounds the same way.
    # -g0: no debug info (Python's CFLAGS bring -g): 30% of the compile time and most of the .so's size.
    cxx_flags = ["-O3", "-g0", "-std=c++17", "-ffp-contract=off", *openmp]
    if cu and torch.version.cuda is not None:
        ext = cpp_extension.CUDAExtension(
            "pyengine._C",
            cpp + cu,
            extra_compile_args={"cxx": cxx_flags + ["-DPYENGINE_WITH_CUDA"], "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=openmp,
        )
    else:
        ext = cpp_extension.CppExtension(
            "pyengine._C", cpp, extra_compile_args=cxx_flags, extra_link_args=openmp
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = extension_modules()

setup(
    name="pyengine",
    version="0.1.0",
    description="GPU-kernel-accelerated 3D human pose lifting (MHFormer, MixSTE, HoT, SUSA) with eager references",
    python_requires=">=3.10",
    packages=["pyengine", "pyengine.bench", "pyengine.models", "pyengine.ops", "pyengine.nn", "pyengine.data",
              "pyengine.kernels", "pyengine.keypoints"],
    package_dir={"pyengine": "pyengine", "pyengine.kernels": "kernels"},
    package_data={"pyengine": ["data/*.npz", "data/*.json"]},
    # torch is deliberately not listed: pip would replace the pinned CPU wheel with a multi-GB CUDA build.
    # requirements.txt pins the environment; setup.sh installs it.
    install_requires=["numpy", "safetensors"],
    entry_points={"console_scripts": ["pyengine=pyengine.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
