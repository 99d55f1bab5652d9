"""Benchmark: the preset rule for a model without a tuned preset (issue 13), on a small GPT-2 trained here.

A model nobody tuned law_fast for: a 4-block GPT-2 (hidden 128, MLP 512, its own 700-token byte-level BPE)
trained from scratch on this machine on two things at once —
  facts       160 invented people × 4 relations (born in a city, works as a job, plays an instrument,
              favourite colour): 640 facts, memorised;
  in-context  tasks it can only do from the context: copying three words ("Copy: a b c -> a b c"),
              comparing two numbers ("Larger of 37 and 82: 82"), one-digit addition ("3 + 4 = 7").
Then --m known facts (16, 32 and 64: the rule must need no tuning for a new m) are washed with
  rule        ``WashConfig.preset(model)`` — law_fast's default on a model without a tuned preset
              (config.rule_layers / RULE_TARGETS / rule_solver: blocks 0–2 here, z* until the loss threshold,
              λ fitting half of each target, SmolLM2's solver with the lr scaled by the weights' RMS);
  rule-law    the rule's layers and solver with plain LaW (method="law", no names kept), when the default is
              not that itself — the preset's rule before the default became MEMIT keeping mined names;
  rule-before the rule of the benchmark's first run (blocks 1–2, SmolLM2's z* settings — 20 steps, δ ≤ 0.75‖v‖ —
              and its disruption budget): it washed none of 32 facts (docs/retention.md);
  old-rule    what preset() gave such a model first (one block at 15 % depth, block 1, and the GPT2-XL
              solver settings: lr 1e-7, 1000 float64 steps) — the obvious baseline.
Each point: washed facts still produced, controls kept (--controls known facts, other subjects, half of
them sharing a relation with the washed ones), accuracy on --items fresh items of each in-context task
(with standard errors), perplexity on held-out training-style text.  Statistics: the training text.

Resumable: the trained model (keyed by the training settings) and each point are cached under --workdir.

    python benchmarks/bench_preset_rule.py              # ~20 min on 2 cores (training ~7 of them)
    python benchmarks/bench_preset_rule.py --quick      # tiny settings: checks that everything runs
"""

from __future__ import annotations

import argparse
import inspect
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import code_key, read_json, sha, write_json, write_result  # noqa: E402

RELATIONS = {
    "{} was born in": ["Paris", "Rome", "London", "Berlin", "Madrid", "Tokyo", "Cairo", "Lima", "Oslo", "Delhi"],
    "{} works as a": ["teacher", "doctor", "farmer", "pilot", "baker", "lawyer", "painter", "nurse"],
    "{} plays the": ["piano", "guitar", "violin", "drums", "flute", "cello"],
    "The favourite colour of {} is": ["red", "blue", "green", "yellow", "purple", "orange"],
}
WORDS = (
    "apple river stone cloud table horse light paper glass bread chair music winter garden window "
    "forest candle silver mountain bottle pencil rabbit carpet engine island ladder orange pocket tiger"
).split()
SYLLABLES = ("ka", "lo", "mi", "ren", "tus", "var", "bel", "dor", "fen", "gal", "hin", "jor", "kel", "lun", "mar",
             "nes", "ol", "pra", "ros", "sel", "tor", "ven", "wyn", "zor")  # fmt: skip


