"""Benchmark: the washing/retention frontier (issue 13) — how much a method washes against how much
un-washed knowledge it keeps, per method, per number of washed facts m, along its strength knob.

Model: SmolLM2-135M-Instruct (the embedded default).  Facts: CounterFact (all three files of
../shared/data, ~22k cases) in a seeded order; the model's known facts (answer in its greedy
continuation, answer not inside the subject) are found with law_fast's own check.  For the largest m:
  washed    the first m known facts (the sets are nested: m = 64 ⊂ 256 ⊂ 1024);
  controls  --controls known facts, not washed, subjects disjoint from every washed set; at least
            half share a relation (prompt template) with the m = 64 set — the hard neighbours;
  retain    --retain known facts, disjoint from both, sharing relations with the washed set: the
            pool the ``retain_facts`` variants keep (mined from the data the user holds).
Each point reports (washed facts still produced, their paraphrases still produced, controls kept,
controls' paraphrases kept, the washed facts' neighbourhood prompts, WikiText-2 perplexity).
Reasoning (lambada_openai, arc_easy, hellaswag, --reasoning-limit items each, with standard errors)
for the original and for the points named by --reasoning-points.

Variants (``VARIANTS``) and their one knob ``s``:
  default        law_fast's default (WashConfig.preset: config.RETENTION_DEFAULT, MEMIT to EOS keeping 1,000
                 names mined from the corpus and the washed facts' neighbourhood prompts, ν = 1 each;
                 config.SMOLLM2_TARGETS, z* of 20 steps and up to 80 more for the facts still above a loss
                 of 3), disruption budget ×s — the same computation as default-x80b3 and default-neigh1
                 (before 2026-12-07 the preset had no extra steps: memit-ent1; up to 374d977 no
                 neighbourhood prompts: default-x80b3 at those revisions)
  VARIANT-zN     VARIANT with z* run up to N steps, each fact until the loss threshold, no extra steps
                 (default-z100, memit-z100: 20 steps leave 8 of the m = 64 facts above a loss of 3)
  VARIANT-xNbB   VARIANT with up to N more z* steps for the facts whose loss is still above B after the
                 20 (v_extra_steps, v_extra_loss): the others keep their 20-step z* (default-x80b1, -x80b3)
  VARIANT-nuV    VARIANT keeping the mined names at ν = V (retain_weight; default-nu2, -nu4)
  VARIANT-speos  VARIANT with LaW as published's target, " " + EOS (default-speos)
  VARIANT-law    VARIANT solved by LaW (its refinement of the MEMIT init; default-law)
  VARIANT-namesN VARIANT keeping N mined names instead of 1,000 (retain_entities; default-names2000)
  VARIANT-neighV VARIANT keeping the names and the washed facts' neighbourhood prompts (retain_neighbourhood)
                 at ν = V per source (default-neigh1, -neigh2; at 8ca73f0 the sources were averaged, so
                 default-neigh2 there is the preset after 374d977)
  memit          MEMIT to EOS, disruption budget ×s (budget per fact 6.25e-5·s, cap 0.02·s)
  law            LaW (law_fast's default before the frontier was measured), the same budget ×s
  paper          LaW with the authors' settings (WashConfig.preset(paper=True)), norm bounds ×s
  memit-retain   memit + retain_facts (the retain pool), retain_weight ν = s
  law-retain     law + retain_facts, ν = s
  law-null       law, Δ restricted to the null space of the retain pool's keys, energy = s
  *-entities     memit / law + retain_entities (1000 name mentions mined from the statistics corpus:
                 automatic, no retain file), retain_weight ν = s
  law-entities-white  law-entities with the LaW steps whitened by C_eff (law_whiten)
  *-ent1         memit / law + retain_entities at ν = 1, disruption budget ×s
  *-entnull      memit / law with Δ restricted to the null space of the mined names' keys (the
                 fewest top directions holding energy s of their second moment: first the mean
                 direction every subject key shares)
  *-unlikely     memit / law with target "unlikely" (each answer's first token pushed down instead
                 of EOS raised), disruption budget ×s
  *-refusal      memit / law with a refusal text (REFUSAL) as the target instead of EOS, budget ×s
  *-layers       memit / law editing s consecutive blocks from FIRST_LAYER (the preset edits 5)
  memit-ent1null memit-ent1 at budget ×1 and Δ outside the mined names' top directions holding energy s
  *-alpha        AlphaEdit's projection: Δ in the corpus C's eigen-directions below ALPHA_THRESHOLD·s,
                 λI in place of λC (regulariser="identity"), λ by the disruption budget
Statistics from --stats-samples documents of WikiText-2 test (one cached pass).

Resumable: the known-fact scan, z* and every wash stage (``wash(workdir=)``, one job folder per fact
set), the statistics (law_fast's cache) and each
point (keyed by the law_fast source tree, the variant's config and the fact sets) are cached under
--workdir; a killed run continues where it stopped.  Run one at a time (2 cores).

    python benchmarks/bench_retention.py --m 64 --variants memit,law --knobs 0.5,1,2
    python benchmarks/bench_retention.py --quick        # tiny settings: checks that everything runs

Writes benchmarks/results/<name>.json, <name>.md and <name>.png (default name ``retention_smollm2``).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, code_key, read_json, sha, write_json, write_result  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "data"
FACT_FILES = [DATA / "counterfact" / f"counterfact-{n}.json" for n in ("edit", "train", "val")]
BUDGET = (6.25e-5, 0.02)  # law_fast's default disruption budget per fact and its cap
ENTITIES = 1000  # name mentions mined from the statistics corpus by the *-entities variants
REFUSAL = " I don't know."  # the *-refusal variants' target text
ALPHA_THRESHOLD = 1e-2  # the *-alpha variants' null-space threshold at s = 1 (SmolLM2's C: 400-740 of 1536 below it)
Z_STEPS = re.compile(r"(.+)-z(\d+)")  # VARIANT-zN: VARIANT with z* up to N steps (each fact to the loss threshold)
EXTRA_STEPS = re.compile(r"(.+)-x(\d+)b([\d.]+)")  # VARIANT-xNbB: z* up to N more steps for the facts above loss B
MODIFIERS = {  # suffix -> (WashConfig overrides, what knob_doc says)
    "nu": (
        lambda v: dict(retain_entities=ENTITIES, retain_weight=float(v)),
        f"{ENTITIES} mined names, retain_weight ν = {{}}",
    ),
    "speos": (lambda _: dict(target="space+eos"), "target ' ' + EOS (LaW as published)"),
    "law": (lambda _: dict(method="law"), "method law (LaW's refinement of the MEMIT init)"),
    "names": (lambda v: dict(retain_entities=int(v), retain_weight=1.0), "{} mined names (retain_entities), ν = 1"),
    "neigh": (  # ν per source (law_fast sums the sources' C_p since the preset took them; averaged at 8ca73f0)
        lambda v: dict(retain_entities=ENTITIES, retain_neighbourhood=True, retain_weight=float(v)),
        f"{ENTITIES} mined names and the washed facts' neighbourhood prompts (retain_neighbourhood), ν = {{}}",
    ),
}
# VARIANT-NAMEvalue: VARIANT with one field changed (MODIFIERS[NAME]); groups (VARIANT, NAME, value)
MODIFIED = re.compile(rf"(.+)-({'|'.join(MODIFIERS)})([\d.]*)")
FIRST_LAYER = 4  # the first edited block of SmolLM2's preset (4..8); the *-layers variants edit s blocks from it


def knob_overrides(variant: str, s: float, retain_file: str) -> dict:
    """The WashConfig overrides of ``variant`` at knob value ``s`` (see the module docstring)."""
    budget = dict(disruption_per_fact=BUDGET[0] * s, disruption_budget=BUDGET[1] * s)
    if variant in VARIANTS and Z_STEPS.fullmatch(variant):
        base, steps = Z_STEPS.fullmatch(variant).groups()
        return dict(knob_overrides(base, s, retain_file), v_num_grad_steps=int(steps), v_extra_steps=0)
    if variant in VARIANTS and EXTRA_STEPS.fullmatch(variant):
        base, steps, bound = EXTRA_STEPS.fullmatch(variant).groups()
        return dict(knob_overrides(base, s, retain_file), v_extra_steps=int(steps), v_extra_loss=float(bound))
    if variant in VARIANTS and MODIFIED.fullmatch(variant):
        base, name, value = MODIFIED.fullmatch(variant).groups()
        return dict(knob_overrides(base, s, retain_file), **_modifier(name, value)[0])
    if variant == "default":
        return budget
    if variant in ("memit", "law"):
        return dict(method=variant, **budget)
    if variant in ("memit-unlikely", "law-unlikely"):
        return dict(method=variant.split("-")[0], target="unlikely", **budget)
    if variant == "paper":
        return dict(method="law", norm_bounds=(s / 3, s * 3 / 4))
    if variant in ("memit-retain", "law-retain"):
        return dict(method=variant.split("-")[0], retain_facts=retain_file, retain_weight=s)
    if variant in ("memit-entities", "law-entities"):
        return dict(method=variant.split("-")[0], retain_entities=ENTITIES, retain_weight=s)
    if variant == "memit-entities-c":
        return dict(method="memit", retain_entities=ENTITIES, retain_weight=s, retain_budget="corpus")
    if variant in ("memit-ent1", "law-ent1"):
        return dict(method=variant.split("-")[0], retain_entities=ENTITIES, retain_weight=1.0, **budget)
    if variant == "law-entities-white":
        return dict(method="law", retain_entities=ENTITIES, retain_weight=s, law_whiten=True)
    if variant == "law-null":
        return dict(method="law", retain_facts=retain_file, null_space_energy=s)
    if variant in ("memit-entnull", "law-entnull"):
        return dict(method=variant.split("-")[0], retain_entities=ENTITIES, null_space_energy=s)
    if variant in ("memit-refusal", "law-refusal"):
        return dict(method=variant.split("-")[0], target=REFUSAL, **budget)
    if variant == "memit-ent1null":
        return dict(method="memit", retain_entities=ENTITIES, retain_weight=1.0, null_space_energy=s)
    if variant in ("memit-alpha", "law-alpha"):
        return dict(method=variant.split("-")[0], null_space_threshold=ALPHA_THRESHOLD * s, regulariser="identity")
    if variant in ("memit-layers", "law-layers"):
        return dict(method=variant.split("-")[0], layers=tuple(range(FIRST_LAYER, FIRST_LAYER + int(s))))
    raise SystemExit(f"unknown variant {variant!r}; choose from {VARIANTS}")


VARIANTS = (
    "default",
    "default-z100",
    "memit",
    "memit-z100",
    "default-x80b1",
    "default-x80b3",
    "default-nu2",
    "default-nu4",
    "default-speos",
    "default-law",
    "default-names2000",
    "default-neigh1",
    "default-neigh2",
    "law",
    "paper",
    "memit-retain",
    "law-retain",
    "law-null",
    "memit-unlikely",
    "law-unlikely",
    "memit-entities",
    "law-entities",
    "law-entities-white",
    "memit-ent1",
    "law-ent1",
    "memit-entnull",
    "law-entnull",
    "memit-entities-c",
    "memit-refusal",
    "law-refusal",
    "memit-layers",
    "law-layers",
    "memit-alpha",
    "law-alpha",
    "memit-ent1null",
)
LEFT = {  # (JSON key, EvalReport.flat() key)
    "washed_still": "facts.rewrite.acc",
    "paraphrase_still": "facts.paraphrase.acc",
    "neighbourhood_kept": "facts.neighbourhood.acc",
    "controls_kept": "controls.rewrite.acc",
    "controls_paraphrase_kept": "controls.paraphrase.acc",
    "perplexity": "fluency.perplexity",
}


def _modifier(name: str, value: str) -> tuple[dict, str]:
    """(WashConfig overrides, description) of MODIFIERS[name] at ``value`` (e.g. ``nu``, ``2``)."""
    overrides, doc = MODIFIERS[name]
    return overrides(value), doc.format(value)


def variant_overrides(variant: str, s: float, retain_file: str) -> dict:
    """What ``WashConfig.preset`` gets for ``variant`` at ``s``: the knob's overrides, on the plain method
    (config.PLAIN: nothing kept, z* of 20 steps and no more) for every variant but ``default`` and ``default-*``, which
    keep the preset's retention and z* settings."""
    from law_fast.config import PLAIN

    return {**({} if variant.startswith("default") else PLAIN), **knob_overrides(variant, s, retain_file)}


