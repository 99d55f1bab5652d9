"""Benchmark: washing known CounterFact facts from SmolLM2 — the fast core vs the plain stages.

Facts: the first ``--facts`` CounterFact train records (``--source``; the validation file holds
only 126 facts SmolLM2 knows) that SmolLM2-135M-Instruct produces
(its greedy 10-token continuation contains the answer), plus ``--controls`` further known
facts that are not washed.  Both runs use the preset's LaW (``method="law"``, no names kept: the
pipeline whose stages the plain path reproduces), the same covariance statistics
(the default corpus, cached) and the same context templates, and start from the same weights:

    fast    ``law_fast.wash`` (prefix-cached batched z*, streamed key moments, one
            factorisation per layer for the λ search, Gram-form LaW with the fused ops,
            first-token elimination check)
    plain   the reference's structure, stage by stage (law_fast/testing.py): z* one fact at a time
            with full forwards; keys in batches of 4; a fresh float64 f×f solve per λ trial
            (same disruption rule, same bisection); LaW by autograd through K in float64; the
            elimination check by full 10-token generation

Reports the wall time of each, the ratio, the washed facts still produced and the controls kept
(the outcome should match), and per-stage times of the fast run.

    python benchmarks/bench_end_to_end.py --facts 256           # the issue's size (hours on 2 cores)
    python benchmarks/bench_end_to_end.py --facts 16 --controls 16 --name end_to_end_quick

Writes benchmarks/results/<name>.json (default end_to_end_cpu).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import select_facts  # noqa: E402
from common import REPO_ROOT, write_result  # noqa: E402

from law_fast import WashConfig, load_model, wash  # noqa: E402
from law_fast.config import PLAIN  # noqa: E402
from law_fast.corpus import default_corpus  # noqa: E402
from law_fast.hf.adapters import get_adapter, model_device  # noqa: E402
from law_fast.testing import plain_compute_z, plain_lambda, plain_law, plain_memit_delta  # noqa: E402
from law_fast.washing.elimination import known_facts  # noqa: E402
from law_fast.washing.keys import compute_keys  # noqa: E402
from law_fast.washing.stats import layer_stats  # noqa: E402
from law_fast.washing.targets import target_token_ids  # noqa: E402
from law_fast.washing.templates import context_templates  # noqa: E402

COUNTERFACT = REPO_ROOT.parent / "shared" / "data" / "counterfact" / "counterfact-train.json"


class _Stages:
    """Wall time per stage of the plain run, printed as each stage ends (the run takes hours)."""

    def __init__(self):
        self.seconds, self._last = {}, time.perf_counter()

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now
        print(f"  plain {stage}: {self.seconds[stage]:.0f} s", flush=True)


def plain_wash(model, tok, facts, config: WashConfig, stages: _Stages) -> list:
    """The pipeline with the plain stage implementations; returns the facts still produced."""
    adapter = get_adapter(model)
    layers, z_layer = list(config.layers), config.layers[-1]
    known, _ = known_facts(model, tok, facts, stop_when_decided=False)
    requests = [f for f, k in zip(facts, known) if k]
    stages.done("check")
    device = model_device(model)
    stats = layer_stats(
        model,
        adapter,
        tok,
        default_corpus(model, tok),
        layers,
        config.stats.stats_max_length,
        config.stats.stats_batch_tokens,
        config.stats.stats_dtype,
        progress=False,
    )
    covs = {layer: stats[layer].cov.to(device, torch.float64) for layer in layers}
    templates = context_templates(model, tok, seed=config.seed, length=config.targets.template_length)
    target_ids = target_token_ids(tok, adapter.eos_token_id(model, tok), config.target)
    stages.done("stats")
    z_star = torch.stack(
        [
            plain_compute_z(model, adapter, tok, f, templates, config.targets, z_layer, target_ids).float()
            for f in requests
        ]
    )
    stages.done("targets")
    original = {layer: adapter.weight(model, layer).detach().clone() for layer in layers}
    inits = {}
    for i, layer in enumerate(layers):
        keys, block = compute_keys(model, adapter, tok, requests, templates, [layer], z_layer, batch_size=4)
        stages.done("keys")
        K, R = keys[layer].double(), ((z_star - block) / (len(layers) - i)).double()
        W = adapter.weight(model, layer).detach().double()
        lam = plain_lambda(K, R, covs[layer], W, config.memit.disruption_for(len(requests)))
        inits[layer] = plain_memit_delta(K, R, covs[layer], lam)
        adapter.add_to_weight(model, layer, inits[layer])
        stages.done("memit")
    for layer in layers:
        adapter.add_to_weight(model, layer, original[layer] - adapter.weight(model, layer).detach())
    alive = list(requests)
    for i, layer in enumerate(layers):
        keys, _ = compute_keys(model, adapter, tok, alive, templates, [layer], None, batch_size=4)
        stages.done("keys")
        delta, _ = plain_law(inits[layer], keys[layer], covs[layer], config.law)
        adapter.add_to_weight(model, layer, delta)
        stages.done("law")
        if config.checks.prune_requests and i < len(layers) - 1:
            still, _ = known_facts(model, tok, requests, stop_when_decided=False)
            alive = [f for f, k in zip(requests, still) if k]
            stages.done("check")
            print(f"  plain layer {layer}: {len(alive)} still produced", flush=True)
            if not alive:
                break
    still, _ = known_facts(model, tok, requests, stop_when_decided=False)
    stages.done("check")
    return [f.case_id for f, k in zip(requests, still) if k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=256)
    parser.add_argument("--controls", type=int, default=32)
    parser.add_argument("--source", type=Path, default=COUNTERFACT, help="CounterFact file to take the facts from")
    parser.add_argument("--name", default="end_to_end_cpu")
    args = parser.parse_args()

    model, tok = load_model()
    config = WashConfig.preset(model, method="law", **PLAIN)
    adapter = get_adapter(model)
    facts, controls, scanned = select_facts(model, tok, args.source, args.facts, args.controls)
    print(f"{len(facts)} facts + {len(controls)} controls (known, among the first {scanned} records)", flush=True)
    default_corpus(model, tok)  # sampled and cached before timing (both runs use it)
    before = {layer: adapter.weight(model, layer).detach().clone() for layer in config.layers}

    runs = {}
    start = time.perf_counter()
    result = wash(model, tok, facts, config, progress=False)
    runs["fast"] = {
        "seconds": time.perf_counter() - start,
        "still_known": result.report["still_known_ids"],
        "timings_s": result.report["timings_s"],
    }
    runs["fast"]["controls_kept"] = sum(known_facts(model, tok, controls)[0])
    result.revert()
    print("fast", runs["fast"]["seconds"], runs["fast"]["timings_s"], flush=True)
    payload = {
        "benchmark": "end-to-end wash",
        "model": "SmolLM2-135M-Instruct",
        "facts": len(facts),
        "controls": len(controls),
        "layers": list(config.layers),
        "threads": torch.get_num_threads(),
        "runs": runs,
    }
    write_result(args.name, {**payload, "complete": False})  # the plain run takes hours: keep the fast one

    start, stages = time.perf_counter(), _Stages()
    still = plain_wash(model, tok, facts, config, stages)
    runs["plain"] = {"seconds": time.perf_counter() - start, "still_known": still, "timings_s": stages.seconds}
    runs["plain"]["controls_kept"] = sum(known_facts(model, tok, controls)[0])
    for layer, weight in before.items():
        adapter.add_to_weight(model, layer, weight - adapter.weight(model, layer).detach())
    print("plain", runs["plain"]["seconds"], flush=True)

    payload.update(
        complete=True,
        speedup=runs["plain"]["seconds"] / runs["fast"]["seconds"],
        same_outcome=sorted(map(str, runs["fast"]["still_known"])) == sorted(map(str, still)),
    )
    print(write_result(args.name, payload))
    print(
        {k: payload[k] for k in ("facts", "speedup", "same_outcome")},
        {name: (len(r["still_known"]), r["controls_kept"]) for name, r in runs.items()},
    )


if __name__ == "__main__":
    main()
