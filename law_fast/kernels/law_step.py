"""LaW iteration in Gram form: ``law_quadratic`` and ``law_adam_step_`` (law-reference §5.3).

LaW maximises J(U) = tr(Uᵀ G U), G = KᵀK, over U = Δᵀ (f, d) subject to
ρ(U) = tr(Uᵀ C U) / tr(C) ≤ β, with torch.optim.Adam on −J (gradient −2·G·U), a radial rescale
U ← U·√(β/ρ) whenever ρ > β, and lr ← lr_after_hitting_boundary at the first contact.
One iteration needs exactly one stacked product [G; C]·U:

    law_adam_step_(U, GU, exp_avg, exp_avg_sq, state, uCu)   # rescale s, lr drop, Adam: U → U'
    GU, uGu, uCu = law_quadratic(U, G, C)                     # [G; C]·U': G·U' and ρ(U')

The rescale of U' (s = √(β/ρ(U')) or 1) is applied by the *next* law_adam_step_ call, which also
scales the gradient: G·(s·U') = s·(G·U'), so the product is never recomputed.  A last call with
``adam_update=False`` applies the final pending rescale.

Shapes and dtypes (shared by every implementation of the two ops):

    law_quadratic(U, G, C) -> (GU, uGu, uCu)
        U    (f, d)  float32 / float64, any strides
        G, C (f, f)  U's dtype and device, any strides (symmetric in LaW, not required here)
        GU   (f, d)  U's dtype, contiguous: G·U
        uGu  ()      float64: Σ U∘(G·U) = tr(Uᵀ G U)
        uCu  ()      float64: Σ U∘(C·U) = tr(Uᵀ C U); C·U is never kept beyond a tile
      Products in U's dtype (float32 inputs: float32 GEMM, IEEE, no TF32), sums in float64.

    law_adam_step_(U, GU, exp_avg, exp_avg_sq, state, uCu, adam_update=True) -> ()
        U, exp_avg, exp_avg_sq  (f, d) float32 / float64, contiguous, updated in place
        GU                      (f, d) U's dtype, contiguous, read only: G·U of the current U
                                (before the pending rescale)
        state                   (STATE_SIZE,) float64, contiguous, on U's device (``law_state``)
        uCu                     () float64 on U's device: tr(Uᵀ C U) of the current U
      Scalar part, float64, on the device (no host sync):
        ρ = uCu / tr(C); contact = (step ≥ 1 and ρ > β); s = √(β/ρ) if contact else 1;
        at the first contact: first_contact = step − 1 (the iteration whose Adam step crossed
        the boundary) and lr ← lr_after (if set);
        adam_update: step += 1, β1^step, β2^step, step size lr/(1 − β1^step), √(1 − β2^step).
      Elementwise part, in U's dtype (the float64 scalars rounded to it, as torch.optim.Adam does
      for float32 parameters):
        U ← s·U;  g = −2·(s·GU);  and if adam_update:
        exp_avg ← exp_avg + (1 − β1)·(g − exp_avg)            (torch's lerp)
        exp_avg_sq ← β2·exp_avg_sq + ((1 − β2)·g)·g
        U ← U + (−step_size)·(exp_avg / (√exp_avg_sq / √(1 − β2^step) + eps))
      which is torch.optim.Adam's single-tensor update (bias corrections from running products
      β^step instead of ``beta ** step``: equal to ~step ulps).

The state vector (float64, ``STATE_SIZE`` entries, indices below) holds everything scalar, so a
GPU loop runs without host synchronisation; ``law_state`` creates it.

Contents:
    STATE_* / law_state            state layout and constructor
    check_law_quadratic_args, check_law_adam_step_args   argument checks (same messages as
                                   csrc/include/law_step.h)
    law_quadratic_ref, law_adam_step_ref   pure torch; the default kernels of the ops (any device)
    law_state_update_ref           the scalar part alone (pure torch, on the device)
    launch_settings                block sizes (instead of @triton.autotune)
    law_quadratic_triton, law_adam_step_triton   host launchers of the Triton kernels (CUDA
                                   tensors, or CPU tensors when TRITON_INTERPRET=1 was set before
                                   triton was imported)
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch

# triton is optional (the references below work without it); imported once, in cov_accumulate
from .cov_accumulate import HAS_TRITON, TRITON_IMPORT_ERROR, tl, triton, triton_interpret_enabled  # noqa: F401

log = logging.getLogger(__name__)

DTYPES = (torch.float32, torch.float64)

# ---------------------------------------------------------------- state layout
# Updated by every law_adam_step_ call:
STATE_STEP = 0  # Adam steps taken so far (an integer, stored as float64)
STATE_LR = 1  # current learning rate
STATE_FIRST_CONTACT = 2  # 0-based iteration whose step first crossed ρ > β; −1 before
STATE_RHO = 3  # ρ of the iterate the last call started from, before its rescale
STATE_SCALE = 4  # rescale factor the last call applied (1 inside the constraint)
STATE_STEP_SIZE = 5  # lr / (1 − β1^step) of the last Adam update
STATE_BIAS_CORRECTION2_SQRT = 6  # √(1 − β2^step) of the last Adam update
STATE_BETA1_POWER = 7  # β1^step
STATE_BETA2_POWER = 8  # β2^step
# Constants, set by law_state():
STATE_BOUND = 9  # β, the bound on ρ
STATE_TRACE_C = 10  # tr(C)
STATE_LR_AFTER = 11  # lr after the first contact; NaN: keep the lr
STATE_BETA1 = 12  # Adam β1
STATE_BETA2 = 13  # Adam β2
STATE_EPS = 14  # Adam eps
STATE_SIZE = 16  # (one spare entry)


def law_state(
    lr: float,
    bound: torch.Tensor | float,
    trace_c: torch.Tensor | float,
    lr_after_hitting_boundary: float | None = None,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A fresh state vector: (STATE_SIZE,) float64 on ``device`` (default: that of ``bound``).

    bound (β) and trace_c may be 0-dim device tensors (no host sync) or numbers.
    """
    if device is None:
        device = bound.device if isinstance(bound, torch.Tensor) else "cpu"
    state = torch.zeros(STATE_SIZE, dtype=torch.float64, device=device)
    state[STATE_LR] = lr
    state[STATE_FIRST_CONTACT] = -1.0
    state[STATE_SCALE] = 1.0
    state[STATE_BETA1_POWER] = 1.0
    state[STATE_BETA2_POWER] = 1.0
    state[STATE_BOUND] = bound
    state[STATE_TRACE_C] = trace_c
    state[STATE_LR_AFTER] = math.nan if lr_after_hitting_boundary is None else lr_after_hitting_boundary
    state[STATE_BETA1] = beta1
    state[STATE_BETA2] = beta2
    state[STATE_EPS] = eps
    return state


