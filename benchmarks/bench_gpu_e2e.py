"""Benchmark (issue 14): the whole washing pipeline on one GPU at the reference models' sizes.

Random-weight models of GPT2-XL's shape (48 blocks, d 1600, f 6400) and GPT-J-6B's (28 blocks, d 4096,
f 16384) in bfloat16 — the shapes and the arithmetic of the real ones, no download — with GPT-2's
tokenizer (../shared/data), ``--m`` synthetic facts (``law_fast.testing.synthetic_facts``) and the
preset's layers (GPT2-XL 13–17, GPT-J 3–8; ``WashConfig.preset`` recognises the shapes), LaW with
``only_known=False`` (a random model knows none of the facts; pruning would drop them all, so it is off),
statistics from ``--stats-docs`` WikiText-2 documents.  Per shape: the seconds of every stage, facts/s,
the peak GPU memory, and a projection to ``--project`` facts (332k: the LaW paper's largest set) —
labelled *extrapolated*: the stages whose work grows with m (initial check, z*, key passes) scaled
linearly from the measured m, the others (statistics, templates, λ search, LaW solve) as measured.

Prepared as one short run for a lent GPU (the device tool):

    pip install --no-build-isolation --no-deps -e . && python benchmarks/bench_gpu_e2e.py --m 1000 --out "$OUT"

(--m 1000: a lent GPU has 15 minutes in all, and GPT-J's z* alone is ~2.5 TFLOP per fact-step — 20 steps
× 11 rows × ~10 tokens × 19 blocks — so 10,000 facts are ~30 min of it on an H200; the projection
says what 10k and 332k take.)

``--device cpu --quick`` runs the same path on tiny shapes (the test suite does, so the script cannot
rot).  Writes benchmarks/results/<--name>.json (default gpu_e2e_<device name>) and a copy into --out; a
--quick run writes only into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, machine_info, write_result  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "data"
TOKENIZER = DATA / "tokenizers" / "gpt2"
GROWING = ("initial check", "targets", "memit init", "law keys", "elimination", "final check")  # work ∝ m


def shapes(quick: bool) -> dict:
    """{name: (transformers config class name, config kwargs)} of the benchmarked models."""
    if quick:  # tiny stand-ins with the same families and head layouts
        return {
            "gpt2-xl-shaped": ("GPT2Config", dict(n_layer=4, n_embd=32, n_head=4, n_inner=128)),
            "gpt-j-shaped": ("GPTJConfig", dict(n_layer=4, n_embd=32, n_head=4, rotary_dim=8, n_inner=128)),
        }
    return {
        "gpt2-xl-shaped": ("GPT2Config", dict(n_layer=48, n_embd=1600, n_head=25, n_inner=6400)),
        "gpt-j-shaped": ("GPTJConfig", dict(n_layer=28, n_embd=4096, n_head=16, rotary_dim=64, n_inner=16384)),
    }


def build(config_name: str, kwargs: dict, vocab: int, device, dtype):
    """A random-weight causal LM of that shape, made on ``device`` in ``dtype`` (no CPU copy of its weights)."""
    import torch
    import transformers

    config = getattr(transformers, config_name)(vocab_size=vocab, n_positions=1024, **kwargs)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def one_shape(name: str, spec, args, tok) -> dict:
    import torch

    import law_fast as lf
    from law_fast.config import PLAIN
    from law_fast.testing import synthetic_facts

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = build(*spec, len(tok), device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    facts = synthetic_facts(args.m, seed=0)
    config = lf.WashConfig.preset(model, method="law", **PLAIN).replace(
        only_known=False, prune_requests=False, mom2_n_samples=args.stats_docs
    )
    if args.quick:
        config = config.replace(layers=(1, 2), v_num_grad_steps=3, total_iters=3, lambda_rule="fixed")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = lf.wash(
        model, tok, facts, config, corpus=str(DATA / "wikitext2" / "wiki.test.raw"), progress=False, final_check=False
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    stages = dict(result.report.timings_s)
    growing = sum(v for k, v in stages.items() if k in GROWING)
    fixed = seconds - growing
    projected = fixed + growing * args.project / args.m
    return {
        "shape": name,
        "config": {"class": spec[0], **spec[1], "vocab_size": len(tok)},
        "parameters": n_params,
        "dtype": args.dtype,
        "layers": list(config.layers),
        "m": args.m,
        "seconds": seconds,
        "stages_s": stages,
        "facts_per_s": args.m / seconds,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "projection": {
            "facts": args.project,
            "seconds": projected,
            "hours": projected / 3600,
            "how": f"extrapolated: the stages {list(GROWING)} scaled by {args.project}/{args.m}, the rest as measured",
        },
        "delta_norms": {str(k): float(v.norm()) for k, v in result.deltas.items()},
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--m", type=int, default=10_000, help="synthetic facts washed")
    parser.add_argument("--project", type=int, default=332_000, help="facts the projection is for")
    parser.add_argument("--stats-docs", type=int, default=2000, help="WikiText-2 documents for the statistics")
    parser.add_argument("--shapes", default=None, help="comma-separated subset of the shapes (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few facts: checks that everything runs")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (the device tool's $OUT)")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    import torch

    from law_fast.testing import gpt2_tokenizer

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        args.m, args.stats_docs = min(args.m, 8), min(args.stats_docs, 10)
    tok = gpt2_tokenizer(TOKENIZER)
    chosen = shapes(args.quick)
    if args.shapes:
        unknown = sorted(set(args.shapes.split(",")) - set(chosen))
        if unknown:
            raise SystemExit(f"unknown --shapes {unknown}; known: {sorted(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.shapes.split(",")}
    rows = []
    for name, spec in chosen.items():
        row = one_shape(name, spec, args, tok)
        rows.append(row)
        print(
            f"{name}: {row['m']} facts in {row['seconds']:.0f} s ({row['facts_per_s']:.1f} facts/s), "
            f"projected {args.project} facts: {row['projection']['hours']:.2f} h (extrapolated); stages "
            + ", ".join(f"{k} {v:.1f}" for k, v in row["stages_s"].items()),
            flush=True,
        )
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    payload = {"benchmark": "gpu_e2e", "device": device_name, "settings": vars(args) | {"out": None}, "rows": rows}
    payload = json.loads(json.dumps(payload, default=str))
    name = args.name or "gpu_e2e_" + device_name.lower().replace(" ", "_") + ("_smoke" if args.quick else "")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_text(json.dumps({**payload, "machine": machine_info()}, indent=2))
    if not args.quick:
        write_result(name, payload)
    return payload


if __name__ == "__main__":
    main()
