"""Tensor ops of law_fast: the one place where ops are defined.

Each op has one schema (``torch.library``), a fake implementation for shapes (torch.compile,
meta tensors), a pure-torch default kernel that runs on any device, and faster kernels that
override the default per device:

    op                 default (any device)       cpu                  cuda
    cov_accumulate_    cov_accumulate_ref         C++ (law_fast._C)    Triton, else CUDA C++ (law_fast._C)
    law_quadratic      law_quadratic_ref          C++ (law_fast._C)    Triton, else cuBLAS + CUDA C++
    law_adam_step_     law_adam_step_ref          C++ (law_fast._C)    Triton, else CUDA C++ (law_fast._C)

``law_quadratic`` and ``law_adam_step_`` are one LaW iteration in Gram form (law_fast/law.py,
docs/law_solver.md); their contracts are in law_fast/kernels/law_step.py.

Triton is preferred on CUDA because its ``tl.dot`` uses tensor cores for bf16/fp16 inputs.
Environment switches, read once at import:

    LAW_FAST_USE_CPP=0      CPU ops use the pure-torch default instead of the C++ kernels
    LAW_FAST_USE_TRITON=0   never use Triton kernels
    LAW_FAST_USE_CUDA=0     never use the CUDA C++ kernels

``backend_report()`` says which implementation serves each op on each device type.
"""

from __future__ import annotations

import logging
import os

import torch

from . import _native
from .kernels import cov_accumulate as _cov_accumulate_kernels
from .kernels import law_step as _law_step_kernels
from .kernels.cov_accumulate import check_cov_accumulate_args, cov_accumulate_ref
from .kernels.law_step import (
    check_law_adam_step_args,
    check_law_quadratic_args,
    law_adam_step_ref,
    law_quadratic_ref,
    law_state,
)

log = logging.getLogger(__name__)

__all__ = ["cov_accumulate_", "law_quadratic", "law_adam_step_", "law_state", "backend_report"]

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


# ---------------------------------------------------------------- law_quadratic

_LIB.define("law_quadratic(Tensor U, Tensor G, Tensor C) -> (Tensor, Tensor, Tensor)")
_LIB.impl("law_quadratic", law_quadratic_ref, "CompositeExplicitAutograd")


@torch.library.register_fake("law_fast::law_quadratic", lib=_LIB)
def _law_quadratic_fake(U: torch.Tensor, G: torch.Tensor, C: torch.Tensor):
    check_law_quadratic_args(U, G, C)
    scalar = U.new_empty((), dtype=torch.float64)
    return U.new_empty(U.shape), scalar, scalar.clone()