def job_dir(workdir: Path, washed) -> Path:
    """The wash work directory of one fact set (a job: wash(workdir=) holds one; z* and every stage of
    every variant of it are checkpointed there)."""
    return workdir / "jobs" / f"m{len(washed)}-{sha([f.case_id for f in washed])[:12]}"


def source_tree() -> str | None:
    """What computes a point (common.code_key: law_fast/'s committed tree, plus a digest of its uncommitted
    changes); a point made by other code is recomputed."""
    return code_key("law_fast")


def scan_known(model, tok, facts, cache: Path, enough, batch: int = 64):
    """The facts (in the given order) the model produces, scanning until ``enough(known)`` holds (or the
    data ends); per-case verdicts are cached in ``cache`` as they are found, so a killed scan continues
    and a later, larger study extends it."""
    from law_fast.washing.elimination import known_facts

    verdicts = read_json(cache) or {}
    known, done = [], 0
    while not (done and enough(known)) and done < len(facts):
        chunk = facts[done : done + batch]
        todo = [f for f in chunk if str(f.case_id) not in verdicts]
        if todo:
            for f, k in zip(todo, known_facts(model, tok, todo, batch_size=batch)[0]):
                verdicts[str(f.case_id)] = bool(k)
            write_json(cache, verdicts)
        known += [f for f in chunk if verdicts[str(f.case_id)]]
        done += len(chunk)
        if todo:
            print(f"\r  scanned {done} of {len(facts)} facts, {len(known)} known", end="", flush=True)
    return known, done


