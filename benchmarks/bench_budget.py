"""Benchmark: how the MEMIT/LaW λ rule's budget trades washing against collateral forgetting, per number of facts.

For each N in ``--n`` the first N CounterFact facts SmolLM2 produces (answer not in the subject;
``bench_methods.select_facts``) are washed with LaW (``method="law"``, no names kept: the pipeline this study tuned) under each λ setting
of ``--rules``; ``--controls`` further known facts are not washed.  The targets z* do not depend
on λ, so they are computed once per N and reused by every setting.  After each wash the reference
check (answer in the 10-token greedy continuation) counts how many washed facts the model still
produces and how many controls it keeps; the model is reverted exactly between settings.

Rules (comma-separated ``--rules``):
    d:B      lambda_rule="disruption", disruption_budget=B (tr(ΔCΔᵀ)/tr(WCWᵀ) ≤ B per layer), not scaled
    p:B      lambda_rule="disruption", disruption_per_fact=B (budget B·N), no cap
    f:P      lambda_rule="fit", fit_target=P (the largest λ whose init reaches ‖KΔᵀ−R‖/‖R‖ ≤ P)

    python benchmarks/bench_budget.py --n 16,64 --rules d:5e-4,d:2e-3,f:0.5

Writes benchmarks/results/<name>.json (default budget_smollm2).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import DATA, select_facts  # noqa: E402
from common import write_result  # noqa: E402


def parse_rule(text: str) -> dict:
    kind, _, value = text.partition(":")
    if kind == "d":
        return {"lambda_rule": "disruption", "disruption_budget": float(value), "disruption_per_fact": None}
    if kind == "p":
        return {"lambda_rule": "disruption", "disruption_per_fact": float(value), "disruption_budget": 1.0}
    if kind == "f":
        return {"lambda_rule": "fit", "fit_target": float(value)}
    raise SystemExit(f"unknown rule {text!r}: use d:BUDGET, p:PER_FACT or f:TARGET")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="16,64", help="comma-separated numbers of washed facts")
    parser.add_argument("--controls", type=int, default=32)
    parser.add_argument("--rules", default="d:5e-4,d:1e-3,d:2e-3,d:4e-3")
    parser.add_argument("--facts", type=Path, default=DATA / "counterfact" / "counterfact-val.json")
    parser.add_argument("--corpus", type=Path, default=DATA / "wikitext2" / "wiki.test.raw")
    parser.add_argument("--stats-samples", type=int, default=2000)
    parser.add_argument("--name", default="budget_smollm2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import law_fast as lf
    import law_fast.washing.closed_form as closed_form
    from law_fast.config import PLAIN
    from law_fast.washing.elimination import known_facts

    model, tok = lf.load_model()
    sizes = [int(n) for n in args.n.split(",")]
    rules = [r for r in args.rules.split(",") if r]
    pool, controls, _ = select_facts(model, tok, args.facts, max(sizes), args.controls)
    targets_cache, compute = {}, closed_form.compute_targets

    def cached_targets(model_, adapter, tokenizer, facts, *rest, **kwargs):
        key = tuple(f.case_id for f in facts)
        if key not in targets_cache:
            targets_cache[key] = compute(model_, adapter, tokenizer, facts, *rest, **kwargs)
        return targets_cache[key]

    closed_form.compute_targets = cached_targets
    runs = []
    for n in sizes:
        washed = pool[:n]
        for rule in rules:
            config = lf.WashConfig.preset(
                model, method="law", mom2_n_samples=args.stats_samples, **PLAIN, **parse_rule(rule)
            )
            start = time.perf_counter()
            result = lf.wash(model, tok, washed, config, corpus=str(args.corpus), progress=False)
            seconds = time.perf_counter() - start
            try:
                kept, _ = known_facts(model, tok, controls)
            finally:
                result.revert()
            still = result.report["still_known_after"]
            layers = [
                {
                    "layer": r["layer"],
                    **{k: r["memit"][k] for k in ("lambda", "disruption", "fit_residual")},
                    "law_rho_final": r.get("law", {}).get("rho_final"),
                    "n_requests": r.get("n_requests"),
                }
                for r in result.report["per_layer"]
            ]
            run = {
                "n": n,
                "rule": rule,
                "washed_still_known": still,
                "washed_frac": still / n,
                "controls_kept": sum(kept),
                "controls_frac": sum(kept) / len(controls),
                "wash_s": seconds,
                "per_layer": layers,
            }
            runs.append(run)
            fits = [round(x["fit_residual"], 2) for x in layers]
            disruptions = [float(f"{x['disruption']:.2g}") for x in layers]
            print(
                f"N={n} {rule}: still {still}/{n}, controls {sum(kept)}/{len(controls)}, fit {fits}, "
                f"disruption {disruptions} ({seconds:.0f} s)",
                flush=True,
            )
    path = write_result(
        args.name,
        {
            "benchmark": "lambda rule budget",
            "model": "SmolLM2-135M-Instruct",
            "controls": len(controls),
            "settings": {k: str(v) for k, v in vars(args).items()},
            "runs": runs,
        },
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
