"""Benchmark (diagnostic, issue 13): what limits retention — how much of a wash's update reaches the
keys of the facts it should keep.

The fact sets are bench_retention's (the same seeded CounterFact order, the same cached known-fact
scan): the first --m washed facts, the 256 controls (half "hard": sharing a relation with the first
64 washed facts) and, as the chance line, keys at the last token of --random-texts WikiText-2 lines.
Keys are those of the unwashed model at each edited block: at the subject's last token averaged over
the wash's context templates (law_fast.washing.keys.compute_keys, as the wash computes them) for the
washed facts and the controls, and — since the update acts at every position — at the controls' last
prompt token, where their answer starts.  Per edited block:

  overlap   the share of a key's whitened energy (C^{-1/2}k, C the corpus second moment) that lies in
            the span of the m washed facts' whitened keys: 1 for the washed keys themselves; for keys
            drawn like the corpus its expectation is m/f (the span's dimension over the key width).
            A closed-form update whose rows are C^{-1}K_w-combinations (MEMIT's) acts on a key only
            through this part of it.
  action    for the point --point (VARIANT@s of bench_retention, re-run from its job's checkpoints):
            ‖Δk‖/‖Wk‖, the relative change of the block's down-projection output on the key.

Behaviour at that point: which controls are lost (hard vs other), what they produce instead (nothing /
an end token, a washed fact's answer, other text), and how well the summed action ranks lost over kept
controls (ROC AUC; 0.5 = no better than chance).

    python benchmarks/bench_leakage.py --m 256 --point memit@1

Writes benchmarks/results/<name>.json and .md (default name leakage_smollm2_m<m>).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_retention import DATA, fact_sets, job_dir, variant_overrides  # noqa: E402
from common import sha, write_result  # noqa: E402


def roc_auc(scores_pos, scores_neg) -> float | None:
    """P(a positive scores above a negative), ties counted half (the Mann–Whitney form)."""
    if not scores_pos or not scores_neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in scores_pos for n in scores_neg)
    return wins / (len(scores_pos) * len(scores_neg))


def whitened_overlap(C, K_w, K):
    """Per row of K: the share of ‖C^{-1/2}k‖² inside span{C^{-1/2}k_w} (float64)."""
    import torch

    L = torch.linalg.cholesky(C + 1e-10 * C.diagonal().mean() * torch.eye(C.shape[0], dtype=C.dtype))
    white = lambda X: torch.linalg.solve_triangular(L, X.T.to(C.dtype), upper=False)  # (f, n)
    Q, _ = torch.linalg.qr(white(K_w))
    Z = white(K)
    return ((Q.T @ Z).pow(2).sum(0) / Z.pow(2).sum(0)).tolist()


def categorise(continuation: str, washed_answers: set[str]) -> str:
    text = continuation.strip()
    if not text:
        return "nothing or an end token"
    low = text.lower()
    if any(a in low for a in washed_answers):
        return "a washed fact's answer"
    return "other text"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--point", default="memit@1", help="VARIANT@s (bench_retention's variants and knobs)")
    parser.add_argument("--controls", type=int, default=256)
    parser.add_argument("--retain", type=int, default=128)
    parser.add_argument("--stats-samples", type=int, default=2000)
    parser.add_argument("--random-texts", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    variant, _, knob = args.point.partition("@")
    s = float(knob or 1)
    name = args.name or f"leakage_smollm2_m{args.m}"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()

    import torch

    import law_fast as lf
    from law_fast.corpus import resolve
    from law_fast.hf.adapters import get_adapter, model_fingerprint
    from law_fast.hf.loading import cache_dir
    from law_fast.washing.elimination import known_facts
    from law_fast.washing.keys import compute_keys, states_at
    from law_fast.washing.stats import layer_stats
    from law_fast.washing.templates import context_templates

    workdir = args.workdir or cache_dir() / "bench_retention"
    model, tok = lf.load_model(None)
    adapter = get_adapter(model)
    fingerprint = model_fingerprint(model)
    washed_all, controls, retain, _ = fact_sets(
        lf, model, tok, fingerprint, workdir, args.seed, [64, args.m], args.controls, args.retain
    )
    washed = washed_all[: args.m]
    retain_file = workdir / f"retain-{sha([f.case_id for f in retain])}.jsonl"
    config = lf.WashConfig.preset(
        model,
        paper=variant == "paper",
        mom2_n_samples=args.stats_samples,
        **variant_overrides(variant, s, str(retain_file)),
    )
    layers = list(config.layers)
    wiki = str(DATA / "wikitext2" / "wiki.test.raw")
    corpus = resolve(wiki, model, tok, n_samples=config.stats.mom2_n_samples)
    st = config.stats
    stats = layer_stats(
        model, adapter, tok, corpus, layers, st.stats_max_length, st.stats_batch_tokens, st.stats_dtype, progress=False
    )
    templates = context_templates(model, tok, seed=config.seed, length=config.targets.template_length)
    near = {f.template for f in washed_all[:64]}
    hard = [f.template in near for f in controls]
    keys_w, _ = compute_keys(model, adapter, tok, washed, templates, layers)
    keys_c, _ = compute_keys(model, adapter, tok, controls, templates, layers)
    lines = [line.strip() for line in Path(wiki).read_text().splitlines() if len(line.strip()) > 40]
    texts = random.Random(args.seed).sample(lines, args.random_texts)
    texts = [t[:200] for t in texts]
    keys_r, _ = states_at(model, adapter, tok, texts, [len(t) for t in texts], layers)
    prompts = [f.prompt.strip() for f in controls]  # the update acts at every position: also where the answer starts
    keys_e, _ = states_at(model, adapter, tok, prompts, [len(t) for t in prompts], layers)
    print(f"keys: {len(washed)} washed, {len(controls)} controls, {len(texts)} corpus lines; layers {layers}")

    result = lf.wash(model, tok, washed, config, corpus=wiki, progress=False, workdir=job_dir(workdir, washed))
    try:
        deltas = {}
        for layer in layers:
            name_w = adapter.down_proj_name(layer)
            W0 = result.original[name_w].to(torch.float64)
            deltas[layer] = (model.get_parameter(name_w).detach().to(torch.float64) - W0, W0)
        kept, conts = known_facts(model, tok, controls)
        still, _ = known_facts(model, tok, washed)
    finally:
        result.revert()

    def oriented(W, K):  # the down-projection's output on keys K, W as stored (GPT-2's Conv1D: f × d)
        return K @ W if adapter.transposed else K @ W.T

    per_layer, action_c = [], [0.0] * len(controls)
    for layer in layers:
        C = stats[layer].cov.to(torch.float64)
        D, W0 = deltas[layer]
        entry = {"layer": layer}
        for label, K in (
            ("washed", keys_w[layer]),
            ("controls", keys_c[layer]),
            ("controls' last prompt token", keys_e[layer]),
            ("corpus", keys_r[layer]),
        ):
            K = K.to(torch.float64)
            ov = whitened_overlap(C, keys_w[layer].to(torch.float64), K)
            act = (oriented(D, K).norm(dim=1) / oriented(W0, K).norm(dim=1)).tolist()
            if label == "controls":
                action_c = [a + b**2 for a, b in zip(action_c, act)]
                groups = {"hard controls": [x for x, h in zip(zip(ov, act), hard) if h]}
                groups["other controls"] = [x for x, h in zip(zip(ov, act), hard) if not h]
            else:
                groups = {label: list(zip(ov, act))}
            for group, pairs in groups.items():
                entry[group] = {
                    "overlap_mean": sum(p[0] for p in pairs) / len(pairs),
                    "action_median": sorted(p[1] for p in pairs)[len(pairs) // 2],
                    "n": len(pairs),
                }
        entry["chance_overlap"] = len(washed) / C.shape[0]
        per_layer.append(entry)
        print(
            f"layer {layer}: overlap washed {entry['washed']['overlap_mean']:.3f}, hard {entry['hard controls']['overlap_mean']:.3f}, "
            f"other {entry['other controls']['overlap_mean']:.3f}, corpus {entry['corpus']['overlap_mean']:.3f} "
            f"(m/f {entry['chance_overlap']:.3f}); action median washed {entry['washed']['action_median']:.4f}, "
            f"hard {entry['hard controls']['action_median']:.4f}, corpus {entry['corpus']['action_median']:.4f}"
        )
    answers = {f.answer.lower() for f in washed}
    lost = [i for i, k in enumerate(kept) if not k]
    instead = {}
    for i in lost:
        c = categorise(conts[i], answers)
        instead[c] = instead.get(c, 0) + 1
    behaviour = {
        "washed_still": sum(still) / len(still),
        "controls_kept": sum(kept) / len(kept),
        "hard_kept": sum(k for k, h in zip(kept, hard) if h) / max(1, sum(hard)),
        "other_kept": sum(k for k, h in zip(kept, hard) if not h) / max(1, len(hard) - sum(hard)),
        "lost_produce_instead": instead,
        "auc_action_predicts_loss": roc_auc(
            [a for a, k in zip(action_c, kept) if not k], [a for a, k in zip(action_c, kept) if k]
        ),
        "lost_examples": [
            {"prompt": controls[i].prompt, "answer": controls[i].answer, "now": conts[i], "hard": hard[i]}
            for i in lost[:12]
        ],
    }
    print(json.dumps({k: v for k, v in behaviour.items() if k != "lost_examples"}, indent=1))
    payload = {
        "benchmark": "leakage",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model_fingerprint": fingerprint,
        "layers": per_layer,
        "behaviour": behaviour,
        "seconds": time.perf_counter() - started,
    }
    out = write_result(name, payload)
    (out.parent / f"{name}.md").write_text(markdown(payload))
    print(markdown(payload))
    print(f"wrote {out}")
    return 0


def markdown(payload) -> str:
    b = payload["behaviour"]
    rows = [
        f"# Leakage of {payload['settings']['point']} at m = {payload['settings']['m']}",
        "",
        "| block | overlap: washed | hard controls | other controls | controls' last prompt token | corpus lines | m/f "
        "| action (‖Δk‖/‖Wk‖, median): washed | hard | other | last prompt token | corpus |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in payload["layers"]:
        g = [e[k] for k in ("washed", "hard controls", "other controls", "controls' last prompt token", "corpus")]
        rows.append(
            f"| {e['layer']} | "
            + " | ".join(f"{x['overlap_mean']:.3f}" for x in g)
            + f" | {e['chance_overlap']:.3f} | "
            + " | ".join(f"{x['action_median']:.4f}" for x in g)
            + " |"
        )
    rows += [
        "",
        f"Washed still produced {100 * b['washed_still']:.1f} %; controls kept {100 * b['controls_kept']:.1f} % "
        f"(hard {100 * b['hard_kept']:.1f} %, other {100 * b['other_kept']:.1f} %). Lost controls now produce: "
        + ", ".join(f"{k} {v}" for k, v in b["lost_produce_instead"].items())
        + f". ROC AUC of the summed squared action for lost vs kept controls: {b['auc_action_predicts_loss']:.3f}.",
    ]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
