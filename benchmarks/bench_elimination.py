"""Benchmark: the elimination check — rows stop once decided vs 10-token generation for every fact.

Model: SmolLM2-135M-Instruct (the embedded default), optionally after washing the demo facts
(``--wash``: the library's default LaW wash of law_fast/data/demo_wash.jsonl, so that the
washed facts' rows end at EOS); facts: the first ``--facts`` CounterFact validation records
plus, with ``--wash``, the washed demo facts.  Both candidates use batched, KV-cached greedy
generation (batch 32, 10 new tokens, the reference's Acc rule):

    full_generation   Hugging Face ``generate``: every row generates until EOS or 10 tokens and
                      a batch runs until its last row ends (the reference's check)
    stop_when_decided ``known_facts(...)`` (the default, used by the pipeline): each row leaves
                      the batch and its KV cache once decided (EOS, or its answer appeared)

The decisions must be identical; the JSON has both times, the ratio, and the known counts.

    python benchmarks/bench_elimination.py                  # 1000 facts, unwashed model
    python benchmarks/bench_elimination.py --wash           # after washing the 16 demo facts

Writes benchmarks/results/<name>.json (default elimination_cpu, or elimination_washed_cpu).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, write_result  # noqa: E402

from law_fast import load_facts, load_model, wash  # noqa: E402
from law_fast.cli import demo_facts  # noqa: E402
from law_fast.washing.elimination import known_facts  # noqa: E402

COUNTERFACT = REPO_ROOT.parent / "shared" / "data" / "counterfact" / "counterfact-val.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=1000)
    parser.add_argument("--wash", action="store_true", help="wash the demo facts first")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each candidate (best is reported)")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()

    model, tok = load_model()
    facts = load_facts(COUNTERFACT, limit=args.facts)
    washed_ids = []
    if args.wash:
        washed, _ = demo_facts()
        result = wash(model, tok, washed, progress=False)
        washed_ids = [f.case_id for f in washed]
        facts = list(washed) + facts
        print(
            "washed:", result.report.get("still_known_after"), "of", result.report.get("n_washed_requests"), flush=True
        )

    timings, decisions = {}, {}
    for name, stop in (("full_generation", False), ("stop_when_decided", True)) * args.repeats:  # interleaved
        start = time.perf_counter()
        known, _ = known_facts(model, tok, facts, 10, 32, stop_when_decided=stop)
        timings.setdefault(name, []).append(time.perf_counter() - start)
        decisions[name] = known
        print(name, f"{timings[name][-1]:.1f} s", flush=True)
    assert decisions["full_generation"] == decisions["stop_when_decided"], "a decision changed"
    best = {name: min(t) for name, t in timings.items()}
    payload = {
        "benchmark": "elimination check",
        "model": "SmolLM2-135M-Instruct",
        "facts": len(facts),
        "washed_demo_facts": washed_ids,
        "threads": torch.get_num_threads(),
        "known": sum(decisions["full_generation"]),
        "decisions_identical": True,
        "seconds": timings,
        "best_seconds": best,
        "speedup": best["full_generation"] / best["stop_when_decided"],
    }
    print(write_result(args.name or ("elimination_washed_cpu" if args.wash else "elimination_cpu"), payload))
    print({k: payload[k] for k in ("facts", "known", "best_seconds", "speedup")})


if __name__ == "__main__":
    main()
