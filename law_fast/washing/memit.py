"""MEMIT update with λ search (law-reference §4), one factorisation per layer.

For keys K (m×f), residuals R (m×d) and covariance C (f×f) the update is
    Δ(λ) = Rᵀ K (λC + KᵀK)⁻¹            (d×f)
With C = LLᵀ (Cholesky) and L⁻¹ G L⁻ᵀ = Q diag(s) Qᵀ (G = KᵀK), and P = Qᵀ L⁻¹ Kᵀ R (f×d):
    Δ(λ)ᵀ = L⁻ᵀ Q diag(1/(λ+s)) P
so every λ trial costs O(f²) instead of a fresh f×f solve:
    tr(ΔCΔᵀ) = Σ_i ‖P_i‖² / (λ+s_i)²,   ‖Δ‖²_F = dᵀ S d with d_i = 1/(λ+s_i), S = (QᵀC⁻¹Q) ∘ (PPᵀ).
Everything here is float64.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..config import MemitConfig
from .retain import restrict

log = logging.getLogger(__name__)


class LambdaSearchError(RuntimeError):
    """The reference λ search could not meet its norm bounds."""


@dataclass
class MemitSolver:
    """One layer's factorisation, reused by every λ trial."""

    chol: torch.Tensor  # L, C + jitter·I = L Lᵀ
    basis: torch.Tensor  # L⁻ᵀ Q  (f×r), r = f, or the rank of K when built from few keys
    eig: torch.Tensor  # s (r,)
    proj: torch.Tensor  # P (r×d)
    norm_weights: torch.Tensor  # S (r×r)
    jitter: float  # added to C's diagonal (relative to mean diag), 0 if none
    disruption_weights: torch.Tensor | None = None  # (basisᵀ C_b basis) ∘ (P Pᵀ) for a budget covariance C_b ≠ C

    @classmethod
    def build(cls, keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor) -> MemitSolver:
        """From keys (m, f) and residuals (m, d); see :meth:`from_moments`."""
        K = keys.to(cov.device, torch.float64)
        return cls.from_moments(K.T @ K, K.T @ resid.to(cov.device, torch.float64), cov, keys=K)

    @classmethod
    def from_moments(
        cls,
        gram: torch.Tensor,
        cross: torch.Tensor,
        cov: torch.Tensor,
        keys: torch.Tensor | None = None,
        budget_cov: torch.Tensor | None = None,
    ) -> MemitSolver:
        """gram = KᵀK (f, f), cross = KᵀR (f, d), cov (f, f); float64 on cov's device.
        ``budget_cov`` C_b: :meth:`disruption` measures tr(ΔC_bΔᵀ) instead of tr(ΔCΔᵀ) (the corpus
        covariance while C = C_eff also holds retained keys: the budget stays the corpus's).

        With the keys K (m, f) themselves and m < f, the eigenproblem is m-dimensional: with
        A = L⁻¹Kᵀ (f×m) and AᵀA = V diag(s) Vᵀ, the nonzero spectrum of L⁻¹GL⁻ᵀ = AAᵀ is s with
        vectors Q = A V s^{-1/2}, and B = KᵀR lies in their span — O(f²m + m³) instead of O(f³)."""
        dev = cov.device
        B = cross.to(dev, torch.float64)
        C = cov.to(torch.float64)
        L, jitter = cholesky_with_jitter(C)
        if keys is not None and keys.shape[0] < C.shape[0]:
            A = torch.linalg.solve_triangular(L, keys.to(dev, torch.float64).T, upper=False)  # L⁻¹Kᵀ
            s, V = torch.linalg.eigh(A.T @ A)
            keep = s > s.max().clamp_min(1e-300) * 1e-12 * keys.shape[0]
            s, V = s[keep], V[:, keep]
            Q = (A @ V) / s.sqrt()
        else:
            G = gram.to(dev, torch.float64)
            Linv_G = torch.linalg.solve_triangular(L, G, upper=False)
            M = torch.linalg.solve_triangular(L, Linv_G.T, upper=False)  # L⁻¹ G L⁻ᵀ
            s, Q = torch.linalg.eigh(0.5 * (M + M.T))
            s = s.clamp_min(0)
        P = Q.T @ torch.linalg.solve_triangular(L, B, upper=False)
        basis = torch.linalg.solve_triangular(L.T, Q, upper=True)  # L⁻ᵀ Q
        PPt = P @ P.T
        S = (basis.T @ basis) * PPt
        T = None if budget_cov is None else (basis.T @ budget_cov.to(dev, torch.float64) @ basis) * PPt
        return cls(L, basis, s, P, S, jitter, T)

    def delta(self, lam: float) -> torch.Tensor:
        """Δ(λ), d×f float64."""
        return (self.basis @ (self.proj / (lam + self.eig)[:, None])).T

    def disruption(self, lam: float) -> float:
        """tr(Δ C Δᵀ) (C without jitter is within jitter·‖Δ‖² of this); tr(Δ C_b Δᵀ) with a budget covariance."""
        if self.disruption_weights is not None:
            d = 1.0 / (lam + self.eig)
            return max(float(d @ self.disruption_weights @ d), 0.0)
        return float(((self.proj**2).sum(1) / (lam + self.eig) ** 2).sum())

    def fit_sq(self, lam: float, resid_sq: float) -> float:
        """‖KΔ(λ)ᵀ − R‖²_F = Σ ‖P_i‖² (s_i/(λ+s_i)² − 2/(λ+s_i)) + ‖R‖² (increasing in λ)."""
        inv = 1.0 / (lam + self.eig)
        return float(((self.proj**2).sum(1) * (self.eig * inv**2 - 2 * inv)).sum()) + resid_sq

    def norm(self, lam: float) -> float:
        """‖Δ(λ)‖_F."""
        d = 1.0 / (lam + self.eig)
        return math.sqrt(max(float(d @ self.norm_weights @ d), 0.0))


