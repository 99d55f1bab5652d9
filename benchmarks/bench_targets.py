"""Benchmark: target vectors z* on SmolLM2 — batched with the prefix cache vs the reference's per-fact loop.

Model: SmolLM2-135M-Instruct (the embedded default); facts: the first ``--facts`` CounterFact
validation records (``../shared/data/counterfact/counterfact-val.json``); the default preset
(z layer 8, 20 steps, EOS target) and the model's seeded context templates.  Candidates, each
on the same facts:

    per_fact      the reference's structure (``law_fast.testing.plain_compute_z``): one fact at a
                  time, torch.optim.Adam, a full forward (all positions, all blocks, full-vocabulary
                  logits) per step
    batched_full  (``--with-full``) ``compute_targets(..., prefix_cache=False)``: all facts of a chunk in one batch,
                  per-fact Adam/early stop, but every step runs the whole prompts through every block
    batched       ``compute_targets(...)`` (the library default): the prefix's keys/values and the
                  block-z output are computed once; each step runs blocks z+1..L on the suffix only
    batched_no_extra  (when the preset has z* extra steps, as SmolLM2's) ``batched`` with
                  ``v_extra_steps=0``: what the extra steps for the facts still above ``v_extra_loss`` cost

Each candidate runs once (the per-fact loop on ``--plain-facts`` facts, its time scaled to all
facts and reported as such); z* of the batched candidates are compared with the per-fact loop on
the facts it ran.  Tokens/s counts the prompt tokens of all rows (T rewriting prompts + the KL
prompt) times the steps each fact took.

    python benchmarks/bench_targets.py                 # 64 facts (per-fact loop on 16, scaled)
    python benchmarks/bench_targets.py --facts 8 --plain-facts 4 --name targets_quick
    python benchmarks/bench_targets.py --facts 128 --plain-facts 4 --name targets_smollm2_extra_steps

Writes benchmarks/results/<name>.json (default targets_cpu).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, write_result  # noqa: E402

from law_fast import WashConfig, load_facts, load_model  # noqa: E402
from law_fast.hf.adapters import get_adapter  # noqa: E402
from law_fast.testing import plain_compute_z  # noqa: E402
from law_fast.washing.targets import _rows, compute_targets, target_token_ids  # noqa: E402
from law_fast.washing.templates import context_templates  # noqa: E402

COUNTERFACT = REPO_ROOT.parent / "shared" / "data" / "counterfact" / "counterfact-val.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=64)
    parser.add_argument("--plain-facts", type=int, default=16, help="facts the per-fact loop runs (time scaled up)")
    parser.add_argument("--with-full", action="store_true", help="also time batched_full (slow)")
    parser.add_argument("--name", default="targets_cpu")
    args = parser.parse_args()

    model, tok = load_model()
    adapter = get_adapter(model)
    config = WashConfig.preset(model)
    z_layer = config.layers[-1]
    facts = load_facts(COUNTERFACT, limit=args.facts)
    templates = context_templates(model, tok, seed=config.seed, length=config.targets.template_length)
    target_ids = target_token_ids(tok, adapter.eos_token_id(model, tok), config.target)
    texts, _ = _rows(facts, templates, [""] * len(facts))
    row_tokens = [len(tok(t)["input_ids"]) for t in texts]
    per_fact_tokens = torch.tensor(row_tokens).reshape(len(facts), -1).sum(1)

    results, z = {}, {}
    candidates = [("batched", config.targets, {})]
    if config.targets.v_extra_steps:  # first, so that a warm-up would count against it
        candidates.insert(0, ("batched_no_extra", config.targets.replace(v_extra_steps=0), {}))
    if args.with_full:
        candidates.append(("batched_full", config.targets, {"prefix_cache": False}))
    for name, targets, kwargs in candidates:
        start = time.perf_counter()
        out = compute_targets(
            model, adapter, tok, facts, templates, targets, z_layer, target_ids, progress=False, **kwargs
        )
        seconds = time.perf_counter() - start
        evaluated = out.steps + 1  # forward passes per fact (the last one decides early stop)
        results[name] = {
            "seconds": seconds,
            "facts": len(facts),
            "mean_steps": float(out.steps.float().mean()),
            "facts_extended": int((out.steps >= targets.v_num_grad_steps).sum()),
            "tokens_per_s": float((per_fact_tokens * evaluated).sum()) / seconds,
        }
        if name != "batched_no_extra":  # the others follow the per-fact loop's trajectories
            z[name] = out.z_star
        if name == "batched":
            passes = evaluated  # identical trajectories: the per-fact loop runs as many passes per fact
        print(f"{name}: {seconds:.1f} s", flush=True)

    n_plain = min(args.plain_facts, len(facts))
    start = time.perf_counter()
    plain = torch.stack(
        [
            plain_compute_z(model, adapter, tok, f, templates, config.targets, z_layer, target_ids)
            for f in facts[:n_plain]
        ]
    )
    seconds = time.perf_counter() - start
    results["per_fact"] = {
        "seconds_measured": seconds,
        "facts_measured": n_plain,
        "seconds": seconds * len(facts) / n_plain,
        "scaled_to_facts": len(facts),
        "tokens_per_s": float((per_fact_tokens[:n_plain] * passes[:n_plain]).sum()) / seconds,
        "extrapolated": True,
        "note": "time for all facts = measured time x facts / facts_measured",
    }
    print(f"per_fact: {seconds:.1f} s for {n_plain} facts", flush=True)
    for name in z:
        diff = (z[name][:n_plain].double() - plain.double()).norm(dim=1) / plain.double().norm(dim=1)
        results[name]["max_rel_diff_vs_per_fact"] = float(diff.max())
        results[name]["speedup_vs_per_fact"] = results["per_fact"]["seconds"] / results[name]["seconds"]
    if "batched_no_extra" in results:
        results["batched"]["cost_of_extra_steps"] = (
            results["batched"]["seconds"] / results["batched_no_extra"]["seconds"] - 1
        )
    if "batched_full" in results:
        results["batched"]["speedup_vs_batched_full"] = (
            results["batched_full"]["seconds"] / results["batched"]["seconds"]
        )
    payload = {
        "benchmark": "targets z*",
        "model": "SmolLM2-135M-Instruct",
        "z_layer": z_layer,
        "steps": config.targets.v_num_grad_steps,
        "extra_steps": config.targets.v_extra_steps,
        "extra_loss": config.targets.v_extra_loss,
        "templates": len(templates),
        "threads": torch.get_num_threads(),
        "results": results,
    }
    print(write_result(args.name, payload))
    for name, r in results.items():
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()
