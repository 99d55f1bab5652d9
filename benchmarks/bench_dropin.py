"""Benchmark: law_fast as MEMIT's drop-in backend (issue 15) — ``law_fast.compat.apply_memit_to_model``
against kmeng01/memit's own ``apply_memit_to_model`` (../shared/clients/memit, unmodified, on CPU via
``law_fast.testing.memit_client``), side by side on SmolLM2-135M-Instruct, the same inputs:

* edits: the first --n CounterFact cases (../shared/data/counterfact/counterfact-edit.json, file
  order) whose true object the model produces, each rewritten to its counterfactual ``target_new``;
* hyper-parameters: MEMIT's, with SmolLM2's module templates (``model.layers.{}.mlp.down_proj``),
  law_fast's preset layers, λ = --mom2-update-weight;
* statistics: one second-moment file per layer in MEMIT's layout (data/stats/... under the work
  directory, float32), computed once by law_fast from --stats-samples WikiText-2 validation documents —
  both packages read the same file;
* context templates: law_fast's (seed 0), given to the client too (its own are sampled unseeded).

Reports, per package: wall-clock time of the call, efficacy (edited facts whose ``target_new`` is in
the 10-token greedy continuation of the prompt), the true object still produced; and the relative
difference of the two packages' edited weights.  The client computes z* one fact at a time: its
per-case z* are cached through its own ``cache_template`` and its per-case z* times in a JSON beside
them, so a stopped run continues; its time is then the sum of measured parts (labelled).

    python benchmarks/bench_dropin.py --n 64
    python benchmarks/bench_dropin.py --quick          # 4 edits, small settings: checks that it runs

Writes benchmarks/results/<name>.json (default ``dropin_smollm2_n<N>``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, read_json, write_json, write_result  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "data"
MEMIT_ROOT = REPO_ROOT.parent / "shared" / "clients" / "memit"
NAME = "smollm2-135m-instruct"  # the model's _name_or_path for the clients' stats path


def hparams_for(model, layers, weight: float, steps: int, n_samples: int) -> dict:
    n_layers = model.config.num_hidden_layers
    return dict(
        layers=list(layers),
        layer_selection="all",
        fact_token="subject_last",
        v_num_grad_steps=steps,
        v_lr=0.5,
        v_loss_layer=n_layers - 1,
        v_weight_decay=0.5,
        clamp_norm_factor=0.75,
        kl_factor=0.0625,
        mom2_adjustment=True,
        mom2_update_weight=weight,
        rewrite_module_tmp="model.layers.{}.mlp.down_proj",
        layer_module_tmp="model.layers.{}",
        mlp_module_tmp="model.layers.{}.mlp",
        attn_module_tmp="model.layers.{}.self_attn",
        ln_f_module="model.norm",
        # tied embeddings (SmolLM2): the output matrix is the input embedding's, which is how the clients name
        # it (named_parameters lists a tied weight once, as model.embed_tokens.weight); as MEMIT's GPT-2 "transformer.wte"
        lm_head_module="model.embed_tokens" if model.config.tie_word_embeddings else "lm_head",
        mom2_dataset="wikipedia",
        mom2_n_samples=n_samples,
        mom2_dtype="float32",
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="edits")
    parser.add_argument("--mom2-update-weight", type=float, default=15000.0, help="MEMIT's λ (GPT-J's value)")
    parser.add_argument("--stats-samples", type=int, default=2000, help="WikiText-2 validation documents")
    parser.add_argument("--steps", type=int, default=20, help="v_num_grad_steps (MEMIT: 20)")
    parser.add_argument("--workdir", type=Path, default=None, help="caches (default: law_fast's cache dir)")
    parser.add_argument("--quick", action="store_true", help="4 edits, 200 documents, 5 z* steps")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.stats_samples, args.steps = 4, 200, 5
    if not (MEMIT_ROOT / "memit" / "memit_main.py").is_file():
        raise SystemExit(f"the MEMIT client is not at {MEMIT_ROOT}")
    name = args.name or (f"dropin_smollm2_n{args.n}" + ("_quick" if args.quick else ""))

    import torch

    import law_fast as lf
    from law_fast.compat import apply_memit_to_model, client_stats_path, read_requests, write_client_stats
    from law_fast.corpus import load_corpus
    from law_fast.hf.adapters import model_fingerprint
    from law_fast.hf.loading import cache_dir
    from law_fast.testing import memit_client
    from law_fast.washing.elimination import known_facts
    from law_fast.washing.stats import layer_stats
    from law_fast.washing.templates import context_templates

    model, tok = lf.load_model(None)
    model.config._name_or_path = NAME
    model.config.n_embd = model.config.hidden_size  # the client reads GPT-2's config names (clients README)
    model.config.n_positions = model.config.max_position_embeddings
    fingerprint = model_fingerprint(model)
    workdir = (args.workdir or cache_dir() / "bench_dropin") / fingerprint[:16]
    workdir.mkdir(parents=True, exist_ok=True)
    layers = lf.WashConfig.preset(model).layers
    h = hparams_for(model, layers, args.mom2_update_weight, args.steps, args.stats_samples)

    # edits: CounterFact cases whose true object the model produces (verdicts cached)
    records = json.loads((DATA / "counterfact" / "counterfact-edit.json").read_text())
    requests = []
    for r in records:
        if r["prompt"].count(r["subject"]) == 1 and r["target_new"].strip() and r["ground_truth"].strip():
            requests.append(
                {
                    "case_id": r["case_id"],
                    "prompt": r["prompt"].replace(r["subject"], "{}"),
                    "subject": r["subject"],
                    "target_new": {"str": r["target_new"]},
                    "target_true": {"str": r["ground_truth"]},
                }
            )
    verdict_path = workdir / "known.json"
    verdicts = read_json(verdict_path) or {}
    chosen, done = [], 0
    while len(chosen) < args.n and done < len(requests):
        chunk = requests[done : done + 64]
        todo = [q for q in chunk if str(q["case_id"]) not in verdicts]
        if todo:
            facts = [q.fact("target_true") for q in read_requests(todo)]
            for q, k in zip(todo, known_facts(model, tok, facts, batch_size=64)[0]):
                verdicts[str(q["case_id"])] = bool(k)
            write_json(verdict_path, verdicts)
        chosen += [q for q in chunk if verdicts[str(q["case_id"])]]
        done += len(chunk)
    chosen = chosen[: args.n]
    print(f"{len(chosen)} edits (known true objects among the first {done} cases)", flush=True)

    # the statistics, once, in MEMIT's layout: both packages read these files
    adapter = lf.get_adapter(model)
    stats_dir = workdir / "data" / "stats"
    paths = {
        layer: client_stats_path(
            stats_dir, NAME, "wikipedia", h["rewrite_module_tmp"].format(layer), "float32", args.stats_samples
        )
        for layer in layers
    }
    if not all(p.exists() for p in paths.values()):
        corpus = load_corpus(str(DATA / "wikitext2" / "wiki.valid.tokens"), n_samples=args.stats_samples)
        stats = layer_stats(model, adapter, tok, corpus, layers, progress=False)
        for layer, p in paths.items():
            write_client_stats(p, stats[layer], "float32", sample_size=args.stats_samples)
    templates = context_templates(model, tok, seed=0, length=10)
    names = [adapter.down_proj_name(layer) for layer in layers]
    original = {n: model.get_parameter(n).detach().clone() for n in names}

    def measure(edited) -> dict:
        read = read_requests(chosen)
        new, _ = known_facts(edited, tok, [q.fact("target_new") for q in read], batch_size=64)
        true, _ = known_facts(edited, tok, [q.fact("target_true") for q in read], batch_size=64)
        return {"efficacy": sum(new) / len(read), "true_still_produced": sum(true) / len(read)}

    def restore():
        with torch.no_grad():
            for n in names:
                model.get_parameter(n).copy_(original[n])

    before = measure(model)
    print(f"original: {before}", flush=True)

    # law_fast
    t = time.perf_counter()
    _, orig = apply_memit_to_model(
        model, tok, copy.deepcopy(chosen), h, return_orig_weights=True, stats_dir=stats_dir, progress=False
    )
    ours_s = time.perf_counter() - t
    ours_delta = {n: model.get_parameter(n).detach().double() - original[n].double() for n in names}
    ours = {"seconds": ours_s, **measure(model)}
    restore()
    print(f"law_fast: {ours}", flush=True)

    # the client: z* per case cached by its cache_template; the time of each z* kept beside it
    kv_dir = workdir / "memit_kvs" / f"n{args.stats_samples}-s{args.steps}"
    times_path = kv_dir / "z_seconds.json"
    z_seconds = read_json(times_path) or {}
    with memit_client(MEMIT_ROOT, workdir) as memit:
        from memit import memit_main

        memit_main.CONTEXT_TEMPLATES_CACHE = [["{}"], templates[1:]]
        memit_main.COV_CACHE.clear()
        plain_compute_z = memit_main.compute_z

        def timed_compute_z(model_, tok_, request, *a, **k):
            start = time.perf_counter()
            out = plain_compute_z(model_, tok_, request, *a, **k)
            z_seconds[str(request["case_id"])] = time.perf_counter() - start
            write_json(times_path, z_seconds)
            return out

        memit_main.compute_z = timed_compute_z
        cached = {str(q["case_id"]) for q in chosen if str(q["case_id"]) in z_seconds}
        t = time.perf_counter()
        try:
            _, theirs_orig = memit.apply_memit_to_model(
                model,
                tok,
                copy.deepcopy(chosen),
                memit_main.MEMITHyperParams(**h),
                return_orig_weights=True,
                cache_template=str(kv_dir / "layer_{}_clamp_{}_case_{}.npz"),
            )
        finally:
            memit_main.compute_z = plain_compute_z
        call_s = time.perf_counter() - t
    theirs_delta = {n: model.get_parameter(n).detach().double() - original[n].double() for n in names}
    resumed = sorted(cached)
    theirs_s = call_s + sum(z_seconds[c] for c in resumed)  # cached z* were computed (and timed) in earlier runs
    theirs = {
        "seconds": theirs_s,
        "seconds_is_sum_of_runs": bool(resumed),
        "z_star_seconds": sum(z_seconds[str(q["case_id"])] for q in chosen),
        **measure(model),
    }
    restore()
    print(f"memit: {theirs}", flush=True)
    difference = {
        n: float((ours_delta[n] - theirs_delta[n]).norm() / theirs_delta[n].norm().clamp_min(1e-300)) for n in names
    }
    assert sorted(orig) == sorted(theirs_orig) == sorted(names)
    payload = {
        "benchmark": "dropin",
        "model": NAME,
        "model_fingerprint": fingerprint,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "hparams": h,
        "n_edits": len(chosen),
        "case_ids": [q["case_id"] for q in chosen],
        "original": before,
        "law_fast": ours,
        "memit": theirs,
        "speedup": theirs_s / ours_s,
        "edited_weights_relative_difference": difference,
        "note": "memit.seconds is the call's time plus, for z* its cache_template held from earlier runs, "
        "the seconds those z* took when they were computed (seconds_is_sum_of_runs)",
    }
    out = write_result(name, payload)
    print(json.dumps({k: payload[k] for k in ("law_fast", "memit", "speedup")}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