def fact_sets(lf, model, tok, fingerprint, workdir: Path, seed: int, ms, n_controls: int, n_retain: int):
    """(washed for the largest m, controls, retain pool, facts scanned): all CounterFact cases in the seeded
    order (answers inside the subject dropped), scanned for known facts (cached) until ``choose_sets``
    can fill every set."""
    everything = [f for path in FACT_FILES for f in lf.load_facts(path) if f.answer.lower() not in f.subject.lower()]
    random.Random(seed).shuffle(everything)

    def sets(known):
        return choose_sets(known, ms[-1], min(64, ms[0]), n_controls, n_retain)

    known, scanned = scan_known(model, tok, everything, workdir / f"known-{fingerprint[:16]}.json", sets)
    print(f"\n{len(known)} of the first {scanned} CounterFact facts (of {len(everything)}) are known")
    if sets(known) is None:
        raise SystemExit(
            f"the data holds too few known facts for m = {ms[-1]}, {n_controls} controls, {n_retain} retained"
        )
    return (*sets(known), scanned)


def choose_sets(known, max_m: int, first_m: int, n_controls: int, n_retain: int):
    """(washed — the first max_m, nested —, controls, retain pool) from the known facts in scan order,
    or None when there are not enough yet.  The first ``first_m`` known facts are washed at every m;
    then come the controls (subjects disjoint from them; half sharing a template with them — the
    hard neighbours —, half any), then the retain pool (subjects disjoint from both, sharing a
    template with the first ``first_m``), and the rest of the washed facts skip every subject of the
    controls and the pool: so the controls and the pool stay the same for every ``max_m``."""
    washed = known[:first_m]
    near = {f.template for f in washed}
    taken = {f.subject.lower() for f in washed}
    rest = [f for f in known[first_m:] if f.subject.lower() not in taken]
    hard = [f for f in rest if f.template in near][: n_controls // 2]
    others = [f for f in rest if f.template not in near][: n_controls - len(hard)]
    if len(hard) < n_controls // 2 or len(others) < n_controls - n_controls // 2:
        return None
    position = {f.case_id: i for i, f in enumerate(rest)}
    controls = sorted(hard + others, key=lambda f: position[f.case_id])
    last = position[controls[-1].case_id]
    taken |= {f.subject.lower() for f in controls}
    after = [f for f in rest[last + 1 :] if f.subject.lower() not in taken]
    retain = [f for f in after if f.template in near][:n_retain]
    if len(retain) < n_retain:
        return None
    taken |= {f.subject.lower() for f in retain}
    chosen = {f.case_id for f in controls + retain}
    washed += [f for f in rest if f.case_id not in chosen and f.subject.lower() not in taken][: max_m - first_m]
    if len(washed) < max_m:
        return None
    return washed, controls, retain


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", default="64,256,1024", help="numbers of washed facts (nested sets) to run")
    parser.add_argument("--variants", default="default,memit,paper", help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--knobs", default="0.5,1,2", help="knob values s (per variant: VARIANT=a:b:c;...)")
    parser.add_argument("--controls", type=int, default=256)
    parser.add_argument("--retain", type=int, default=128, help="facts in the retain pool")
    parser.add_argument("--stats-samples", type=int, default=2000, help="WikiText-2 documents for the statistics")
    parser.add_argument("--ppl-tokens", type=int, default=8192)
    parser.add_argument("--reasoning", default="lambada,arc_easy,hellaswag")
    parser.add_argument("--reasoning-limit", type=int, default=1000)
    parser.add_argument(
        "--reasoning-points", default="", help="points (VARIANT@m@s, comma-separated) that also get reasoning"
    )
    parser.add_argument("--seed", type=int, default=0, help="order of the CounterFact cases")
    parser.add_argument("--workdir", type=Path, default=None, help="cache (default: law_fast's cache dir)")
    parser.add_argument("--quick", action="store_true", help="m = 4, 8 controls, tiny settings, no reasoning")
    parser.add_argument("--name", default=None)
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting new points after this long")
    args = parser.parse_args(argv)
    if args.quick:
        args.m, args.controls, args.retain, args.ppl_tokens, args.reasoning = "4", 8, 8, 256, ""
        args.stats_samples = 200
    ms = sorted(int(x) for x in args.m.split(","))
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        knob_overrides(v, 1.0, "")
    knobs = parse_knobs(args.knobs, variants)
    name = args.name or ("retention_smollm2_quick" if args.quick else "retention_smollm2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()

    import law_fast as lf
    from law_fast.corpus import load_corpus
    from law_fast.eval.report import EvalReport, evaluate
    from law_fast.facts import save_facts_jsonl
    from law_fast.hf.adapters import model_fingerprint
    from law_fast.hf.loading import cache_dir

    workdir = args.workdir or cache_dir() / "bench_retention"
    model, tok = lf.load_model(None)
    fingerprint = model_fingerprint(model)
    tree = source_tree()
    washed_all, controls, retain, _ = fact_sets(
        lf, model, tok, fingerprint, workdir, args.seed, ms, args.controls, args.retain
    )
    retain_file = workdir / f"retain-{sha([f.case_id for f in retain])}.jsonl"
    save_facts_jsonl(retain, retain_file)
    print(f"{len(washed_all)} washed (max m), {len(controls)} controls, {len(retain)} retain")
    wiki = str(DATA / "wikitext2" / "wiki.test.raw")
    ppl_corpus = load_corpus(wiki)

    def measure(washed, subset, reasoning):
        return evaluate(
            model,
            tok,
            facts=washed,
            controls=controls,
            corpus=ppl_corpus,
            reasoning=reasoning,
            limit=args.reasoning_limit,
            ppl_max_tokens=args.ppl_tokens,
            known_only=subset is None,
            subset=subset,
            label="",
            progress=False,
        )

    reasoning = [t for t in args.reasoning.split(",") if t]
    base_key = {
        "tree": tree,
        "model": fingerprint,
        "controls": [f.case_id for f in controls],
        "ppl_tokens": args.ppl_tokens,
        "stats_samples": args.stats_samples,
    }
    originals = {}
    for m in ms:
        path = (
            workdir
            / "points"
            / f"original-m{m}-{sha({**base_key, 'm': m, 'washed': [f.case_id for f in washed_all[:m]]})}.json"
        )
        if (cached := read_json(path)) is None:
            t = time.perf_counter()
            cached = {"report": measure(washed_all[:m], None, []).to_dict(), "eval_s": time.perf_counter() - t}
            write_json(path, cached)
        originals[m] = EvalReport.from_dict(cached["report"])
    reasoning_key = {**base_key, "reasoning": reasoning, "limit": args.reasoning_limit}
    path = workdir / "points" / f"original-reasoning-{sha(reasoning_key)}.json"
    original_reasoning = None
    if reasoning:
        if (original_reasoning := read_json(path)) is None:
            report = evaluate(model, tok, reasoning=reasoning, limit=args.reasoning_limit, progress=False)
            original_reasoning = {"reasoning": report.to_dict()["reasoning"]}
            write_json(path, original_reasoning)
    wanted_reasoning = {p for p in args.reasoning_points.split(",") if p}
    points = []
    for m in ms:
        washed = washed_all[:m]
        for variant in variants:
            for s in knobs[variant]:
                overrides = variant_overrides(variant, s, str(retain_file))
                paper = variant == "paper"
                config = lf.WashConfig.preset(model, paper=paper, mom2_n_samples=args.stats_samples, **overrides)
                if args.quick:
                    config = config.replace(v_num_grad_steps=3, total_iters=10)
                label = f"{variant}@{m}@{s:g}"
                key = {**base_key, "config": config.to_dict(), "washed": [f.case_id for f in washed]}
                key["retain"] = [f.case_id for f in retain] if config.retain.active else None
                digest = sha(key)  # the same computation under another variant's name is the same point
                same = sorted((workdir / "points").glob(f"*-{digest}.json"))
                path = same[0] if same else workdir / "points" / f"{variant}-m{m}-s{s:g}-{digest}.json"
                point = read_json(path)
                if point is None:
                    if args.budget_s and time.perf_counter() - started > args.budget_s:
                        print(f"{label}: not started (--budget-s reached); rerun to continue")
                        continue
                    point = run_point(
                        lf, model, tok, washed, config, wiki, job_dir(workdir, washed), measure, originals[m]
                    )
                    write_json(path, point)
                if label in wanted_reasoning and "reasoning" not in point:
                    point["reasoning"] = reasoning_for(
                        lf, model, tok, washed, config, wiki, job_dir(workdir, washed), reasoning, args
                    )
                    write_json(path, point)
                point.update(variant=variant, m=m, knob=s, label=label)
                points.append(point)
                print(f"{label}: " + ", ".join(f"{k} {fmt(point['metrics'].get(k))}" for k in LEFT), flush=True)
    payload = {
        "benchmark": "retention",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model_fingerprint": fingerprint,
        "law_fast_tree": tree,
        "washed_ids": [f.case_id for f in washed_all],
        "control_ids": [f.case_id for f in controls],
        "controls_sharing_a_relation": {
            m: sum(f.template in {w.template for w in washed_all[:m]} for f in controls) for m in ms
        },
        "retain_ids": [f.case_id for f in retain],
        "originals": {str(m): {"metrics": metrics(r)} for m, r in originals.items()},
        "original_reasoning": original_reasoning,
        "knobs": {v: knob_doc(v) for v in variants},
        "points": points,
    }
    out = write_result(name, json.loads(json.dumps(payload, default=str)))
    folder = out.parent
    (folder / f"{name}.md").write_text(markdown(payload))
    plot(payload, folder / f"{name}.png")
    print(markdown(payload))
    print(f"wrote {out}, {name}.md and {name}.png")
    return 0


def parse_knobs(text: str, variants) -> dict[str, list[float]]:
    if "=" not in text:
        return {v: [float(x) for x in text.split(",")] for v in variants}
    given = dict(part.split("=", 1) for part in text.split(";") if part)
    return {v: [float(x) for x in given.get(v, "1").split(":")] for v in variants}


def knob_doc(variant: str) -> str:
    if Z_STEPS.fullmatch(variant):
        base, steps = Z_STEPS.fullmatch(variant).groups()
        return f"{knob_doc(base)}; z* up to {steps} steps (each fact to the loss threshold)"
    if EXTRA_STEPS.fullmatch(variant):
        base, steps, bound = EXTRA_STEPS.fullmatch(variant).groups()
        return f"{knob_doc(base)}; z* up to {steps} more steps for the facts whose loss is still above {bound}"
    if MODIFIED.fullmatch(variant):
        base, name, value = MODIFIED.fullmatch(variant).groups()
        return f"{knob_doc(base)}; {_modifier(name, value)[1]}"
    return {
        "default": "WashConfig.preset (memit + retain_entities=1000 and retain_neighbourhood, ν = 1, "
        "z* extra steps above loss 3), "
        "disruption budget ×s",
        "memit": "disruption budget ×s",
        "law": "disruption budget ×s",
        "paper": "norm bounds ×s (s/3..3s/4 of ‖W‖)",
        "memit-retain": "retain_weight ν = s",
        "law-retain": "retain_weight ν = s",
        "law-null": "null_space_energy = s",
        "memit-unlikely": "target 'unlikely' (answer pushed down), disruption budget ×s",
        "law-unlikely": "target 'unlikely', disruption budget ×s",
        "memit-entities": f"retain_entities={ENTITIES} (names mined from the corpus), retain_weight ν = s",
        "law-entities": f"retain_entities={ENTITIES}, retain_weight ν = s",
        "law-entities-white": f"retain_entities={ENTITIES}, retain_weight ν = s, law_whiten",
        "memit-ent1": f"retain_entities={ENTITIES}, ν = 1, disruption budget ×s",
        "law-ent1": f"retain_entities={ENTITIES}, ν = 1, disruption budget ×s",
        "memit-entnull": f"retain_entities={ENTITIES}, null_space_energy = s (Δ outside their top directions)",
        "memit-entities-c": f"retain_entities={ENTITIES}, retain_weight ν = s, the λ budget on C alone",
        "law-entnull": f"retain_entities={ENTITIES}, null_space_energy = s",
        "memit-refusal": f"target {REFUSAL!r} instead of EOS, disruption budget ×s",
        "law-refusal": f"target {REFUSAL!r}, disruption budget ×s",
        "memit-layers": f"s consecutive edited blocks from block {FIRST_LAYER} (the preset: 5)",
        "memit-ent1null": f"retain_entities={ENTITIES}, ν = 1, null_space_energy = s",
        "memit-alpha": f"null_space_threshold = {ALPHA_THRESHOLD:g}·s (C's eigen-directions below it), λI",
        "law-alpha": f"null_space_threshold = {ALPHA_THRESHOLD:g}·s, λI",
        "law-layers": f"s consecutive edited blocks from block {FIRST_LAYER}",
    }[variant]


def metrics(report) -> dict:
    flat = report.flat()
    return {k: flat.get(key) for k, key in LEFT.items()}


def run_point(lf, model, tok, washed, config, wiki, workdir, measure, original) -> dict:
    t = time.perf_counter()
    try:
        result = lf.wash(model, tok, washed, config, corpus=wiki, progress=False, workdir=workdir)
    except Exception as error:  # e.g. the reference λ search cannot meet its bounds: a point that fails
        return {"error": f"{type(error).__name__}: {error}", "metrics": {}, "config": config.to_dict()}
    wash_s = time.perf_counter() - t
    try:
        t = time.perf_counter()
        report = measure(washed, original, [])
        eval_s = time.perf_counter() - t
    finally:
        result.revert()
    return {
        "metrics": metrics(report),
        "wash_s": wash_s,
        "eval_s": eval_s,
        "config": config.to_dict(),
        "wash_report": result.report.to_dict(),
        "report": report.to_dict(),
    }


def reasoning_for(lf, model, tok, washed, config, wiki, workdir, reasoning, args) -> dict:
    from law_fast.eval.report import evaluate

    result = lf.wash(model, tok, washed, config, corpus=wiki, progress=False, workdir=workdir)
    try:
        return evaluate(model, tok, reasoning=reasoning, limit=args.reasoning_limit, progress=False).to_dict()[
            "reasoning"
        ]
    finally:
        result.revert()


def fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if v > 1.5 else f"{100 * v:.1f}%"


def markdown(payload) -> str:
    lines = [
        "| m | method | knob s | washed still produced | paraphrase still | controls kept | controls' paraphrase kept "
        "| neighbourhood kept | perplexity | wash s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, original in payload["originals"].items():
        o = original["metrics"]
        lines.append(
            f"| {m} | original | | {fmt(o['washed_still'])} | {fmt(o['paraphrase_still'])} | "
            f"{fmt(o['controls_kept'])} | {fmt(o['controls_paraphrase_kept'])} | {fmt(o['neighbourhood_kept'])} | "
            f"{fmt(o['perplexity'])} | |"
        )
        for p in payload["points"]:
            if str(p["m"]) != m:
                continue
            if "error" in p:
                lines.append(f"| {m} | {p['variant']} | {p['knob']:g} | fails: {p['error'][:80]} |||||||")
                continue
            x = p["metrics"]
            lines.append(
                f"| {m} | {p['variant']} | {p['knob']:g} | {fmt(x['washed_still'])} | {fmt(x['paraphrase_still'])} | "
                f"{fmt(x['controls_kept'])} | {fmt(x['controls_paraphrase_kept'])} | {fmt(x['neighbourhood_kept'])} | "
                f"{fmt(x['perplexity'])} | {p['wash_s']:.0f} |"
            )
    rows = [p for p in payload["points"] if "reasoning" in p]
    if payload.get("original_reasoning") and rows:
        tasks = sorted(payload["original_reasoning"]["reasoning"])
        lines += ["", "| point | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]

        def cells(r):
            return " | ".join(f"{100 * r[t]['acc']:.1f} ± {100 * (r[t].get('acc_stderr') or 0):.1f}" for t in tasks)

        lines.append(f"| original | {cells(payload['original_reasoning']['reasoning'])} |")
        lines += [f"| {p['label']} | {cells(p['reasoning'])} |" for p in rows]
    return "\n".join(lines) + "\n"


def plot(payload, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = list(payload["originals"])
    fig, axes = plt.subplots(1, len(ms), figsize=(5 * len(ms) + 1.8, 4.2), squeeze=False)
    for ax, m in zip(axes[0], ms):
        colours = plt.get_cmap("tab20").colors
        for k, variant in enumerate(dict.fromkeys(p["variant"] for p in payload["points"])):
            pts = sorted(
                (p["metrics"]["washed_still"], p["metrics"]["controls_kept"], p["knob"])
                for p in payload["points"]
                if p["variant"] == variant and str(p["m"]) == m and "error" not in p
            )
            if pts:
                style = dict(color=colours[k % len(colours)], marker="os^vDP*X"[k % 8])
                ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], "-", label=variant, **style)
                for x, y, s in pts:
                    ax.annotate(f"{s:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        original = payload["originals"][m]["metrics"]["controls_kept"]
        ax.axhline(0.9 * original, color="grey", ls=":", lw=1, label="90% of controls")
        ax.axvline(0.10, color="grey", ls="--", lw=1, label="10% still produced")
        ax.set(title=f"m = {m} washed facts", xlabel="washed facts still produced", ylabel="controls kept")
        kept = [p["metrics"]["controls_kept"] for p in payload["points"] if str(p["m"]) == m and "error" not in p]
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(max(0.0, min(kept + [0.9 * original]) - 0.05), 1.02)  # the frontier, not the empty corner
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
