"""Tensor ops of law_fast: the one place where ops are defined.

Each op has one schema (``torch.library``), a fake implementation for shapes (torch.compile,
meta tensors), a pure-torch default kernel that runs on any device, and faster kernels that
override the default per device:

    op                 default (any device)       cpu                  cuda
    cov_accumulate_    cov_accumulate_ref         C++ (law_fast._C)    Triton, else CUDA C++ (law_fast._C)

Triton is preferred on CUDA because its ``tl.dot`` uses tensor cores for bf16/fp16 inputs.
Environment switches, read once at import:

    LAW_FAST_USE_CPP=0      CPU ops use the pure-torch default instead of the C++ kernels
    LAW_FAST_USE_TRITON=0   never use Triton kernels
    LAW_FAST_USE_CUDA=0     never use the CUDA C++ kernels

``backend_report()`` says which implementation serves each op on each device type.
"""

from __future__ import annotations

import os

import torch

from . import _native
from .kernels import cov_accumulate as _cov_accumulate_kernels
from .kernels.cov_accumulate import check_cov_accumulate_args, cov_accumulate_ref

__all__ = ["cov_accumulate_", "backend_report"]

_LIB = torch.library.Library("law_fast", "FRAGMENT")  # kept alive for the process lifetime

# implementation ids, per op and device type: "torch" | "cpp" | "triton" | "cuda"
_SERVED_BY: dict[str, dict[str, str]] = {}


def _switch(name: str) -> bool:
    """Environment switch, on unless set to 0/false/off/no."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "off", "no")


# ---------------------------------------------------------------- cov_accumulate_

_LIB.define("cov_accumulate_(Tensor x, Tensor(a!) cov, Tensor(b!) count) -> ()")
_LIB.impl("cov_accumulate_", cov_accumulate_ref, "CompositeExplicitAutograd")


@torch.library.register_fake("law_fast::cov_accumulate_", lib=_LIB)
def _cov_accumulate_fake(x: torch.Tensor, cov: torch.Tensor, count: torch.Tensor) -> None:
    check_cov_accumulate_args(x, cov, count)


def cov_accumulate_(x: torch.Tensor, cov: torch.Tensor, count: torch.Tensor) -> None:
    """Accumulate a symmetric second moment: ``cov += xᵀx`` and ``count += n``, in place.

    x: (n, f) float32 / bfloat16 / float16 (float64 with a float64 cov), any strides, n may be 0.
    cov: (f, f) float32 / float64, contiguous, on x's device; treated as symmetric: the upper
    triangle is updated in cov's dtype (x upcast) and mirrored to the lower one.
    count: 0-dim int64 on x's device.  No host synchronisation.
    """
    torch.ops.law_fast.cov_accumulate_.default(x, cov, count)


# ---------------------------------------------------------------- kernel registration


def _register_kernels() -> None:
    native = _native.load()
    native_info = native.build_info() if native is not None else {}
    use_cpp, use_triton, use_cuda = (_switch("LAW_FAST_USE_CPP"), _switch("LAW_FAST_USE_TRITON"),
                                     _switch("LAW_FAST_USE_CUDA"))

    served = {"cpu": "torch", "cuda": "torch", "other": "torch"}
    if native is not None and use_cpp and "cov_accumulate_" in native_info.get("cpu_kernels", ()):
        native.register_kernels("cpu")
        served["cpu"] = "cpp"
    gpu_build = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None
    if use_triton and _cov_accumulate_kernels.HAS_TRITON and gpu_build:
        _LIB.impl("cov_accumulate_", _cov_accumulate_kernels.cov_accumulate_triton, "CUDA")
        served["cuda"] = "triton"
    elif native is not None and use_cuda and "cov_accumulate_" in native_info.get("cuda_kernels", ()):
        native.register_kernels("cuda")
        served["cuda"] = "cuda"
    _SERVED_BY["cov_accumulate_"] = served


_register_kernels()


def backend_report() -> dict:
    """What was built and which implementation serves each op on each device type (JSON-able).

    Implementation ids: "torch" (pure-torch default), "cpp" (C++ CPU kernel in law_fast._C),
    "cuda" (CUDA C++ kernel in law_fast._C), "triton" (kernels/ Triton kernel).
    """
    kernels = _cov_accumulate_kernels
    return {
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()},
        "native": _native.build_info(),
        "triton": {"available": kernels.HAS_TRITON,
                   "version": getattr(kernels.triton, "__version__", None),
                   "error": kernels.TRITON_IMPORT_ERROR,
                   "interpret": kernels.triton_interpret_enabled()},
        "switches": {name: os.environ.get(name) for name in
                     ("LAW_FAST_USE_CPP", "LAW_FAST_USE_TRITON", "LAW_FAST_USE_CUDA")},
        "ops": {name: dict(served) for name, served in _SERVED_BY.items()},
    }