def law_quadratic(U: torch.Tensor, G: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[G; C]·U`` reduced: returns ``(GU, uGu, uCu)`` = (G·U, tr(UᵀGU), tr(UᵀCU)).

    U: (f, d) float32 / float64, any strides; G, C: (f, f) in U's dtype, on U's device.
    GU: (f, d) contiguous in U's dtype; uGu, uCu: 0-dim float64 (products in U's dtype, sums in
    float64).  C·U is not kept (CPU and Triton: per block or tile; the CUDA C++ kernel keeps one
    (f, d) scratch).  No host synchronisation.  Not differentiable (LaW uses −2·G·U directly).
    """
    return torch.ops.law_fast.law_quadratic.default(U, G, C)


# ---------------------------------------------------------------- law_adam_step_

_LIB.define(
    "law_adam_step_(Tensor(a!) U, Tensor GU, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
    "Tensor(d!) state, Tensor uCu, bool adam_update=True) -> ()"
)
_LIB.impl("law_adam_step_", law_adam_step_ref, "CompositeExplicitAutograd")


@torch.library.register_fake("law_fast::law_adam_step_", lib=_LIB)
def _law_adam_step_fake(U, GU, exp_avg, exp_avg_sq, state, uCu, adam_update=True) -> None:
    check_law_adam_step_args(U, GU, exp_avg, exp_avg_sq, state, uCu)


def law_adam_step_(
    U: torch.Tensor,
    GU: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    state: torch.Tensor,
    uCu: torch.Tensor,
    adam_update: bool = True,
) -> None:
    """One fused LaW step, in place: pending rescale, lr drop at the first contact, Adam on −J.

    U, exp_avg, exp_avg_sq: (f, d) float32 / float64, contiguous (updated); GU: (f, d) = G·U of
    the current U, same dtype, contiguous (read only); state: (STATE_SIZE,) float64 from
    ``law_state`` (updated: step, lr, first contact, ρ, scale, bias corrections); uCu: 0-dim
    float64 = tr(UᵀCU) of the current U.  All on one device; no host synchronisation.

    s = √(β/ρ) when step ≥ 1 and ρ = uCu/tr(C) > β, else 1; U ← s·U; then (adam_update)
    torch.optim.Adam's update with gradient −2·s·GU.  ``adam_update=False`` only rescales (the
    final iterate).  Formulas: law_fast/kernels/law_step.py.
    """
    torch.ops.law_fast.law_adam_step_.default(U, GU, exp_avg, exp_avg_sq, state, uCu, adam_update)


# ---------------------------------------------------------------- kernel registration

# op name -> its Triton implementation (used on CUDA when Triton is available)
_TRITON_KERNELS = {
    "cov_accumulate_": (_cov_accumulate_kernels, "cov_accumulate_triton"),
    "law_quadratic": (_law_step_kernels, "law_quadratic_triton"),
    "law_adam_step_": (_law_step_kernels, "law_adam_step_triton"),
}


def _register_kernels() -> None:
    native = _native.load()
    native_info = native.build_info() if native is not None else {}
    use_cpp, use_triton, use_cuda = (
        _switch("LAW_FAST_USE_CPP"),
        _switch("LAW_FAST_USE_TRITON"),
        _switch("LAW_FAST_USE_CUDA"),
    )

    served = {name: {"cpu": "torch", "cuda": "torch", "other": "torch"} for name in _TRITON_KERNELS}
    # law_fast._C registers all of its kernels for a device at once
    cpu_kernels = native_info.get("cpu_kernels", ())
    if native is not None and use_cpp and cpu_kernels:
        native.register_kernels("cpu")
        for name in _TRITON_KERNELS:
            if name in cpu_kernels:
                served[name]["cpu"] = "cpp"
    gpu_build = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None
    cuda_kernels = native_info.get("cuda_kernels", ())
    if use_triton and _cov_accumulate_kernels.HAS_TRITON and gpu_build:
        for name, (module, function) in _TRITON_KERNELS.items():
            _LIB.impl(name, getattr(module, function), "CUDA")
            served[name]["cuda"] = "triton"
    elif native is not None and use_cuda and cuda_kernels:
        native.register_kernels("cuda")
        for name in _TRITON_KERNELS:
            if name in cuda_kernels:
                served[name]["cuda"] = "cuda"
    _SERVED_BY.update(served)


_register_kernels()


def backend_report() -> dict:
    """What was built and which implementation serves each op on each device type (JSON-able).

    Implementation ids: "torch" (pure-torch default), "cpp" (C++ CPU kernel in law_fast._C),
    "cuda" (CUDA C++ kernel in law_fast._C), "triton" (law_fast/kernels/ Triton kernel).
    """
    kernels = _cov_accumulate_kernels
    return {
        # versions: law_fast.info.versions() (the one place); here only what the build and dispatch depend on
        "torch_build": {
            "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "threads": torch.get_num_threads(),
        },
        "native": _native.build_info(),
        "triton_kernels": {
            "available": kernels.HAS_TRITON,
            "error": kernels.TRITON_IMPORT_ERROR,
            "interpret": kernels.triton_interpret_enabled(),
        },
        "switches": {
            name: os.environ.get(name) for name in ("LAW_FAST_USE_CPP", "LAW_FAST_USE_TRITON", "LAW_FAST_USE_CUDA")
        },
        "ops": {name: dict(served) for name, served in _SERVED_BY.items()},
    }
