"""Command line: ``law-fast demo | wash | stats | info``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from importlib import resources
from pathlib import Path

log = logging.getLogger("law_fast")


def _layers(text: str) -> tuple[int, ...]:
    """"4-8" or "4,5,6" → (4, 5, ...)."""
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part.strip():
            out.append(int(part))
    return tuple(out)


def _config(args, model):
    from .config import WashConfig

    cfg = WashConfig.from_json(args.config) if getattr(args, "config", None) else WashConfig.preset(model)
    changes = {}
    if getattr(args, "method", None):
        changes["method"] = args.method
    if getattr(args, "layers", None):
        changes["layers"] = _layers(args.layers)
    if getattr(args, "corpus", None):
        changes["corpus"] = args.corpus
    if getattr(args, "samples", None):
        changes["mom2_n_samples"] = args.samples
    return cfg.replace(**changes) if changes else cfg


def demo_facts():
    from .facts import load_facts

    data = resources.files("law_fast") / "data"
    with resources.as_file(data / "demo_wash.jsonl") as w, resources.as_file(data / "demo_control.jsonl") as c:
        return load_facts(w), load_facts(c)


FLUENCY_PROMPTS = ("The weather today is", "My favourite book is about", "In the morning, I usually")


def _perplexity(model, tokenizer, texts) -> float:
    import torch

    from .models import model_device

    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"].to(model_device(model))
            if ids.shape[1] < 2:
                continue
            out = model(input_ids=ids, labels=ids)
            nll += float(out.loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(nll / max(count, 1))


def cmd_demo(args) -> int:
    from .generation import greedy_continuations, known_facts, sample_continuations
    from .models import load_model
    from .pipeline import wash

    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    washed, control = demo_facts()
    held_out = [p + c for p, c in zip(FLUENCY_PROMPTS * 3, sample_continuations(model, tok, FLUENCY_PROMPTS * 3, 48, 40, seed=99))]

    def measure():
        kw, _ = known_facts(model, tok, washed)
        kc, _ = known_facts(model, tok, control)
        gens = greedy_continuations(model, tok, FLUENCY_PROMPTS, max_new_tokens=16)
        return sum(kw) / len(washed), sum(kc) / len(control), _perplexity(model, tok, held_out), gens

    before = measure()
    cfg = _config(args, model)
    result = wash(model, tok, washed, cfg)
    after = measure()
    print()
    print(f"law_fast demo — {result.report['model']} — method {cfg.method}, layers {list(cfg.layers)}")
    print(f"{'':34s}{'before':>10s}{'after':>10s}")
    print(f"{'washed facts: accuracy':34s}{before[0]:>10.1%}{after[0]:>10.1%}   ({len(washed)} facts)")
    print(f"{'control facts: accuracy':34s}{before[1]:>10.1%}{after[1]:>10.1%}   ({len(control)} facts, not washed)")
    print(f"{'fluency: perplexity (held-out)':34s}{before[2]:>10.2f}{after[2]:>10.2f}")
    for prompt, b, a in zip(FLUENCY_PROMPTS, before[3], after[3]):
        print(f"  {prompt!r}\n     before: {b!r}\n     after:  {a!r}")
    print("stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.report["timings_s"].items()))
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.out:
        result.save(args.out, overwrite=args.overwrite)
        print(f"saved washed model, deltas and report to {args.out}")
    return 0


def cmd_wash(args) -> int:
    from .facts import load_facts
    from .models import load_model
    from .pipeline import wash

    model, tok = load_model(args.model)
    facts = load_facts(args.facts, format=args.format, limit=args.limit)
    cfg = _config(args, model)
    result = wash(model, tok, facts, cfg)
    out = result.save(args.out, overwrite=args.overwrite)
    rep = result.report
    print(json.dumps({k: rep.get(k) for k in ("n_facts", "known_before", "n_washed_requests", "still_known_after", "timings_s")}, indent=2))
    print(f"saved to {out}")
    return 0


def cmd_stats(args) -> int:
    from .corpus import load_corpus
    from .models import get_adapter, load_model
    from .stats import default_corpus, layer_stats

    model, tok = load_model(args.model)
    corpus = load_corpus(args.corpus, n_samples=args.samples) if args.corpus else default_corpus(model, tok)
    t = time.perf_counter()
    stats = layer_stats(model, get_adapter(model), tok, corpus, _layers(args.layers), args.max_length, args.batch_tokens,
                        args.dtype, use_cache=not args.no_cache, block_tokens=args.block_tokens,
                        checkpoint_every_tokens=args.checkpoint_every)
    for layer, s in stats.items():
        print(f"layer {layer}: {s.count} tokens, f = {s.sum.shape[0]}, trace(C) = {float(s.cov.trace()):.4g}")
    print(f"{time.perf_counter() - t:.1f} s")
    return 0


def cmd_info(args) -> int:
    import platform

    import torch

    info = {"law_fast": __import__("law_fast").__version__, "python": platform.python_version(), "torch": torch.__version__}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    from . import ops

    info.update(ops.backend_report())
    print(json.dumps(info, indent=2, default=str))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="law-fast", description="Wash facts out of Hugging Face causal LMs (LaW).")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="wash built-in facts from the embedded default model and print a before/after table")
    p.add_argument("--model", default=None, help="model directory or .gguf (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--method", choices=("law", "memit"))
    p.add_argument("--layers")
    p.add_argument("--config", help="WashConfig JSON")
    p.add_argument("--out", help="also save the washed model here")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("wash", help="wash the facts of a file out of a model and save the result")
    p.add_argument("--model", default=None)
    p.add_argument("--facts", required=True)
    p.add_argument("--format", default=None, help="facts format (default: detected from the content)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--method", choices=("law", "memit"))
    p.add_argument("--layers")
    p.add_argument("--config")
    p.add_argument("--corpus", help="statistics corpus: .txt, .jsonl or hf:NAME[:CONFIG[:SPLIT]] (default: embedded)")
    p.add_argument("--samples", type=int, help="documents sampled from the corpus")
    p.set_defaults(func=cmd_wash)

    p = sub.add_parser("stats", help="compute (and cache) covariance statistics; an interrupted run resumes",
                       description="Covariance statistics of the down-projection inputs of --layers, one pass over "
                                   "the corpus for all of them; cached per layer, checkpointed, resumed when rerun "
                                   "with the same arguments (docs/statistics.md).")
    p.add_argument("--model", default=None)
    p.add_argument("--corpus", default=None, help=".txt, .jsonl, .json or hf:NAME[:CONFIG[:SPLIT]] (default: embedded)")
    p.add_argument("--layers", required=True, help='e.g. "4-8" or "4,6"')
    p.add_argument("--samples", type=int, default=None, help="documents sampled from the corpus (default: all)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64", help="accumulator dtype")
    p.add_argument("--block-tokens", type=int, default=None,
                   help="accumulate blocks of this many tokens in --dtype, added to a float64 total (e.g. 65536)")
    p.add_argument("--checkpoint-every", type=int, default=1_000_000, metavar="TOKENS",
                   help="write a resumable checkpoint every this many tokens (0: never)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cache files or checkpoints")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("info", help="versions, native build and which kernel serves each op")
    p.set_defaults(func=cmd_info)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotImplementedError, ModuleNotFoundError) as e:
        print(f"law-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
