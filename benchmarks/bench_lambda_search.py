"""Benchmark: λ search — one factorisation per layer reused by every trial vs a fresh solve per trial.

Random problem of layer shape (f, d) with m facts (m < f/2: the m-dimensional eigenproblem
through the keys, as the pipeline does; otherwise the f-dimensional one through G): C = XᵀX/n (n = 4f samples), keys K (m×f),
residuals R (m×d), all float64 (the solver's precision).  Candidates:

    per_trial   the reference's structure: for each λ a fresh f×f solve
                Δ(λ) = Rᵀ K (λC + KᵀK)⁻¹ (``law_fast.testing.plain_memit_delta``) and its disruption
                tr(ΔCΔᵀ) (the quantity the library's default λ rule needs)
    factorised  ``MemitSolver.from_moments`` once (Cholesky of C, eigendecomposition of
                L⁻¹GL⁻ᵀ), then ``solver.disruption(λ)`` (O(f)) and ``solver.norm(λ)`` (O(f²), the
                reference rule's quantity) per trial

Reports seconds for the factorisation, seconds per trial of each kind, trials/s, the number of
trials after which the factorised search is ahead, the trial count of the disruption rule's
bisection on this problem, and the largest relative difference of the disruption between the
two on the timed λs.

    python benchmarks/bench_lambda_search.py                      # f = 1536 (d 576) and 6400 (d 1600)
    python benchmarks/bench_lambda_search.py --sizes 1536x576 --name lambda_search_quick

Writes benchmarks/results/<name>.json (default lambda_search_cpu).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from law_fast.config import MemitConfig  # noqa: E402
from law_fast.testing import plain_memit_delta  # noqa: E402
from law_fast.washing.memit import MemitSolver, choose_lambda  # noqa: E402


def problem(f: int, d: int, m: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * f, f, generator=g, dtype=torch.float64)
    C = X.T @ X / X.shape[0]
    K = torch.randn(m, f, generator=g, dtype=torch.float64)
    R = torch.randn(m, d, generator=g, dtype=torch.float64)
    W = torch.randn(d, f, generator=g, dtype=torch.float64) / f**0.5
    return K, R, C, W


def run(f: int, d: int, m: int, plain_trials: int, fast_trials: int) -> dict:
    K, R, C, W = problem(f, d, m)
    G, B = K.T @ K, K.T @ R
    lambdas = [10.0 ** (k - 2) for k in range(max(plain_trials, fast_trials))]

    start = time.perf_counter()
    few = 2 * m < f  # the pipeline keeps the keys then (KeyMoments.keys): m-dimensional eigenproblem
    solver = MemitSolver.from_moments(G, B, C, keys=K if few else None)
    factor_s = time.perf_counter() - start

    start = time.perf_counter()
    fast_disruption = [solver.disruption(lam) for lam in lambdas[:fast_trials]]
    disruption_trial_s = (time.perf_counter() - start) / fast_trials
    start = time.perf_counter()
    for lam in lambdas[:fast_trials]:
        solver.norm(lam)
    norm_trial_s = (time.perf_counter() - start) / fast_trials

    start = time.perf_counter()
    plain_disruption = []
    for lam in lambdas[:plain_trials]:
        delta = plain_memit_delta(K, R, C, lam)
        plain_disruption.append(float((delta @ C * delta).sum()))
    plain_trial_s = (time.perf_counter() - start) / plain_trials
    rel = max(abs(a - b) / abs(b) for a, b in zip(fast_disruption, plain_disruption))

    lam, trials = choose_lambda(solver, W, C, MemitConfig(disruption_budget=5e-4, disruption_per_fact=None))
    return {
        "f": f,
        "d": d,
        "m": m,
        "eigenproblem": f"{m}-dimensional (keys)" if few else f"{f}-dimensional (Gram)",
        "factorisation_s": factor_s,
        "per_trial_s": {
            "per_trial_solve": plain_trial_s,
            "factorised_disruption": disruption_trial_s,
            "factorised_norm": norm_trial_s,
        },
        "trials_per_s": {
            "per_trial_solve": 1 / plain_trial_s,
            "factorised_disruption": 1 / disruption_trial_s,
            "factorised_norm": 1 / norm_trial_s,
        },
        "speedup_per_trial": {"disruption": plain_trial_s / disruption_trial_s, "norm": plain_trial_s / norm_trial_s},
        "break_even_trials": factor_s / max(plain_trial_s - norm_trial_s, 1e-12),
        "disruption_rule": {
            "lambda": lam,
            "trials": trials,
            "per_trial_search_s": trials * plain_trial_s,
            "factorised_search_s": factor_s + trials * disruption_trial_s,
            "speedup": trials * plain_trial_s / (factor_s + trials * disruption_trial_s),
            "extrapolated": f"per_trial_search_s = trials x the per-trial solve time measured on "
            f"{plain_trials} trials; factorised_search_s = the measured factorisation + "
            f"trials x the per-trial time measured on {fast_trials} trials; speedup from "
            "these two",
        },
        "max_rel_diff_disruption": rel,
        "timed_trials": {"per_trial_solve": plain_trials, "factorised": fast_trials},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1536x576,6400x1600", help="comma-separated f x d")
    parser.add_argument("--facts", default="256,8000", help="comma-separated m")
    parser.add_argument("--plain-trials", type=int, default=4)
    parser.add_argument("--fast-trials", type=int, default=50)
    parser.add_argument("--name", default="lambda_search_cpu")
    args = parser.parse_args()
    results = []
    for size in args.sizes.split(","):
        f, d = (int(x) for x in size.split("x"))
        for m in (int(x) for x in args.facts.split(",")):
            r = run(f, d, m, args.plain_trials, args.fast_trials)
            results.append(r)
            print({k: r[k] for k in ("f", "m", "factorisation_s", "per_trial_s", "disruption_rule")}, flush=True)
    path = write_result(
        args.name, {"benchmark": "lambda search", "threads": torch.get_num_threads(), "results": results}
    )
    print(path)


if __name__ == "__main__":
    main()
