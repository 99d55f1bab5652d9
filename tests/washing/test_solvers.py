"""MEMIT λ search and the LaW solver against plain float64 references."""

from types import SimpleNamespace

import pytest
import torch

from law_fast.config import LawConfig, MemitConfig
from law_fast.testing import plain_lambda, plain_law, plain_memit_delta
from law_fast.washing.keys import KeyMoments
from law_fast.washing.law import law_optimize
from law_fast.washing.memit import (
    LambdaSearchError,
    MemitSolver,
    cholesky_with_jitter,
    choose_lambda,
    condition_estimate,
    memit_update,
)


def _problem(m=12, f=40, d=16, seed=0, rank_c=None):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(rank_c or 4 * f, f, generator=g, dtype=torch.float64)
    C = X.T @ X / X.shape[0]
    K = torch.randn(m, f, generator=g, dtype=torch.float64)
    R = torch.randn(m, d, generator=g, dtype=torch.float64)
    W = torch.randn(d, f, generator=g, dtype=torch.float64)
    return K, R, C, W


@pytest.mark.parametrize("m", [1, 12, 80])
@pytest.mark.parametrize("lam", [1e-3, 1.0, 1e3])
def test_factorised_delta_equals_fresh_solve(m, lam):
    K, R, C, _ = _problem(m=m)
    solver = MemitSolver.build(K, R, C)
    expected = plain_memit_delta(K, R, C, lam)
    torch.testing.assert_close(solver.delta(lam), expected, rtol=1e-8, atol=1e-10)
    assert solver.norm(lam) == pytest.approx(float(expected.norm()), rel=1e-8)
    assert solver.disruption(lam) == pytest.approx(float((expected @ C * expected).sum()), rel=1e-8)


@pytest.mark.parametrize("m", [1, 7, 30])
def test_few_keys_eigenproblem_equals_full(m):
    """With the keys (m < f) the m-dimensional eigenproblem gives the full one's Δ(λ), norms and bracket."""
    K, R, C, _ = _problem(m=m)
    low = MemitSolver.from_moments(K.T @ K, K.T @ R, C, keys=K)
    full = MemitSolver.from_moments(K.T @ K, K.T @ R, C)
    assert low.eig.numel() == m and full.eig.numel() == 40
    assert float(low.eig.max()) == pytest.approx(float(full.eig.max()), rel=1e-9)
    for lam in (1e-4, 1.0, 1e4):
        torch.testing.assert_close(low.delta(lam), full.delta(lam), rtol=1e-7, atol=1e-9)
        assert low.disruption(lam) == pytest.approx(full.disruption(lam), rel=1e-7)
        assert low.norm(lam) == pytest.approx(full.norm(lam), rel=1e-7)
    # duplicated facts: K of rank < m
    K2 = torch.cat([K, K[:1]])
    R2 = torch.cat([R, R[:1]])
    dup = MemitSolver.from_moments(K2.T @ K2, K2.T @ R2, C, keys=K2)
    torch.testing.assert_close(dup.delta(1.0), plain_memit_delta(K2, R2, C, 1.0), rtol=1e-7, atol=1e-9)


def test_reference_lambda_search_matches_plain_loop():
    K, R, C, W = _problem(m=30)
    W = W / W.norm() * 2 * float(plain_memit_delta(K, R, C, 0.5).norm())  # bounds reachable near λ = 0.5
    cfg = MemitConfig(lambda_rule="reference", mom2_update_weight=20.0, lambda_step=0.5, decay_factor=0.75)
    solver = MemitSolver.build(K, R, C)
    lam, trials = choose_lambda(solver, W, C, cfg)
    # the plain loop: fresh solve per trial
    w_norm, plain_lam, plain_trials = float(W.norm()), 20.0, 0
    while True:
        plain_trials += 1
        n = float(plain_memit_delta(K, R, C, plain_lam).norm())
        if n > 0.75 * w_norm:
            plain_lam += 0.5
        elif n < w_norm / 3:
            plain_lam *= 0.75
        else:
            break
    assert (lam, trials) == (pytest.approx(plain_lam), plain_trials)