ILL_CONDITIONED = 1e12  # cond(C) above which the solves lose more than 12 of float64's 16 digits: warned


def condition_estimate(C: torch.Tensor, L: torch.Tensor, iterations: int = 30) -> float:
    """cond(C) estimated from below by power iteration on C and on C⁻¹ (through its Cholesky
    factor L): 2·iterations matrix-vector products and triangular solves, O(f²) each."""
    v = torch.randn(C.shape[0], 1, dtype=C.dtype, generator=torch.Generator().manual_seed(0)).to(C.device)
    top, bottom = v, v
    for _ in range(iterations):
        top = C @ top
        top = top / top.norm()
        bottom = torch.cholesky_solve(bottom, L)
        bottom = bottom / bottom.norm()
    largest = float(top.T @ C @ top)
    smallest = 1.0 / float(bottom.T @ torch.cholesky_solve(bottom, L))
    return largest / smallest


def cholesky_with_jitter(C: torch.Tensor, max_tries: int = 12) -> tuple[torch.Tensor, float]:
    """Cholesky of C, adding ε·mean(diag C)·I (ε = 0, 1e-10, 1e-9, …) until it succeeds; logs a
    warning for any jitter, and for a factorisable C whose condition number is above ILL_CONDITIONED."""
    scale = float(C.diagonal().mean())
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(
            f"covariance has a non-positive or non-finite mean diagonal ({scale}); are the statistics empty?"
        )
    eye = torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    for i in range(max_tries):
        eps = 0.0 if i == 0 else 10.0 ** (i - 11)
        L, info = torch.linalg.cholesky_ex(C + eps * scale * eye)
        if int(info) == 0:
            if eps:
                log.warning("covariance is singular or ill-conditioned: added %.1e × mean(diag) to its diagonal", eps)
            else:
                cond = condition_estimate(C, L)
                if cond > ILL_CONDITIONED:
                    log.warning(
                        "covariance is ill-conditioned: cond(C) ≥ %.1e (float64 keeps about %d digits of "
                        "the solves); more statistics samples help",
                        cond,
                        max(0, 16 - round(math.log10(cond))),
                    )
            return L, eps
    raise ValueError("covariance is not positive definite even with jitter 0.1·mean(diag); check the statistics")


def choose_lambda(
    solver: MemitSolver,
    weight: torch.Tensor,
    cov: torch.Tensor,
    config: MemitConfig,
    resid_sq: float | None = None,
    n_facts: int | None = None,
) -> tuple[float, int]:
    """λ per ``config.lambda_rule``; returns (λ, number of trials).  ``resid_sq`` = ‖R‖² (rule
    "fit"); ``n_facts``: the facts the edit fits (rule "disruption", :meth:`MemitConfig.disruption_for`;
    None: ``config.disruption_budget`` unscaled)."""
    if config.lambda_rule == "fixed":
        return config.mom2_update_weight, 1
    W = weight.to(cov.device, torch.float64)
    if config.lambda_rule == "reference":
        w_norm = float(W.norm())
        lo, hi = config.norm_bounds[0] * w_norm, config.norm_bounds[1] * w_norm
        lam = config.mom2_update_weight
        for trial in range(1, config.max_lambda_trials + 1):
            n = solver.norm(lam)
            if n > hi:
                lam += config.lambda_step
            elif n < lo:
                lam *= config.decay_factor
            else:
                return lam, trial
        raise LambdaSearchError(
            f"the reference λ search did not meet {config.norm_bounds[0]:.3g}·‖W‖ ≤ ‖Δ‖ ≤ {config.norm_bounds[1]:.3g}·‖W‖ "
            f"in {config.max_lambda_trials} trials (last λ = {lam:.3g}, ‖Δ‖/‖W‖ = {n / w_norm:.3g}). These bounds only "
            "suit very large fact sets; use lambda_rule='disruption' (default) or 'fixed'."
        )
    if config.lambda_rule == "fit":
        # the largest λ (least disruption) whose fit ‖KΔᵀ−R‖/‖R‖ is at most fit_target
        if resid_sq is None:
            raise ValueError("lambda_rule='fit' needs the residuals' squared norm")
        return _bisect_log_lambda(
            solver, lambda lam: solver.fit_sq(lam, resid_sq) <= config.fit_target**2 * resid_sq, small_ok=True
        )
    # "disruption": the smallest λ with tr(ΔCΔᵀ)/tr(WCWᵀ) ≤ budget (the ratio decreases monotonically in λ)
    budget = (config.disruption_budget if n_facts is None else config.disruption_for(n_facts)) * float(
        (W @ cov.to(torch.float64) * W).sum()
    )
    return _bisect_log_lambda(solver, lambda lam: solver.disruption(lam) <= budget, small_ok=False)