# ---------------------------------------------------------------- argument checks


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_law_quadratic_args(U: torch.Tensor, G: torch.Tensor, C: torch.Tensor) -> None:
    """Raise RuntimeError naming the offending argument (works on fake/meta tensors too)."""
    if U.dim() != 2:
        raise RuntimeError(f"U must be a 2-D tensor of shape (f, d), got shape {list(U.shape)}")
    if U.dtype not in DTYPES:
        raise RuntimeError(f"U must be float32 or float64, got {_dtype_name(U.dtype)}")
    f = U.shape[0]
    for name, matrix in (("G", G), ("C", C)):
        if matrix.dim() != 2 or tuple(matrix.shape) != (f, f):
            raise RuntimeError(
                f"{name} must have shape (f, f) = ({f}, {f}) to match U of shape "
                f"{list(U.shape)}, got shape {list(matrix.shape)}"
            )
        if matrix.dtype != U.dtype:
            raise RuntimeError(f"{name} must have U's dtype ({_dtype_name(U.dtype)}), got {_dtype_name(matrix.dtype)}")
        if matrix.device != U.device:
            raise RuntimeError(f"{name} must be on the same device as U ({U.device}), got {matrix.device}")


def check_law_adam_step_args(
    U: torch.Tensor,
    GU: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    state: torch.Tensor,
    uCu: torch.Tensor,
) -> None:
    """Raise RuntimeError naming the offending argument (works on fake/meta tensors too)."""
    if U.dim() != 2:
        raise RuntimeError(f"U must be a 2-D tensor of shape (f, d), got shape {list(U.shape)}")
    if U.dtype not in DTYPES:
        raise RuntimeError(f"U must be float32 or float64, got {_dtype_name(U.dtype)}")
    if not U.is_contiguous():
        raise RuntimeError("U must be contiguous")
    for name, t in (("GU", GU), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if t.shape != U.shape:
            raise RuntimeError(f"{name} must have U's shape {list(U.shape)}, got shape {list(t.shape)}")
        if t.dtype != U.dtype:
            raise RuntimeError(f"{name} must have U's dtype ({_dtype_name(U.dtype)}), got {_dtype_name(t.dtype)}")
        if not t.is_contiguous():
            raise RuntimeError(f"{name} must be contiguous")
        if t.device != U.device:
            raise RuntimeError(f"{name} must be on the same device as U ({U.device}), got {t.device}")
    if state.dim() != 1 or state.shape[0] != STATE_SIZE or state.dtype != torch.float64:
        raise RuntimeError(
            f"state must be a float64 tensor of shape [{STATE_SIZE}] (see law_state), got "
            f"shape {list(state.shape)} and dtype {_dtype_name(state.dtype)}"
        )
    if not state.is_contiguous():
        raise RuntimeError("state must be contiguous")
    if state.device != U.device:
        raise RuntimeError(f"state must be on the same device as U ({U.device}), got {state.device}")
    if uCu.dim() != 0 or uCu.dtype != torch.float64:
        raise RuntimeError(
            f"uCu must be a 0-dim float64 tensor, got shape {list(uCu.shape)} and dtype {_dtype_name(uCu.dtype)}"
        )
    if uCu.device != U.device:
        raise RuntimeError(f"uCu must be on the same device as U ({U.device}), got {uCu.device}")


# ---------------------------------------------------------------- pure-torch references


@torch.no_grad()
def law_quadratic_ref(
    U: torch.Tensor, G: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure torch: GU = G·U (U's dtype), uGu = Σ U∘GU and uCu = Σ U∘(C·U) in float64.

    U (f, d), G and C (f, f), float32/float64, any device.  Materialises C·U (f, d) once.
    """
    check_law_quadratic_args(U, G, C)
    GU = torch.mm(G, U)
    U64 = U.to(torch.float64)
    uGu = (U64 * GU.to(torch.float64)).sum()
    uCu = (U64 * torch.mm(C, U).to(torch.float64)).sum()
    return GU.contiguous(), uGu, uCu


@torch.no_grad()
def law_state_update_ref(state: torch.Tensor, uCu: torch.Tensor, adam_update: bool = True) -> None:
    """The scalar part of law_adam_step_, in place on ``state`` (float64 tensor ops on its
    device: no host sync).  See the module docstring for the formulas."""
    S = state
    step = S[STATE_STEP]
    rho = uCu / S[STATE_TRACE_C]
    contact = (step >= 1) & (rho > S[STATE_BOUND])
    scale = torch.where(contact, torch.sqrt(S[STATE_BOUND] / rho), torch.ones_like(rho))
    first = contact & (S[STATE_FIRST_CONTACT] < 0)
    lr_after = S[STATE_LR_AFTER]
    new = S.clone()
    new[STATE_FIRST_CONTACT] = torch.where(first, step - 1, S[STATE_FIRST_CONTACT])
    new[STATE_LR] = torch.where(first & ~torch.isnan(lr_after), lr_after, S[STATE_LR])
    new[STATE_RHO] = rho
    new[STATE_SCALE] = scale
    if adam_update:
        new[STATE_STEP] = step + 1
        new[STATE_BETA1_POWER] = S[STATE_BETA1_POWER] * S[STATE_BETA1]
        new[STATE_BETA2_POWER] = S[STATE_BETA2_POWER] * S[STATE_BETA2]
        new[STATE_STEP_SIZE] = new[STATE_LR] / (1 - new[STATE_BETA1_POWER])
        new[STATE_BIAS_CORRECTION2_SQRT] = torch.sqrt(1 - new[STATE_BETA2_POWER])
    S.copy_(new)


@torch.no_grad()
def law_adam_step_ref(
    U: torch.Tensor,
    GU: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    state: torch.Tensor,
    uCu: torch.Tensor,
    adam_update: bool = True,
) -> None:
    """Pure torch: pending rescale, lr drop at the first contact, Adam step with gradient −2·s·GU.

    U, GU, exp_avg, exp_avg_sq: (f, d) float32/float64 contiguous; state (STATE_SIZE,) float64;
    uCu () float64; all on one device.  U, exp_avg, exp_avg_sq and state are updated in place.
    """
    check_law_adam_step_args(U, GU, exp_avg, exp_avg_sq, state, uCu)
    law_state_update_ref(state, uCu, adam_update)
    dtype = U.dtype
    scale = state[STATE_SCALE].to(dtype)
    U.mul_(scale)
    if not adam_update:
        return
    grad = GU.mul(scale).mul_(-2)
    one_minus_beta1 = (1 - state[STATE_BETA1]).to(dtype)
    beta2 = state[STATE_BETA2].to(dtype)
    one_minus_beta2 = (1 - state[STATE_BETA2]).to(dtype)
    exp_avg.lerp_(grad, one_minus_beta1)
    exp_avg_sq.mul_(beta2).add_(grad.mul(one_minus_beta2).mul_(grad))
    denom = exp_avg_sq.sqrt().div_(state[STATE_BIAS_CORRECTION2_SQRT].to(dtype)).add_(state[STATE_EPS].to(dtype))
    U.add_(exp_avg.div(denom).mul_((-state[STATE_STEP_SIZE]).to(dtype)))


# ---------------------------------------------------------------- Triton


def launch_settings(f: int, d: int, dtype: torch.dtype) -> dict:
    """Tile sizes for the Triton law_quadratic kernel (one config, no autotuning).

    BLOCK_M rows of G (or C) × BLOCK_N columns of U per program, BLOCK_K inner steps; tl.dot
    needs every dimension >= 16.  BLOCK is the element count per program of the Adam step.
    """
    if dtype == torch.float64:
        block_m, block_n, block_k, num_warps = 32, 32, 16, 4
    else:  # float32 in, float32 accumulation (IEEE fp32 FMA, not TF32)
        block_m, block_n, block_k, num_warps = 64, 64, 32, 4
    if HAS_TRITON:
        block_m = max(16, min(block_m, triton.next_power_of_2(max(f, 1))))
        block_n = max(16, min(block_n, triton.next_power_of_2(max(d, 1))))
        block_k = max(16, min(block_k, triton.next_power_of_2(max(f, 1))))
    return {
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_K": block_k,
        "num_warps": num_warps,
        "num_stages": 3,
        "BLOCK": 1024,
    }


if HAS_TRITON:
    # jit functions read module globals only as constexpr: the state indices for the kernels
    _STEP = tl.constexpr(STATE_STEP)
    _LR = tl.constexpr(STATE_LR)
    _FIRST_CONTACT = tl.constexpr(STATE_FIRST_CONTACT)
    _RHO = tl.constexpr(STATE_RHO)
    _SCALE = tl.constexpr(STATE_SCALE)
    _STEP_SIZE = tl.constexpr(STATE_STEP_SIZE)
    _BIAS_CORRECTION2_SQRT = tl.constexpr(STATE_BIAS_CORRECTION2_SQRT)
    _BETA1_POWER = tl.constexpr(STATE_BETA1_POWER)
    _BETA2_POWER = tl.constexpr(STATE_BETA2_POWER)
    _BOUND = tl.constexpr(STATE_BOUND)
    _TRACE_C = tl.constexpr(STATE_TRACE_C)
    _LR_AFTER = tl.constexpr(STATE_LR_AFTER)
    _BETA1 = tl.constexpr(STATE_BETA1)
    _BETA2 = tl.constexpr(STATE_BETA2)
    _EPS = tl.constexpr(STATE_EPS)

    @triton.jit
    def _law_quadratic_kernel(
        a_ptr,
        u_ptr,
        out_ptr,
        partial_ptr,
        f,
        d,
        stride_am,
        stride_ak,
        stride_uf,
        stride_ud,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        ACC_FP64: tl.constexpr,
        STORE_PRODUCT: tl.constexpr,
    ):
        """One program per (BLOCK_M × BLOCK_N) tile P of A·U (A = G or C, (f, f); U (f, d)).

        Stores the tile into out (contiguous (f, d)) when STORE_PRODUCT, and always writes the
        float64 partial sum Σ U[tile]∘P to partial_ptr[pid_m·tiles_n + pid_n] (no atomics: the
        host sums the partials in a fixed order, so the result is deterministic).
        """
        pid_m = tl.program_id(0).to(tl.int64)
        pid_n = tl.program_id(1).to(tl.int64)
        tiles_n = tl.num_programs(1).to(tl.int64)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        inner = tl.arange(0, BLOCK_K).to(tl.int64)
        mask_rows = rows < f
        mask_cols = cols < d
        if ACC_FP64:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, f, BLOCK_K):
            ks = k0 + inner
            mask_k = ks < f
            a = tl.load(
                a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak,
                mask=mask_rows[:, None] & mask_k[None, :],
                other=0.0,
            )
            u = tl.load(
                u_ptr + ks[:, None] * stride_uf + cols[None, :] * stride_ud,
                mask=mask_k[:, None] & mask_cols[None, :],
                other=0.0,
            )
            acc = tl.dot(a, u, acc, input_precision="ieee")
        mask = mask_rows[:, None] & mask_cols[None, :]
        if STORE_PRODUCT:
            tl.store(out_ptr + rows[:, None] * d + cols[None, :], acc, mask=mask)
        u_tile = tl.load(u_ptr + rows[:, None] * stride_uf + cols[None, :] * stride_ud, mask=mask, other=0.0)
        partial = tl.sum(tl.sum(u_tile.to(tl.float64) * acc.to(tl.float64), axis=1), axis=0)
        tl.store(partial_ptr + pid_m * tiles_n + pid_n, partial)

    @triton.jit
    def _law_state_kernel(state_ptr, ucu_ptr, ADAM_UPDATE: tl.constexpr):
        """The scalar part of law_adam_step_ (one program, float64); see law_state_update_ref."""
        step = tl.load(state_ptr + _STEP)
        lr = tl.load(state_ptr + _LR)
        first_contact = tl.load(state_ptr + _FIRST_CONTACT)
        bound = tl.load(state_ptr + _BOUND)
        lr_after = tl.load(state_ptr + _LR_AFTER)
        rho = tl.load(ucu_ptr) / tl.load(state_ptr + _TRACE_C)
        contact = (step >= 1.0) & (rho > bound)
        scale = tl.where(contact, tl.sqrt(bound / rho), 1.0)
        first = contact & (first_contact < 0.0)
        first_contact = tl.where(first, step - 1.0, first_contact)
        lr = tl.where(first & (lr_after == lr_after), lr_after, lr)  # lr_after == lr_after: not NaN
        tl.store(state_ptr + _LR, lr)
        tl.store(state_ptr + _FIRST_CONTACT, first_contact)
        tl.store(state_ptr + _RHO, rho)
        tl.store(state_ptr + _SCALE, scale)
        if ADAM_UPDATE:
            beta1_power = tl.load(state_ptr + _BETA1_POWER) * tl.load(state_ptr + _BETA1)
            beta2_power = tl.load(state_ptr + _BETA2_POWER) * tl.load(state_ptr + _BETA2)
            tl.store(state_ptr + _STEP, step + 1.0)
            tl.store(state_ptr + _STEP_SIZE, lr / (1.0 - beta1_power))
            tl.store(state_ptr + _BIAS_CORRECTION2_SQRT, tl.sqrt(1.0 - beta2_power))
            tl.store(state_ptr + _BETA1_POWER, beta1_power)
            tl.store(state_ptr + _BETA2_POWER, beta2_power)

    @triton.jit
    def _law_adam_kernel(
        u_ptr,
        gu_ptr,
        exp_avg_ptr,
        exp_avg_sq_ptr,
        state_ptr,
        n,
        BLOCK: tl.constexpr,
        ADAM_UPDATE: tl.constexpr,
        IEEE_FP32: tl.constexpr,
    ):
        """The elementwise part of law_adam_step_ over n = f·d contiguous elements, in U's dtype."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        mask = offs < n
        u = tl.load(u_ptr + offs, mask=mask, other=0.0)
        dtype = u.dtype
        scale = tl.load(state_ptr + _SCALE).to(dtype)
        u = u * scale
        if ADAM_UPDATE:
            gu = tl.load(gu_ptr + offs, mask=mask, other=0.0)
            m = tl.load(exp_avg_ptr + offs, mask=mask, other=0.0)
            v = tl.load(exp_avg_sq_ptr + offs, mask=mask, other=0.0)
            beta1 = tl.load(state_ptr + _BETA1)
            beta2 = tl.load(state_ptr + _BETA2)
            one_minus_beta1 = (1.0 - beta1).to(dtype)
            one_minus_beta2 = (1.0 - beta2).to(dtype)
            eps = tl.load(state_ptr + _EPS).to(dtype)
            step_size = tl.load(state_ptr + _STEP_SIZE).to(dtype)
            bias_correction2_sqrt = tl.load(state_ptr + _BIAS_CORRECTION2_SQRT).to(dtype)
            g = (gu * scale) * -2.0
            m = m + one_minus_beta1 * (g - m)
            v = v * beta2.to(dtype) + (one_minus_beta2 * g) * g
            if IEEE_FP32:  # tl.sqrt / "/" on fp32 are approximate on GPUs; fp64 ones are exact
                denom = tl.div_rn(tl.sqrt_rn(v), bias_correction2_sqrt) + eps
                u = u + (-step_size) * tl.div_rn(m, denom)
            else:
                denom = tl.sqrt(v) / bias_correction2_sqrt + eps
                u = u + (-step_size) * (m / denom)
            tl.store(exp_avg_ptr + offs, m, mask=mask)
            tl.store(exp_avg_sq_ptr + offs, v, mask=mask)
        tl.store(u_ptr + offs, u, mask=mask)


def _require_triton(name: str, device: torch.device) -> None:
    if not HAS_TRITON:
        raise RuntimeError(f"triton is not available ({TRITON_IMPORT_ERROR}); install it with `pip install triton`")
    if device.type == "cpu" and not triton_interpret_enabled():
        raise RuntimeError(
            f"{name} got CPU tensors: set TRITON_INTERPRET=1 before importing triton "
            "to run the kernel in the interpreter"
        )


def _device_context(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def law_quadratic_triton(
    U: torch.Tensor, G: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton implementation; same contract as law_quadratic_ref, C·U kept only per tile.

    Two launches of one tiled kernel (A = G storing the product, A = C reducing only), each
    writing one float64 partial per tile; the partials are summed by torch (deterministic).
    """
    _require_triton("law_quadratic_triton", U.device)
    check_law_quadratic_args(U, G, C)
    f, d = U.shape
    GU = torch.empty((f, d), dtype=U.dtype, device=U.device)
    if f == 0 or d == 0:
        zero = torch.zeros((), dtype=torch.float64, device=U.device)
        return GU, zero, zero.clone()
    settings = launch_settings(f, d, U.dtype)
    grid = (triton.cdiv(f, settings["BLOCK_M"]), triton.cdiv(d, settings["BLOCK_N"]))
    partials = torch.empty((2, grid[0] * grid[1]), dtype=torch.float64, device=U.device)
    with _device_context(U):
        for which, (A, store) in enumerate(((G, True), (C, False))):
            _law_quadratic_kernel[grid](
                A,
                U,
                GU,
                partials[which],
                f,
                d,
                A.stride(0),
                A.stride(1),
                U.stride(0),
                U.stride(1),
                BLOCK_M=settings["BLOCK_M"],
                BLOCK_N=settings["BLOCK_N"],
                BLOCK_K=settings["BLOCK_K"],
                ACC_FP64=U.dtype == torch.float64,
                STORE_PRODUCT=store,
                num_warps=settings["num_warps"],
                num_stages=settings["num_stages"],
            )
    sums = partials.sum(dim=1)
    return GU, sums[0], sums[1]


def law_adam_step_triton(
    U: torch.Tensor,
    GU: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    state: torch.Tensor,
    uCu: torch.Tensor,
    adam_update: bool = True,
) -> None:
    """Triton implementation; same contract as law_adam_step_ref.  Two launches on the current
    stream: the one-program scalar kernel updates ``state``, then the elementwise kernel reads it."""
    _require_triton("law_adam_step_triton", U.device)
    check_law_adam_step_args(U, GU, exp_avg, exp_avg_sq, state, uCu)
    n = U.numel()
    block = launch_settings(*U.shape, U.dtype)["BLOCK"]
    with _device_context(U):
        _law_state_kernel[(1,)](state, uCu, ADAM_UPDATE=adam_update, num_warps=1)
        if n > 0:
            _law_adam_kernel[(triton.cdiv(n, block),)](
                U,
                GU,
                exp_avg,
                exp_avg_sq,
                state,
                n,
                BLOCK=block,
                ADAM_UPDATE=adam_update,
                IEEE_FP32=U.dtype == torch.float32,
                num_warps=4,
            )
