"""cov_accumulate_: symmetric second-moment accumulation ``cov += xᵀx``, ``count += n``.

Shapes and dtypes (shared by every implementation of ``law_fast::cov_accumulate_``):

    x      (n, f)  float32 / bfloat16 / float16, or float64 with a float64 cov; any strides; n >= 0
    cov    (f, f)  float32 / float64, contiguous, on x's device: a symmetric accumulator
    count  ()      int64, on x's device

Effect: the upper triangle (i <= j) of ``cov`` gets ``+= (xᵀx)[i, j]`` computed in cov's dtype
(x is upcast first; bf16/fp16 products are exact in fp32), then the lower triangle is overwritten
by the upper one, so ``cov`` stays exactly symmetric; ``count += n`` without a host sync.
For a symmetric ``cov`` (the only meaningful input) this is ``cov += xᵀx``.

Contents:
    check_cov_accumulate_args   argument checks (same messages as csrc/include/cov_accumulate.h)
    cov_accumulate_ref          pure torch; the default kernel of the op on every device
    launch_settings             block sizes / warps for a shape (instead of @triton.autotune,
                                which cannot run under TRITON_INTERPRET=1)
    cov_accumulate_triton       host launcher of the Triton kernel (CUDA tensors, or CPU tensors
                                when TRITON_INTERPRET=1 was set before triton was imported)
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger(__name__)

try:  # triton is optional: the reference below must work without it
    import triton
    import triton.language as tl

    HAS_TRITON = True
    TRITON_IMPORT_ERROR: str | None = None
except Exception as error:  # ImportError, or a broken install raising something else
    triton = None
    tl = None
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = f"{type(error).__name__}: {error}"

X_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
COV_DTYPES = (torch.float32, torch.float64)


def check_cov_accumulate_args(x: torch.Tensor, cov: torch.Tensor, count: torch.Tensor) -> None:
    """Raise RuntimeError naming the offending argument (works on fake/meta tensors too)."""
    if x.dim() != 2:
        raise RuntimeError(f"x must be a 2-D tensor of shape (n, f), got shape {list(x.shape)}")
    if x.dtype not in X_DTYPES:
        raise RuntimeError(f"x must be float32, bfloat16, float16 or float64, got {x.dtype}")
    if cov.dim() != 2:
        raise RuntimeError(f"cov must be a 2-D tensor of shape (f, f), got shape {list(cov.shape)}")
    f = x.shape[1]
    if tuple(cov.shape) != (f, f):
        raise RuntimeError(
            f"cov must have shape (f, f) = ({f}, {f}) to match x of shape {list(x.shape)}, got shape {list(cov.shape)}"
        )
    if cov.dtype not in COV_DTYPES:
        raise RuntimeError(f"cov must be float32 or float64, got {cov.dtype}")
    if x.dtype == torch.float64 and cov.dtype != torch.float64:
        raise RuntimeError(f"cov must be float64 when x is float64, got {cov.dtype}")
    if not cov.is_contiguous():
        raise RuntimeError("cov must be contiguous")
    if count.dim() != 0 or count.dtype != torch.int64:
        raise RuntimeError(f"count must be a 0-dim int64 tensor, got shape {list(count.shape)} and dtype {count.dtype}")
    if cov.device != x.device:
        raise RuntimeError(f"cov must be on the same device as x ({x.device}), got {cov.device}")
    if count.device != x.device:
        raise RuntimeError(f"count must be on the same device as x ({x.device}), got {count.device}")


def mirror_upper_to_lower_(cov: torch.Tensor) -> torch.Tensor:
    """cov[i, j] = cov[j, i] for i > j, in place; returns cov.  cov: (f, f)."""
    upper = torch.triu(cov)
    cov.copy_(upper + torch.triu(upper, diagonal=1).mT)
    return cov


@torch.no_grad()
def cov_accumulate_ref(x: torch.Tensor, cov: torch.Tensor, count: torch.Tensor) -> None:
    """Pure-torch reference: one full GEMM in cov's dtype, then mirror the upper triangle.

    x: (n, f) float32/bfloat16/float16/float64; cov: (f, f) float32/float64 (updated in place);
    count: () int64 (updated in place).  Runs on any device.
    """
    check_cov_accumulate_args(x, cov, count)
    x_acc = x.to(cov.dtype)
    cov.addmm_(x_acc.mT, x_acc)
    mirror_upper_to_lower_(cov)
    count.add_(x.shape[0])


def launch_settings(n: int, f: int, x_dtype: torch.dtype, cov_dtype: torch.dtype) -> dict:
    """Block sizes and launch parameters for the Triton kernel (one config, no autotuning).

    BLOCK_F: side of a square cov tile (one program per tile on or above the diagonal);
    BLOCK_N: rows of x loaded per step; tl.dot needs every dimension >= 16.
    """
    if cov_dtype == torch.float64:
        block_f, block_n, num_warps, num_stages = 32, 16, 4, 2
    elif x_dtype in (torch.bfloat16, torch.float16):
        block_f, block_n, num_warps, num_stages = 64, 64, 4, 3
    else:  # float32 in, float32 accumulation (IEEE fp32 FMA, not TF32)
        block_f, block_n, num_warps, num_stages = 64, 32, 4, 3
    # small f: one tile of at least 16 columns
    block_f = max(16, min(block_f, triton.next_power_of_2(max(f, 1)) if HAS_TRITON else block_f))
    return {"BLOCK_F": block_f, "BLOCK_N": block_n, "num_warps": num_warps, "num_stages": num_stages}


if HAS_TRITON:

    @triton.jit
    def _cov_accumulate_upper_kernel(
        x_ptr,
        cov_ptr,
        n,
        f,
        stride_xn,
        stride_xf,
        BLOCK_F: tl.constexpr,
        BLOCK_N: tl.constexpr,
        ACC_FP64: tl.constexpr,
        DOT_IN_FP32: tl.constexpr,
    ):
        """One program per tile (ti, tj), ti <= tj, of the (f, f) matrix cov.

        Tiles are numbered column by column over the upper triangle:
        pid = tj·(tj + 1)/2 + ti, so tj = floor((sqrt(8·pid + 1) - 1) / 2), then corrected for
        rounding.  The program accumulates x[:, I]ᵀ x[:, J] over all n rows, adds it to the
        upper-triangle entries of cov[I, J] and writes those same values transposed to cov[J, I].
        """
        pid = tl.program_id(0).to(tl.int64)
        tj = ((tl.sqrt(8.0 * pid.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int64)
        tj = tl.where((tj + 1) * (tj + 2) // 2 <= pid, tj + 1, tj)
        tj = tl.where(tj * (tj + 1) // 2 > pid, tj - 1, tj)
        ti = pid - tj * (tj + 1) // 2

        offs_i = ti * BLOCK_F + tl.arange(0, BLOCK_F).to(tl.int64)  # rows of the cov tile
        offs_j = tj * BLOCK_F + tl.arange(0, BLOCK_F).to(tl.int64)  # columns of the cov tile
        offs_k = tl.arange(0, BLOCK_N).to(tl.int64)  # rows of x
        mask_i = offs_i < f
        mask_j = offs_j < f
        if ACC_FP64:
            acc = tl.zeros((BLOCK_F, BLOCK_F), dtype=tl.float64)
        else:
            acc = tl.zeros((BLOCK_F, BLOCK_F), dtype=tl.float32)

        for k0 in range(0, n, BLOCK_N):
            rows = k0 + offs_k
            mask_k = rows < n
            x_i = tl.load(
                x_ptr + rows[:, None] * stride_xn + offs_i[None, :] * stride_xf,
                mask=mask_k[:, None] & mask_i[None, :],
                other=0.0,
            )  # (BLOCK_N, BLOCK_F)
            x_j = tl.load(
                x_ptr + rows[:, None] * stride_xn + offs_j[None, :] * stride_xf,
                mask=mask_k[:, None] & mask_j[None, :],
                other=0.0,
            )
            if ACC_FP64:
                x_i = x_i.to(tl.float64)
                x_j = x_j.to(tl.float64)
            elif DOT_IN_FP32:  # same result: bf16 products are exact in fp32
                x_i = x_i.to(tl.float32)
                x_j = x_j.to(tl.float32)
            # bf16/fp16 × bf16/fp16 → fp32 is exact per product; fp32 inputs use IEEE fp32, not TF32
            acc = tl.dot(tl.trans(x_i), x_j, acc, input_precision="ieee")

        upper = mask_i[:, None] & mask_j[None, :] & (offs_i[:, None] <= offs_j[None, :])
        strictly_upper = upper & (offs_i[:, None] < offs_j[None, :])
        cov_ij = cov_ptr + offs_i[:, None] * f + offs_j[None, :]
        new = tl.load(cov_ij, mask=upper, other=0.0) + acc
        tl.store(cov_ij, new, mask=upper)
        # mirror: element (i, j) of this tile is also cov[j, i]
        tl.store(cov_ptr + offs_j[None, :] * f + offs_i[:, None], new, mask=strictly_upper)


def triton_interpret_enabled() -> bool:
    """True when TRITON_INTERPRET=1 was set (it must be set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def cov_accumulate_triton(x: torch.Tensor, cov: torch.Tensor, count: torch.Tensor) -> None:
    """Triton implementation; same contract as cov_accumulate_ref.

    Runs on CUDA tensors, or on CPU tensors when triton runs in interpreter mode.
    """
    if not HAS_TRITON:
        raise RuntimeError(f"triton is not available ({TRITON_IMPORT_ERROR}); install it with `pip install triton`")
    check_cov_accumulate_args(x, cov, count)
    if x.device.type == "cpu" and not triton_interpret_enabled():
        raise RuntimeError(
            "cov_accumulate_triton got CPU tensors: set TRITON_INTERPRET=1 before "
            "importing triton to run the kernel in the interpreter"
        )
    n, f = x.shape
    if f > 0:
        settings = launch_settings(n, f, x.dtype, cov.dtype)
        tiles = triton.cdiv(f, settings["BLOCK_F"])
        grid = (tiles * (tiles + 1) // 2,)
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            _cov_accumulate_upper_kernel[grid](
                x,
                cov,
                n,
                f,
                x.stride(0),
                x.stride(1),
                BLOCK_F=settings["BLOCK_F"],
                BLOCK_N=settings["BLOCK_N"],
                ACC_FP64=cov.dtype == torch.float64,
                # the interpreter (triton 3.9) computes bf16 tl.dot on the raw uint16 bits
                DOT_IN_FP32=x.dtype == torch.bfloat16 and x.device.type == "cpu",
                num_warps=settings["num_warps"],
                num_stages=settings["num_stages"],
            )
    count.add_(n)