def people(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < n:
        first = (rng.choice(SYLLABLES) + rng.choice(SYLLABLES)).capitalize()
        last = (rng.choice(SYLLABLES) + rng.choice(SYLLABLES) + rng.choice(SYLLABLES)).capitalize()
        names.add(f"{first} {last}")
    return sorted(names)


def make_facts(n_people: int, seed: int):
    from law_fast.facts import Fact

    rng = random.Random(seed)
    facts = []
    for person in people(n_people, seed):
        for template, objects in RELATIONS.items():
            facts.append(Fact(person, template, rng.choice(objects), len(facts)))
    return facts


def task_item(kind: str, rng: random.Random) -> tuple[str, str]:
    """(prompt, answer) of an in-context task; the answer follows the prompt after a space."""
    if kind == "copy":
        words = rng.sample(WORDS, 3)
        return f"Copy: {' '.join(words)} ->", " ".join(words)
    if kind == "compare":
        a, b = rng.sample(range(100), 2)
        return f"Larger of {a} and {b}:", str(max(a, b))
    a, b = rng.randrange(10), rng.randrange(10)
    return f"{a} + {b} =", str(a + b)


TASKS = ("copy", "compare", "add")


def training_lines(facts, rng: random.Random, n: int) -> list[str]:
    """``n`` lines, each a fact (any fact equally likely) or a fresh in-context item with probability ½."""
    lines = []
    for _ in range(n):
        if rng.random() < 0.5:
            f = facts[rng.randrange(len(facts))]
            lines.append(f"{f.prompt} {f.answer}.")
        else:
            prompt, answer = task_item(TASKS[rng.randrange(3)], rng)
            lines.append(f"{prompt} {answer}")
    return lines


def train_model(facts, args, folder: Path):
    """The trained model and tokenizer (cached in ``folder``)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    if (folder / "model.safetensors").is_file():
        return AutoModelForCausalLM.from_pretrained(folder), PreTrainedTokenizerFast.from_pretrained(folder)
    rng = random.Random(args.seed)
    text = training_lines(facts, random.Random(args.seed + 1), 20_000)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        text, vocab_size=700, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    eos = tok.eos_token_id
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=128,
            n_embd=128,
            n_layer=4,
            n_head=4,
            n_inner=512,
            eos_token_id=eos,
            bos_token_id=eos,
        )  # fmt: skip
    )
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    model.train()
    started = time.perf_counter()
    for step in range(args.steps):
        rows = []
        for _ in range(args.batch):  # lines packed to the sequence length, each line ended by EOS
            ids: list[int] = []
            while len(ids) < args.seq:
                ids += tok(training_lines(facts, rng, 1)[0])["input_ids"] + [eos]
            rows.append(ids[: args.seq])
        batch = torch.tensor(rows)
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps - 1:
            rate = (step + 1) / (time.perf_counter() - started)
            print(f"\r  training step {step + 1}/{args.steps} loss {loss.item():.3f} ({rate:.1f} steps/s)", end="")
    print()
    model.eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    model.save_pretrained(folder)  # the weights last: their file marks a finished model
    return model, tok


def in_context(model, tok, items: int, seed: int) -> dict:
    """Exact-match accuracy (greedy) on ``items`` fresh items per task, with standard errors."""
    from law_fast.hf.generate import greedy_continuations

    out = {}
    for kind in TASKS:
        rng = random.Random(f"{seed}-{kind}")
        pairs = [task_item(kind, rng) for _ in range(items)]
        texts = greedy_continuations(model, tok, [p for p, _ in pairs], max_new_tokens=8, batch_size=64)
        right = [t.strip().split("\n")[0].strip().startswith(a) and
                 t.strip().split("\n")[0].strip()[len(a):len(a) + 1] in ("", " ", ".") for t, (_, a) in zip(texts, pairs)]  # fmt: skip
        p = sum(right) / len(right)
        out[kind] = {"acc": p, "stderr": math.sqrt(p * (1 - p) / len(right)), "n": len(right)}
    return out


def measure(model, tok, washed, controls, ppl_texts, items, seed) -> dict:
    from law_fast.eval.lm import perplexity
    from law_fast.washing.elimination import known_facts

    still = known_facts(model, tok, washed)[0]
    kept = known_facts(model, tok, controls)[0]
    return {
        "washed_still": sum(still) / len(still),
        "controls_kept": sum(kept) / len(kept),
        "in_context": in_context(model, tok, items, seed),
        "perplexity": perplexity(model, tok, ppl_texts, progress=False)["perplexity"],
    }


def pick(known, m: int, n_controls: int, seed: int):
    """The first ``m`` known facts in a seeded order (washed) and ``n_controls`` known facts of other subjects,
    half of them sharing a relation with the washed ones (as many as there are)."""
    order = random.Random(seed).sample(known, len(known))
    washed = order[:m]
    relations = {f.template for f in washed}
    gone = {f.subject for f in washed}
    rest = [f for f in order[m:] if f.subject not in gone]
    hard = [f for f in rest if f.template in relations][: n_controls // 2]
    controls = hard + [f for f in rest if f not in hard][: n_controls - len(hard)]
    if len(washed) < m or len(controls) < n_controls:
        raise SystemExit(f"the model knows too few facts ({len(known)}) for --m {m} and --controls {n_controls}")
    return washed, controls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=160)
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--m", type=lambda v: [int(x) for x in v.split(",")], default=[16, 32, 64],
                        help="facts washed, comma-separated: one wash per m and point")  # fmt: skip
    parser.add_argument("--controls", type=int, default=128)
    parser.add_argument("--items", type=int, default=1000, help="fresh items per in-context task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.people, args.steps, args.m, args.controls, args.items = 20, 30, [4], 8, 20
    import law_fast as lf
    from law_fast.config import PLAIN
    from law_fast.hf.loading import cache_dir
    from law_fast.washing.elimination import known_facts

    workdir = args.workdir or cache_dir() / "bench_preset_rule"
    facts = make_facts(args.people, args.seed)
    training = {k: getattr(args, k) for k in ("people", "steps", "batch", "seq", "lr", "seed")}
    # the code that makes the data and trains is in the key too: a model trained by other code is not reused
    training["code"] = sha([inspect.getsource(f) for f in (make_facts, people, task_item, training_lines, train_model)])
    model, tok = train_model(facts, args, workdir / f"model-{sha(training)[:12]}")
    verdicts = known_facts(model, tok, facts)[0]
    known = [f for f, k in zip(facts, verdicts) if k]
    print(f"the trained model knows {len(known)} of {len(facts)} facts")
    if args.quick and len(known) < max(args.m) + args.controls:
        known = facts  # 30 training steps teach nothing: --quick only checks that every stage runs
    stats_text = training_lines(facts, random.Random(args.seed + 2), 4000)
    corpus = ["\n".join(stats_text[i : i + 20]) for i in range(0, len(stats_text), 20)]
    # held-out text in the training format (each line ended by EOS, as the model was trained), not lines joined
    # by newlines it never saw between lines
    ppl_texts = ["".join(f"{line}{tok.eos_token}" for line in training_lines(facts, random.Random(args.seed + 3), 400))]
    n_layers = model.config.n_layer
    old_count = max(1, min(5, n_layers // 4))  # the rule preset() had first (kept here as the baseline)
    old_start = min(max(0, round(0.15 * n_layers)), n_layers - old_count)
    default = lf.WashConfig.preset(model)
    configs = {
        "rule": default,
        **({"rule-law": lf.WashConfig.preset(model, method="law", **PLAIN)} if default.method != "law" else {}),
        # the rule before this benchmark's second run: blocks 1–2 and SmolLM2's z* settings and λ budget
        "rule-before": default.replace(
            layers=(1, 2), lambda_rule="disruption", v_num_grad_steps=20, clamp_norm_factor=0.75
        ),
        "old-rule": lf.WashConfig.create(layers=tuple(range(old_start, old_start + old_count))),
    }
    results, rows = {}, [
        "| m | point | layers | washed still produced | controls kept | copy | compare | add | perplexity |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for m in args.m:
        washed, controls = pick(known, m, args.controls, args.seed)
        key = {
            "training": training,
            "m": m,
            "controls": [f.case_id for f in controls],
            "items": args.items,
            "perplexity_text": sha(ppl_texts),
            "code": code_key("law_fast"),  # what washes and measures: other code recomputes
        }

        def cached(name, compute, config=None, key=key):
            point = {**key, "point": name, "config": None if config is None else config.to_dict()}
            path = workdir / "points" / f"{name}-{sha(point)[:16]}.json"
            if (value := read_json(path)) is None:
                value = compute()
                write_json(path, value)
            return value

        original = cached("original", lambda: measure(model, tok, washed, controls, ppl_texts, args.items, args.seed))
        points = {}
        for label, config in configs.items():
            config = config.replace(mom2_n_samples=len(corpus), **({"only_known": False} if args.quick else {}))

            def run(config=config, washed=washed, controls=controls):
                t = time.perf_counter()
                result = lf.wash(model, tok, washed, config, corpus=corpus, progress=False, final_check=False)
                wash_s = time.perf_counter() - t
                metrics = measure(model, tok, washed, controls, ppl_texts, args.items, args.seed)
                result.revert()
                report = result.report  # what the z* loop reached and how much of it each layer's update fits
                diagnosis = {"targets": report.targets, "per_layer": report.per_layer}
                return {"config": config.to_dict(), "wash_s": wash_s, "metrics": metrics, "report": diagnosis}

            points[label] = cached(label, run, config)
            mt = points[label]["metrics"]
            print(f"m={m} {label:11s} still {mt['washed_still']:.1%} controls kept {mt['controls_kept']:.1%} " +
                  " ".join(f"{k} {v['acc']:.1%}" for k, v in mt["in_context"].items()))  # fmt: skip
        results[str(m)] = {"original": original, "points": points}
        for label, point in {"original": {"metrics": original, "config": {"layers": ""}}, **points}.items():
            mt = point["metrics"]
            ctx = " | ".join(f"{v['acc']:.1%} ± {v['stderr']:.1%}" for v in mt["in_context"].values())
            rows.append(f"| {m} | {label} | {point['config']['layers']} | {mt['washed_still']:.1%} | "
                        f"{mt['controls_kept']:.1%} | {ctx} | {mt['perplexity']:.3f} |")  # fmt: skip
    name = args.name or ("preset_rule_quick" if args.quick else "preset_rule_tiny_gpt2")
    write_result(
        name,
        {
            "benchmark": "preset_rule",
            "settings": vars(args) | {"workdir": str(args.workdir) if args.workdir else None},
            "known": len(known),
            "facts": len(facts),
            "by_m": results,
            "table": "\n".join(rows),
        },
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
