"""Build script for law_fast: the Python package plus the native module ``law_fast._C``.

Install torch first (CPU or CUDA build), then build against it:

    pip install --no-build-isolation -e .          # development (builds law_fast/_C*.so in place)
    pip install --no-build-isolation .             # normal install

``law_fast._C`` always contains the C++ CPU kernels (``csrc/ops.cpp``, ``csrc/cpu/*.cpp``).
The CUDA kernels (``csrc/cuda/*.cu`` and their torch bindings ``csrc/cuda/*.cpp``) are added
when the installed torch is a CUDA build (``torch.version.cuda``) and a CUDA toolkit is found
(``CUDA_HOME``); a GPU is not needed to build.  Environment switches:

    LAW_FAST_USE_CUDA=0|1   force the CUDA kernels off / on (on fails loudly if impossible)
    LAW_FAST_BUILD_NATIVE=0 skip the native module entirely (pure-torch package)
    MAX_JOBS=N              parallel compile jobs (torch's cpp_extension honours it)
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _env_flag(name: str) -> bool | None:
    """'1'/'true'/'on' → True, '0'/'false'/'off' → False, unset or empty → None."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name}={value!r}: expected 0 or 1")


def _relative(paths: list[str]) -> list[str]:
    # setuptools wants paths relative to setup.py, in a stable order
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def native_extensions() -> tuple[list, dict]:
    """The ``law_fast._C`` extension (CPU, or CPU + CUDA) and the build_ext command class."""
    if _env_flag("LAW_FAST_BUILD_NATIVE") is False:
        print("law_fast: LAW_FAST_BUILD_NATIVE=0, building the pure-torch package only")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as error:  # pragma: no cover - depends on the build environment
        raise SystemExit(
            "law_fast: building the native module needs torch installed in the build "
            "environment. Install torch first, then `pip install --no-build-isolation .` "
            f"(or set LAW_FAST_BUILD_NATIVE=0). Import error: {error}"
        ) from error

    cuda_wanted = _env_flag("LAW_FAST_USE_CUDA")
    cuda_possible = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None
    if cuda_wanted and not cuda_possible:
        raise SystemExit(
            "law_fast: LAW_FAST_USE_CUDA=1 but CUDA kernels cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r}"
        )
    with_cuda = cuda_possible if cuda_wanted is None else cuda_wanted

    sources = ["csrc/ops.cpp"] + _relative(glob.glob(str(ROOT / "csrc" / "cpu" / "*.cpp")))
    # The C++ standard comes from torch's cpp_extension (c++17 or c++20 depending on torch).
    # -march is left at the compiler default so the wheel runs on any x86-64 / aarch64 CPU;
    # the heavy lifting is done by torch's BLAS, the rest is written to auto-vectorise.
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    define_macros = []
    extra_link_args = ["-fopenmp"]
    if sys.platform == "darwin":  # Apple clang has no -fopenmp; ATen's parallel_for still works
        cxx_flags.remove("-fopenmp")
        extra_link_args = []
    if with_cuda:
        sources += _relative(glob.glob(str(ROOT / "csrc" / "cuda" / "*.cu")))
        sources += _relative(glob.glob(str(ROOT / "csrc" / "cuda" / "*.cpp")))
        define_macros.append(("LAW_FAST_WITH_CUDA", "1"))
        extension = cpp_extension.CUDAExtension(
            name="law_fast._C",
            sources=sources,
            include_dirs=[str(ROOT / "csrc" / "include")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=extra_link_args,
        )
    else:
        extension = cpp_extension.CppExtension(
            name="law_fast._C",
            sources=sources,
            include_dirs=[str(ROOT / "csrc" / "include")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link_args,
        )
    print(
        f"law_fast: building law_fast._C with {'CPU + CUDA' if with_cuda else 'CPU'} kernels "
        f"against torch {torch.__version__}"
    )
    # ninja builds the sources in parallel; without it torch falls back to a serial distutils build
    # (with --no-build-isolation the build-system requirements are not installed: `pip install ninja`)
    use_ninja = cpp_extension.is_ninja_available()
    if not use_ninja:
        print(
            "law_fast: ninja not found, building law_fast._C serially (slower); `pip install ninja` to build in parallel"
        )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=use_ninja)
    return [extension], {"build_ext": build_ext}


ext_modules, cmdclass = native_extensions()

setup(
    packages=find_packages(include=["law_fast", "law_fast.*"]),
    package_data={"law_fast": ["data/*.jsonl", "data/*.txt"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