def test_reference_lambda_search_fails_clearly_when_bounds_unreachable():
    K, R, C, W = _problem(m=2)
    cfg = MemitConfig(lambda_rule="reference", max_lambda_trials=50)
    with pytest.raises(LambdaSearchError, match="did not meet .* in 50 trials"):
        choose_lambda(MemitSolver.build(K, R, C), W * 1e6, C, cfg)


@pytest.mark.parametrize("budget", [1e-4, 1e-2, 0.5])
def test_disruption_rule_meets_budget_tightly(budget):
    K, R, C, W = _problem(m=8)
    cfg = MemitConfig(disruption_budget=budget, disruption_per_fact=None)
    solver = MemitSolver.build(K, R, C)
    lam, _ = choose_lambda(solver, W, C, cfg)
    out_energy = float((W @ C * W).sum())
    delta = plain_memit_delta(K, R, C, lam)
    ratio = float((delta @ C * delta).sum()) / out_energy
    lo = 1e-10 * float(solver.eig.max())
    assert ratio <= budget * (1 + 1e-9)
    if lam > lo:  # not at the floor: a slightly smaller λ would exceed the budget
        d2 = plain_memit_delta(K, R, C, lam * (1 - 1e-4))
        assert float((d2 @ C * d2).sum()) / out_energy > budget * (1 - 1e-3)


@pytest.mark.parametrize("m, keys, n_facts", [(8, True, 8), (8, False, 8), (80, False, 80), (80, False, None)])
def test_disruption_lambda_equals_per_trial_solve_search(m, keys, n_facts):
    """The default rule's λ = the same bisection with a fresh float64 solve per trial (the plain way)."""
    K, R, C, W = _problem(m=m)
    cfg = MemitConfig(disruption_per_fact=1e-4, disruption_budget=0.02)
    solver = MemitSolver.from_moments(K.T @ K, K.T @ R, C, keys=K if keys else None)
    lam, trials = choose_lambda(solver, W, C, cfg, n_facts=n_facts)
    budget = cfg.disruption_budget if n_facts is None else cfg.disruption_for(n_facts)
    assert lam == pytest.approx(plain_lambda(K, R, C, W, budget), rel=1e-9)
    assert 10 < trials < 100


def test_lambda_search_warns_when_the_rule_is_unreachable(caplog):
    K, R, C, W = _problem(m=80)  # m > f: the least-squares fit leaves ~70 % of ‖R‖ at any λ
    cfg = MemitConfig(lambda_rule="fit", fit_target=0.1)
    with caplog.at_level("WARNING", logger="law_fast.washing.memit"):
        lam, _ = choose_lambda(MemitSolver.build(K, R, C), W, C, cfg, resid_sq=float((R**2).sum()))
    assert "holds nowhere" in caplog.text
    assert lam == pytest.approx(1e-10 * float(MemitSolver.build(K, R, C).eig.max()))


