"""The LaW constrained optimisation (law-reference §5), in Gram form.

Maximise J(U) = ‖Uᵀ Kᵀ‖² = tr(Uᵀ G U), G = KᵀK, over U = Δᵀ (f×d), subject to
ρ(U) = tr(Uᵀ C U)/tr(C) ≤ β with β = beta_ratio·ρ(U₀): torch.optim.Adam (betas 0.9/0.999,
eps 1e-8) on −J with the analytic gradient −2GU (no autograd), then the radial rescale
U ← U·√(β/ρ) when ρ > β, and lr ← ``lr_after_hitting_boundary`` at the first contact.

Each iteration is two fused ops (law_fast.ops, docs/law_solver.md): ``law_adam_step_`` (pending
rescale, lr drop, Adam step) and ``law_quadratic`` (the one stacked product [G; C]·U giving the
next gradient G·U and ρ).  Its cost, 4·f²·d FLOPs, does not depend on the number of keys m: the
caller forms G once (e.g. streaming KᵀK with ``law_fast.ops.cov_accumulate_``).  The scalars
(step, lr, first contact, ρ) stay in a device tensor: no host synchronisation per iteration.

Unlike the reference, which may return an aliased, unscaled iterate (law-reference §11.1.6),
this returns the final iterate, which is always feasible (ρ ≤ β up to rounding).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .. import ops
from ..config import LawConfig
from ..kernels.law_step import STATE_FIRST_CONTACT, law_state
from .retain import restrict

log = logging.getLogger(__name__)


class LawKernels(NamedTuple):
    """The two kernels an iteration runs (same signatures as the ops).  The default dispatches
    to whichever implementation serves the tensors' device (``law_fast.ops.backend_report()``);
    tests and benchmarks pass e.g. ``LawKernels(law_quadratic_ref, law_adam_step_ref)``."""

    quadratic: Callable = ops.law_quadratic
    adam_step: Callable = ops.law_adam_step_


def _check_inputs(delta0: torch.Tensor, gram: torch.Tensor, cov: torch.Tensor) -> None:
    if delta0.dim() != 2:
        raise ValueError(f"delta0 must be a 2-D tensor of shape (d, f), got shape {list(delta0.shape)}")
    f = delta0.shape[1]
    if gram.dim() != 2 or tuple(gram.shape) != (f, f):
        raise ValueError(
            f"gram must be the (f, f) = ({f}, {f}) Gram matrix KᵀK of the keys (f = delta0.shape[1]), "
            f"got shape {list(gram.shape)}; law_optimize takes G = keys.T @ keys, not the keys"
        )
    if cov.dim() != 2 or tuple(cov.shape) != (f, f):
        raise ValueError(f"cov must have shape (f, f) = ({f}, {f}), got shape {list(cov.shape)}")
    for name, t in (("delta0", delta0), ("gram", gram), ("cov", cov)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def low_rank_quadratic(keys: torch.Tensor) -> Callable:
    """A ``law_quadratic`` for few keys (m < f/2): G·U = Kᵀ(K·U) and tr(UᵀGU) = ‖K·U‖² cost 4·m·f·d
    instead of 2·f²·d, so an iteration costs about half the stacked product (C·U remains)."""

    def quadratic(U, gram, C):
        K = keys.to(U.device, U.dtype)
        KU = K @ U
        return K.T @ KU, (KU * KU).sum(dtype=torch.float64), (U * (C @ U)).sum(dtype=torch.float64)

    return quadratic


def law_optimize(
    delta0: torch.Tensor,
    gram: torch.Tensor,
    cov: torch.Tensor,
    config: LawConfig,
    *,
    kernels: LawKernels | None = None,
    keys: torch.Tensor | None = None,
    progress: bool = False,
    basis: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """Run LaW from the MEMIT init: (Δ (d×f) float64, report).

    delta0: (d, f) the initial update Δ₀ (any float dtype and device).
    gram:   (f, f) G = KᵀK of the (m, f) keys; the solver runs on its device.
    cov:    (f, f) the key second moment C (moved to gram's device).
    config: learning_rate, lr_after_hitting_boundary, total_iters, beta_ratio, law_dtype.
      law_dtype "float64": every product and reduction in float64.  Matches the
        reference's autograd-through-K float64 solver (law_fast.testing.plain_law) to 1e-6
        relative after 1000 iterations, with the same first-contact iteration.
      law_dtype "float32": products and the Adam update in float32, reductions (ρ, J) in
        float64.  Stays within 1e-4 relative (‖Δ32 − Δ64‖/‖Δ64‖) of the float64 solution in the
        tests (1000 iterations, lr 1e-3); the first-contact iteration may differ by a step when
        the boundary is crossed by a hair.
    kernels: the two kernels to use (default: the dispatcher ops).
    keys: optionally the (m, f) keys behind ``gram``; when m < f/2 the products go through them
        (:func:`low_rank_quadratic`), which is cheaper than the Gram form for few facts.
    progress: show a tqdm bar over the iterations.
    basis: optionally V (f, r) orthonormal: Δ is restricted to Δ = Δ̃Vᵀ and the loop runs in r dimensions
        (``law_fast.washing.retain.restrict``).
    config.law_whiten: the loop runs on Ũ = LᵀU (C = LLᵀ): the same problem with G̃ = L⁻¹GL⁻ᵀ and the
        constraint ‖Ũ‖² (C̃ = I), learning rates × ‖Ũ₀‖/‖U₀‖; Δ = (L⁻ᵀŨ)ᵀ, the report in the original ρ.

    Returns Δ = Uᵀ (d, f) float64 on gram's device: the final iterate, after its rescale, and
    report = {beta, rho_init, rho_final, objective_init, objective_final, first_contact} (floats;
    first_contact: 0-based iteration whose step first crossed the boundary, or None).  rho_final
    and objective_final are recomputed from the returned iterate.
    """
    _check_inputs(delta0, gram, cov)
    if basis is not None:  # the same problem in the span of V: U = V Ũ, Δ = Δ̃Vᵀ
        V, gram, cov, keys, _ = restrict(basis, gram, cov, keys)
        reduced, report = law_optimize(
            delta0.to(V) @ V, gram, cov, config, kernels=kernels, keys=keys, progress=progress
        )
        return reduced @ V.T, report
    if config.law_whiten:
        return _whitened(delta0, gram, cov, config, kernels, keys, progress)
    kernels = kernels or LawKernels()
    if keys is not None and 2 * keys.shape[0] < delta0.shape[1]:
        kernels = kernels._replace(quadratic=low_rank_quadratic(keys))
    dtype = getattr(torch, config.law_dtype)
    device = gram.device
    f, d = delta0.shape[1], delta0.shape[0]
    U = torch.empty((f, d), dtype=dtype, device=device)
    U.copy_(delta0.detach().T)
    G = gram.detach().to(device=device, dtype=dtype)
    C = cov.detach().to(device=device, dtype=dtype)
    trace_c = cov.detach().to(device).diagonal().sum(dtype=torch.float64)
    sums = torch.stack([trace_c] + [t.detach().to(device).sum(dtype=torch.float64) for t in (delta0, gram, cov)])
    sums = sums.tolist()  # the one host sync before the loop
    for name, value in zip(("delta0", "gram", "cov"), sums[1:]):
        if not math.isfinite(value):
            raise ValueError(f"{name} has non-finite entries (NaN or inf); LaW would return a NaN update")
    if not sums[0] > 0:
        raise ValueError(f"cov must have a positive trace (ρ = tr(UᵀCU)/tr(C)), got tr(cov) = {sums[0]}")

    GU, objective_init, uCu = kernels.quadratic(U, G, C)
    rho_init = uCu / trace_c
    # ρ₀ against an isotropic update of the same norm (‖U‖²/f per unit of tr(C)): ~0 when Δ₀ lies in C's null
    # space, where the bound β·ρ₀ is ≤ 0 or rounding noise and the radial rescale destroys the update
    isotropic = float(U.double().square().sum()) / f
    if not float(rho_init) > 1e-12 * isotropic:
        raise ValueError(
            f"LaW's constraint is relative to the initial update's ρ₀ = tr(Δ₀CΔ₀ᵀ)/tr(C) = {float(rho_init):.3g} "
            f"({float(rho_init) / max(isotropic, 1e-300):.1e} of an isotropic update's): "
            "the initialisation has no energy under the covariance, which is rank-deficient where the edit "
            "lies (statistics from too few tokens for the layer's width?); use more statistics samples"
        )
    bound = config.beta_ratio * rho_init
    state = law_state(config.learning_rate, bound, trace_c, config.lr_after_hitting_boundary, device=device)
    exp_avg = torch.zeros_like(U)
    exp_avg_sq = torch.zeros_like(U)
    for _ in tqdm(range(config.total_iters), desc="LaW", unit="it", leave=False, disable=not progress):
        kernels.adam_step(U, GU, exp_avg, exp_avg_sq, state, uCu, True)
        GU, _, uCu = kernels.quadratic(U, G, C)
    kernels.adam_step(U, GU, exp_avg, exp_avg_sq, state, uCu, False)  # the last iteration's rescale
    _, objective_final, uCu_final = kernels.quadratic(U, G, C)

    values = torch.stack(
        [bound, rho_init, uCu_final / trace_c, objective_init, objective_final, state[STATE_FIRST_CONTACT]]
    ).tolist()
    if not all(math.isfinite(v) for v in values[1:5]):
        raise FloatingPointError(
            f"LaW diverged to a non-finite update (report {values[:5]}); lower learning_rate or use law_dtype='float64'"
        )
    first_contact = int(values[5]) if values[5] >= 0 else None
    report = {
        "beta": values[0],
        "rho_init": values[1],
        "rho_final": values[2],
        "objective_init": values[3],
        "objective_final": values[4],
        "first_contact": first_contact,
    }
    log.debug("LaW (f=%d, d=%d, %s, %d iterations): %s", f, d, config.law_dtype, config.total_iters, report)
    return U.T.to(torch.float64).contiguous(), report


def _whitened(delta0, gram, cov, config: LawConfig, kernels, keys, progress) -> tuple[torch.Tensor, dict]:
    """law_optimize on Ũ = LᵀU (see ``config.law_whiten``), float64 transforms on gram's device."""
    from .memit import cholesky_with_jitter

    device = gram.device
    C = cov.detach().to(device, torch.float64)
    L, _ = cholesky_with_jitter(C)
    G = gram.detach().to(device, torch.float64)
    G_w = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, G, upper=False).T, upper=False)
    G_w = 0.5 * (G_w + G_w.T)  # L⁻¹ G L⁻ᵀ
    U0 = delta0.detach().to(device, torch.float64).T
    U0_w = L.T @ U0
    scale = float(U0_w.norm() / U0.norm().clamp_min(1e-300))
    keys_w = None
    if keys is not None:
        keys_w = torch.linalg.solve_triangular(L, keys.detach().to(device, torch.float64).T, upper=False).T  # K L⁻ᵀ
    lr_after = config.lr_after_hitting_boundary
    inner = config.replace(
        law_whiten=False,
        learning_rate=config.learning_rate * scale,
        lr_after_hitting_boundary=None if lr_after is None else lr_after * scale,
    )
    eye = torch.eye(C.shape[0], dtype=torch.float64, device=device)
    U_w, report = law_optimize(U0_w.T, G_w, eye, inner, kernels=kernels, keys=keys_w, progress=progress)
    delta = torch.linalg.solve_triangular(L.T, U_w.T, upper=True).T  # (L⁻ᵀ Ũ)ᵀ
    to_rho = C.shape[0] / float(C.diagonal().sum())  # ρ̃ = ‖Ũ‖²/f → ρ = ‖Ũ‖²/tr(C)
    report = {**report, **{k: report[k] * to_rho for k in ("beta", "rho_init", "rho_final")}}
    return delta.contiguous(), report