def _bisect_log_lambda(solver: MemitSolver, ok, small_ok: bool) -> tuple[float, int]:
    """Bisection on log λ over [1e-10, 1e10]·max(s) for the boundary of a monotone condition:
    ``small_ok`` — ``ok`` holds below a threshold, return the largest such λ; else ``ok`` holds
    above it, return the smallest.  Returns (λ, trials); the end of the range if ``ok`` holds everywhere."""
    scale = float(solver.eig.max().clamp_min(1e-30))
    lo, hi = 1e-10 * scale, 1e10 * scale
    edge = hi if small_ok else lo
    if ok(edge):
        return edge, 1
    trials = 1
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        trials += 1
        if ok(mid) != small_ok:  # mid lies on hi's side of the boundary
            hi = mid
        else:
            lo = mid
        if hi / lo < 1 + 1e-6:
            break
    lam = lo if small_ok else hi
    if not ok(lam):
        log.warning(
            "λ search: the rule's condition holds nowhere in [%.1e, %.1e]; using λ = %.3g, which misses it",
            1e-10 * scale,
            1e10 * scale,
            lam,
        )
    return lam, trials


def memit_update(
    moments,
    cov: torch.Tensor,
    weight: torch.Tensor,
    config: MemitConfig,
    basis: torch.Tensor | None = None,
    budget_cov: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """Δ (d×f float64) for one layer from its :class:`~law_fast.washing.keys.KeyMoments` (gram, cross,
    resid_sq) and a report (λ, trials, norms, disruption, fit, jitter).

    ``budget_cov``: the covariance the λ rule "disruption" measures its budget in, when ``cov`` is not
    it (C_eff = C + ν·tr(C)·C_p shapes Δ; the budget tr(ΔCΔᵀ) ≤ b·tr(WCWᵀ) stays on the corpus C, so
    ν moves the edit away from the retained keys without shrinking it).  The report's disruption is
    measured in it too (``retained_disruption``: tr(ΔC_effΔᵀ)/tr(WC_effWᵀ)).

    ``basis`` V (f×r, orthonormal): Δ = Δ̃Vᵀ is restricted to its span — the problem is solved in r
    dimensions (VᵀGV, VᵀB, VᵀCV); the λ rules see the same disruption, norm and fit as in f dimensions.

    ``config.regulariser="identity"`` (AlphaEdit's L2): λI takes the place of λ·``cov`` in the solve; the
    budget and the report's disruption stay on ``cov`` (or ``budget_cov``)."""
    if moments.cross is None:
        raise ValueError("memit_update needs key moments with targets (key_moments(..., targets=, z_layer=))")
    measured = cov if budget_cov is None else budget_cov
    if config.regulariser == "identity":
        cov, budget_cov = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device), measured
    if basis is None:
        solver = MemitSolver.from_moments(moments.gram, moments.cross, cov, keys=moments.keys, budget_cov=budget_cov)
    else:
        V, gram, sub_cov, keys, cross = restrict(basis, moments.gram, cov, moments.keys, moments.cross)
        sub_budget = None if budget_cov is None else restrict(basis, moments.gram, budget_cov)[2]
        solver = MemitSolver.from_moments(gram, cross, sub_cov, keys=keys, budget_cov=sub_budget)
    lam, trials = choose_lambda(solver, weight, measured, config, moments.resid_sq, moments.count)
    delta = solver.delta(lam) if basis is None else solver.delta(lam) @ V.T
    W = weight.to(delta.device, torch.float64)
    C = measured.to(delta.device, torch.float64)
    G = moments.gram.to(delta.device, torch.float64)
    B = moments.cross.to(delta.device, torch.float64)
    dC = float((delta @ C * delta).sum())
    # ‖K Δᵀ − R‖² = tr(Δ G Δᵀ) − 2 tr(Δ B) + ‖R‖²
    fit_sq = float((delta @ G * delta).sum()) - 2 * float((delta * B.T).sum()) + moments.resid_sq
    report = {
        "lambda": lam,
        "lambda_trials": trials,
        "jitter": solver.jitter,
        "n_facts": moments.count,
        "delta_norm_ratio": float(delta.norm() / W.norm()),
        "disruption": dC / float((W @ C * W).sum()),
        "rho": dC / float(C.trace()),
        "fit_residual": math.sqrt(max(fit_sq, 0.0) / max(moments.resid_sq, 1e-300)),
    }
    if budget_cov is not None and config.regulariser == "covariance":  # C_eff shaped Δ: its disruption too
        E = cov.to(delta.device, torch.float64)
        report["retained_disruption"] = float((delta @ E * delta).sum()) / float((W @ E * W).sum())
    return delta, report