def test_ill_conditioned_covariance_is_reported(caplog):
    Q, _ = torch.linalg.qr(torch.randn(20, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    C = Q @ torch.diag(torch.logspace(0, -13, 20, dtype=torch.float64)) @ Q.T  # cond 1e13, factorisable
    L = torch.linalg.cholesky(C)
    assert 1e12 < condition_estimate(C, L) <= 1e13 * (1 + 1e-3)
    with caplog.at_level("WARNING", logger="law_fast.washing.memit"):
        L, jitter = cholesky_with_jitter(C)
    assert jitter == 0.0 and "ill-conditioned: cond(C) ≥" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="law_fast.washing.memit"):
        cholesky_with_jitter(_problem(f=20)[2])
    assert caplog.text == ""


def test_memit_update_needs_targets():
    K, _, C, W = _problem(m=4)
    with pytest.raises(ValueError, match="needs key moments with targets"):
        memit_update(KeyMoments(K.T @ K, None, 0.0, 4), C, W, MemitConfig())


@pytest.mark.parametrize("m, keys", [(8, True), (8, False), (80, False)])
def test_fit_residual_in_closed_form_equals_plain(m, keys):
    K, R, C, _ = _problem(m=m)
    solver = MemitSolver.from_moments(K.T @ K, K.T @ R, C, keys=K if keys else None)
    resid_sq = float((R**2).sum())
    for lam in (1e-4, 1.0, 1e4):
        delta = plain_memit_delta(K, R, C, lam)
        expected = float(((K @ delta.T - R) ** 2).sum())
        assert solver.fit_sq(lam, resid_sq) == pytest.approx(expected, rel=1e-7, abs=1e-9 * resid_sq)


@pytest.mark.parametrize("target", [0.2, 0.5, 0.9])
def test_fit_rule_meets_target_tightly(target):
    K, R, C, W = _problem(m=80)  # m > f: the fit cannot reach 0, and the rule is still defined
    solver = MemitSolver.build(K, R, C)
    resid = float(R.norm())

    def fit(lam):
        delta = plain_memit_delta(K, R, C, lam)
        return float((K @ delta.T - R).norm()) / resid

    floor = fit(1e-10 * float(solver.eig.max()))
    lam, _ = choose_lambda(solver, W, C, MemitConfig(lambda_rule="fit", fit_target=target), float((R**2).sum()))
    if target <= floor:  # unreachable: the smallest λ of the range
        assert lam == pytest.approx(1e-10 * float(solver.eig.max()))
        return
    assert fit(lam) <= target * (1 + 1e-9)
    assert fit(lam * (1 + 1e-4)) > target * (1 - 1e-3)  # a slightly larger λ (less disruption) misses it


def test_fit_rule_needs_residual_and_valid_target():
    K, R, C, W = _problem(m=8)
    with pytest.raises(ValueError, match="squared norm"):
        choose_lambda(MemitSolver.build(K, R, C), W, C, MemitConfig(lambda_rule="fit"))
    with pytest.raises(ValueError, match="fit_target"):
        MemitConfig(fit_target=1.5)


def test_disruption_budget_scales_with_the_number_of_facts():
    cfg = MemitConfig(disruption_per_fact=1e-4, disruption_budget=3e-3)
    assert [cfg.disruption_for(m) for m in (1, 10, 30, 1000)] == pytest.approx([1e-4, 1e-3, 3e-3, 3e-3])
    assert cfg.replace(disruption_per_fact=None).disruption_for(10) == 3e-3
    with pytest.raises(ValueError, match="disruption_per_fact"):
        MemitConfig(disruption_per_fact=0.0)
    # memit_update spends the budget of its moments' fact count
    K, R, C, W = _problem(m=8)
    out_energy = float((W @ C * W).sum())
    moments = KeyMoments(K.T @ K, K.T @ R, float((R**2).sum()), len(K))
    for per_fact in (1e-5, 1e-4):  # budgets 8e-5, 8e-4 (the unconstrained Δ here disrupts 4.8e-3)
        delta, rep = memit_update(moments, C, W, MemitConfig(disruption_per_fact=per_fact, disruption_budget=1.0))
        assert rep["n_facts"] == 8
        assert float((delta @ C * delta).sum()) / out_energy == pytest.approx(8 * per_fact, rel=1e-4)


def test_memit_update_report():
    K, R, C, W = _problem(m=8)
    moments = KeyMoments(K.T @ K, K.T @ R, float((R**2).sum()), len(K))
    delta, rep = memit_update(moments, C, W, MemitConfig(lambda_rule="fixed", mom2_update_weight=0.1))
    torch.testing.assert_close(delta, plain_memit_delta(K, R, C, 0.1))
    assert rep["lambda"] == 0.1 and rep["jitter"] == 0.0
    fit = float((K @ delta.T - R).norm() / R.norm())
    assert rep["fit_residual"] == pytest.approx(fit, rel=1e-6) and 0 <= fit < 1


def test_singular_covariance_gets_reported_jitter():
    _, _, C, _ = _problem(f=20, rank_c=5)
    L, jitter = cholesky_with_jitter(C)
    assert jitter > 0
    torch.testing.assert_close(
        L @ L.T, C + jitter * float(C.diagonal().mean()) * torch.eye(20, dtype=C.dtype), rtol=0, atol=1e-8
    )
    with pytest.raises(ValueError, match="non-positive"):
        cholesky_with_jitter(torch.zeros(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("m", [5, 60])  # m < f (rank-deficient G) and m ≥ f
@pytest.mark.parametrize("lr_after", [None, 1e-5])
def test_law_gram_form_equals_autograd_reference(m, lr_after):
    K, R, C, _ = _problem(m=m, f=40, d=16)
    delta0 = plain_memit_delta(K, R, C, 1.0)
    cfg = LawConfig(learning_rate=1e-3, lr_after_hitting_boundary=lr_after, total_iters=1000, law_dtype="float64")
    ours, rep = law_optimize(delta0, K.T @ K, C, cfg)
    ref, first = plain_law(delta0, K, C, cfg)
    assert rep["first_contact"] == first and first is not None
    # through the keys (used when m < f/2) the same trajectory
    low, low_rep = law_optimize(delta0, K.T @ K, C, cfg, keys=K)
    assert float((low - ref).norm() / ref.norm()) < 1e-6 and low_rep["first_contact"] == first
    assert ours.dtype == torch.float64 and ours.shape == delta0.shape
    assert float((ours - ref).norm() / ref.norm()) < 1e-6
    # feasible, and the objective grew
    assert rep["rho_final"] <= rep["beta"] * (1 + 1e-12)
    assert rep["objective_final"] > rep["objective_init"]
    U = ours.T
    assert rep["objective_final"] == pytest.approx(float((U * (K.T @ (K @ U))).sum()), rel=1e-12)


@pytest.mark.parametrize("lr_after", [None, 1e-5])
def test_law_float32_tracks_float64(lr_after):
    """The docstring's bound: float32 products and Adam, float64 reductions, within 1e-4 of float64."""
    K, R, C, _ = _problem(m=10)
    delta0 = plain_memit_delta(K, R, C, 1.0)
    cfg = LawConfig(learning_rate=1e-3, lr_after_hitting_boundary=lr_after, total_iters=1000)
    d64, rep64 = law_optimize(delta0, K.T @ K, C, cfg)
    d32, rep32 = law_optimize(delta0, K.T @ K, C, cfg.replace(law_dtype="float32"))
    assert d32.dtype == torch.float64
    assert float((d32 - d64).norm() / d64.norm()) < 1e-4
    assert rep32["first_contact"] == rep64["first_contact"] is not None
    assert rep32["rho_final"] <= rep32["beta"] * (1 + 1e-6)


@pytest.mark.parametrize("law_dtype, tolerance", [("float64", 1e-12), ("float32", 1e-5)])
def test_law_backends_follow_the_same_trajectory(law_dtype, tolerance):
    """Dispatcher kernels (C++ on CPU when built) and the pure-torch default kernels."""
    from law_fast.kernels.law_step import law_adam_step_ref, law_quadratic_ref
    from law_fast.washing.law import LawKernels

    K, R, C, _ = _problem(m=60, f=300, d=20)  # f > one 256-row tile of the C++ kernel
    delta0 = plain_memit_delta(K, R, C, 1.0)
    cfg = LawConfig(learning_rate=1e-3, lr_after_hitting_boundary=1e-5, total_iters=300, law_dtype=law_dtype)
    dispatched, rep = law_optimize(delta0, K.T @ K, C, cfg)
    default, rep_default = law_optimize(
        delta0, K.T @ K, C, cfg, kernels=LawKernels(law_quadratic_ref, law_adam_step_ref)
    )
    assert rep["first_contact"] == rep_default["first_contact"] is not None
    assert float((dispatched - default).norm() / default.norm()) < tolerance


def test_law_zero_iterations_returns_the_init():
    K, R, C, _ = _problem(m=10)
    delta0 = plain_memit_delta(K, R, C, 1.0)
    # WashConfig wants total_iters >= 1; the solver only reads these six fields
    config = SimpleNamespace(
        learning_rate=1e-3,
        lr_after_hitting_boundary=None,
        total_iters=0,
        beta_ratio=1.1,
        law_dtype="float64",
        law_whiten=False,
    )
    delta, rep = law_optimize(delta0, K.T @ K, C, config)
    assert torch.equal(delta, delta0) and rep["first_contact"] is None
    assert rep["rho_final"] == rep["rho_init"] and rep["beta"] == pytest.approx(1.1 * rep["rho_init"], rel=1e-15)


def test_law_rejects_keys_in_place_of_the_gram_matrix():
    K, R, C, _ = _problem(m=12)
    delta0 = plain_memit_delta(K, R, C, 1.0)
    with pytest.raises(ValueError, match="gram must be the .* Gram matrix"):
        law_optimize(delta0, K, C, LawConfig())
    with pytest.raises(ValueError, match="cov must have shape"):
        law_optimize(delta0, K.T @ K, C[:5], LawConfig())
    with pytest.raises(ValueError, match="cov must have a positive trace"):
        law_optimize(delta0, K.T @ K, torch.zeros_like(C), LawConfig())
    for name in ("delta0", "gram", "cov"):
        args = {"delta0": delta0.clone(), "gram": K.T @ K, "cov": C.clone()}
        args[name][0, 0] = float("nan")
        with pytest.raises(ValueError, match=f"{name} has non-finite entries"):
            law_optimize(args["delta0"], args["gram"], args["cov"], LawConfig())


def _law_problem(f=24, d=6, m=10, seed=3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * f, f, generator=g, dtype=torch.float64)
    K = torch.randn(m, f, generator=g, dtype=torch.float64)
    delta0 = 1e-2 * torch.randn(d, f, generator=g, dtype=torch.float64)
    return X.T @ X / X.shape[0], K, delta0


def test_whitened_law_equals_plain_for_an_isotropic_cov():
    """C = c·I: Ũ = √c·U and the lr scales by √c, so Adam takes the same steps (up to its eps)."""
    _, K, delta0 = _law_problem()
    cfg = LawConfig(learning_rate=1e-3, total_iters=60, beta_ratio=1.2, lr_after_hitting_boundary=1e-4)
    cov = 3.7 * torch.eye(K.shape[1], dtype=torch.float64)
    plain, rep = law_optimize(delta0, K.T @ K, cov, cfg)
    white, rep_w = law_optimize(delta0, K.T @ K, cov, cfg.replace(law_whiten=True))
    assert float((white - plain).norm() / plain.norm()) < 1e-6
    for key in ("beta", "rho_init", "rho_final", "objective_init", "objective_final"):
        assert rep_w[key] == pytest.approx(rep[key], rel=1e-6), key
    assert rep_w["first_contact"] == rep["first_contact"]


def test_whitened_law_keeps_its_gain_where_the_cov_is_anisotropic():
    """C_eff with a heavily weighted direction the keys use: plain Adam's steps spend the budget there and
    the radial rescale shrinks the objective; whitened steps raise it, and stay feasible."""
    C, K, delta0 = _law_problem()
    heavy = K[:3].T @ K[:3]
    C_eff = C + 50.0 * C.trace() * heavy / heavy.trace()
    cfg = LawConfig(learning_rate=2e-3, total_iters=200, beta_ratio=1.1)
    G = K.T @ K
    _, plain = law_optimize(delta0, G, C_eff, cfg)
    white_delta, white = law_optimize(delta0, G, C_eff, cfg.replace(law_whiten=True))
    assert white["objective_final"] > white["objective_init"]
    assert white["objective_final"] > plain["objective_final"]
    rho = float((white_delta @ C_eff * white_delta).sum() / C_eff.trace())
    assert rho == pytest.approx(white["rho_final"], rel=1e-9) and rho <= white["beta"] * (1 + 1e-9)


def test_law_refuses_an_initialisation_in_the_covariance_null_space():
    """Statistics of too few tokens: Δ₀ in C's null space has ρ₀ ≈ 0, the bound β·ρ₀ is rounding noise
    and the rescale would zero (or NaN) the update — a clear error instead."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 8, generator=g, dtype=torch.float64)
    null = torch.linalg.svd(X).Vh[3:]  # (5, 8): outside the span of C = XᵀX
    K = torch.randn(2, 5, generator=g, dtype=torch.float64) @ null
    U0 = torch.randn(4, 5, generator=g, dtype=torch.float64) @ null
    with pytest.raises(ValueError, match="no energy under the covariance"):
        law_optimize(U0, K.T @ K, X.T @ X, LawConfig(learning_rate=1e-3, total_iters=5))
    law_optimize(U0 + 1e-3 * torch.randn(4, 8, generator=g, dtype=torch.float64), K.T @ K, X.T @ X, LawConfig())
