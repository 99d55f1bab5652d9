"""The LaW constrained optimisation (law-reference §5), in Gram form.

Maximise J(U) = ‖Uᵀ Kᵀ‖² = tr(Uᵀ G U), G = KᵀK, over U = Δᵀ (f×d), subject to
ρ(U) = tr(Uᵀ C U)/tr(C) ≤ β with β = beta_ratio·ρ(U₀).  Adam (default betas/eps) on −J with
the analytic gradient −2GU (no autograd), then radial rescale U ← U·√(β/ρ) when ρ > β, and the
learning rate drops to ``lr_after_hitting_boundary`` on the first contact.

The product G·U is formed as Kᵀ(K U) when m < f (cheaper) and with G otherwise; either way no
(d×m) or (f×m) tensor outlives one product.  Reductions (ρ, J) are float64 even when the
iterate is float32.  Unlike the reference, which may return an aliased, unscaled iterate
(law-reference §11.1.6), this returns the final iterate, which is always feasible.
"""

from __future__ import annotations

import math

import torch

from .config import WashConfig


def law_optimize(delta0: torch.Tensor, keys: torch.Tensor, cov: torch.Tensor, config: WashConfig) -> tuple[torch.Tensor, dict]:
    """delta0 (d×f), keys (m×f), cov (f×f) → (Δ (d×f, float64), report)."""
    dtype = getattr(torch, config.law_dtype)
    dev = cov.device
    U = delta0.T.to(dev, dtype).contiguous().clone()
    K = keys.to(dev, dtype)
    C = cov.to(dev, dtype)
    m, f = K.shape
    G = None if m < f else K.T @ K

    def gram_times(X):
        return K.T @ (K @ X) if G is None else G @ X

    tr_c = float(cov.to(torch.float64).trace())

    def rho_of(X):
        return float((X * (C @ X)).sum(dtype=torch.float64)) / tr_c

    def objective(X):
        return float((X * gram_times(X)).sum(dtype=torch.float64))

    rho0 = rho_of(U)
    beta = config.beta_ratio * rho0
    j0 = objective(U)
    U.requires_grad_(False)
    param = torch.nn.Parameter(U)
    opt = torch.optim.Adam([param], lr=config.learning_rate)
    first_contact = None
    with torch.no_grad():
        for t in range(config.total_iters):
            param.grad = -2.0 * gram_times(param)
            opt.step()
            rho = rho_of(param)
            if rho > beta:
                param.mul_(math.sqrt(beta / rho))
                if first_contact is None:
                    first_contact = t
                    if config.lr_after_hitting_boundary is not None:
                        for group in opt.param_groups:
                            group["lr"] = config.lr_after_hitting_boundary
    U = param.detach()
    report = {"beta": beta, "rho_init": rho0, "rho_final": rho_of(U), "objective_init": j0,
              "objective_final": objective(U), "first_contact": first_contact}
    return U.T.to(torch.float64).contiguous(), report
