"""Benchmark: every washing method on the same known CounterFact facts, one comparison table.

Methods: ``default`` (``WashConfig.preset(model)`` as it is: config.RETENTION_DEFAULT, MEMIT keeping
1,000 names mined from the corpus and the washed facts' neighbourhood prompts, and on SmolLM2 config.SMOLLM2_TARGETS, z* extra steps above loss 3), plain ``law`` and ``memit`` (the closed-form pipeline, config.PLAIN: no names kept, z* of 20 steps)
and the fine-tuning baselines ``ft``, ``me-ft``, ``ft-ul``, ``seul``, ``woh`` (law_fast.baselines), each
with its default settings for the model (``WashConfig.preset`` / ``WashConfig.baseline_preset``).  Model: SmolLM2-135M-Instruct
(the embedded default), on CPU unless ``--device`` says otherwise.

Facts: the first ``--n`` CounterFact facts (``--facts``, default the validation file of
../shared/data) that the model produces before washing and whose answer is not inside the subject,
plus the next ``--controls`` such facts as controls (not washed).  Each method washes the same
facts on the same original weights (the model is reverted exactly between methods) and is
evaluated by ``law_fast.evaluate`` on exactly the facts the original model knew:

    washed Acc / QA-F1   facts.rewrite.acc / .qa_f1        (lower is better)
    paraphrase Acc       facts.paraphrase.acc              (lower is better)
    locality Acc         facts.neighbourhood.acc           (higher is better)
    control Acc          controls.rewrite.acc              (higher is better)
    perplexity           fluency.perplexity, first --ppl-tokens tokens of WikiText-2 test
    reasoning            --reasoning tasks on a seeded --reasoning-limit subset (1,000 items: the
                         standard error, ±1.1-1.6 points, is in the table)
    wash time            wall-clock seconds of law_fast.wash (statistics included; they are cached
                         after the first closed-form method, so memit reuses law's)

Resumable: each row (the original's and each method's, keyed by the law_fast source tree, the method's
config, the facts and the settings) is cached under --workdir; a killed run continues.

    python benchmarks/bench_methods.py                       # N = 64, every method (long: tens of minutes on CPU)
    python benchmarks/bench_methods.py --n 128 --methods law,ft,seul
    python benchmarks/bench_methods.py --quick               # N = 2, tiny settings: checks that everything runs

Writes benchmarks/results/<name>.json (machine, versions, settings, per-method reports) and
<name>.md (the table); default name ``methods_smollm2`` (``methods_smollm2_quick`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, RESULTS_DIR, code_key, read_json, sha, write_json, write_result  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "data"
ALL_METHODS = ("default", "law", "memit", "ft", "me-ft", "ft-ul", "seul", "woh")
COLUMNS = [  # (title, EvalReport.flat() key)
    ("washed Acc", "facts.rewrite.acc"),
    ("washed QA-F1", "facts.rewrite.qa_f1"),
    ("paraphrase Acc", "facts.paraphrase.acc"),
    ("locality Acc", "facts.neighbourhood.acc"),
    ("control Acc", "controls.rewrite.acc"),
    ("perplexity", "fluency.perplexity"),
]

log = logging.getLogger("bench_methods")


def select_facts(model, tok, path: Path, n: int, n_controls: int, scan_batch: int = 64):
    """The first ``n`` + ``n_controls`` facts of ``path`` the model produces (answer not in the subject)."""
    import law_fast as lf
    from law_fast.washing.elimination import known_facts

    candidates = [f for f in lf.load_facts(path) if f.answer.lower() not in f.subject.lower()]
    chosen = []
    for start in range(0, len(candidates), scan_batch):
        chunk = candidates[start : start + scan_batch]
        known, _ = known_facts(model, tok, chunk)
        chosen += [f for f, k in zip(chunk, known) if k]
        if len(chosen) >= n + n_controls:
            break
    if len(chosen) < n + n_controls:
        raise SystemExit(f"{path}: only {len(chosen)} known facts, {n + n_controls} needed")
    return chosen[:n], chosen[n : n + n_controls], start + len(chunk)


def method_config(method: str, model, args):
    from law_fast.config import BASELINE_METHODS, PLAIN, WashConfig

    if method in BASELINE_METHODS:
        overrides = (
            dict(guard_texts=2, guard_max_length=32, ft_max_steps=2, woh_reinforce_epochs=1) if args.quick else {}
        )
        return WashConfig.baseline_preset(method, model, **overrides)
    overrides = dict(mom2_n_samples=args.stats_samples)
    if args.quick:
        overrides.update(v_num_grad_steps=5, total_iters=20)
    if method == "default":
        return WashConfig.preset(model, **overrides)
    return WashConfig.preset(model, method=method, **PLAIN, **overrides)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="washed facts (default 64)")
    parser.add_argument("--controls", type=int, default=32, help="control facts, not washed (default 32)")
    parser.add_argument(
        "--methods", default=",".join(ALL_METHODS), help=f"comma-separated subset of {','.join(ALL_METHODS)}"
    )
    parser.add_argument(
        "--model", default=None, help="model directory or .gguf (default: embedded SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--facts", type=Path, default=DATA / "counterfact" / "counterfact-val.json")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DATA / "wikitext2" / "wiki.test.raw",
        help="covariance statistics, the perplexity guard and the perplexity metric",
    )
    parser.add_argument(
        "--stats-samples", type=int, default=2000, help="corpus documents for the covariance (law, memit)"
    )
    parser.add_argument("--ppl-tokens", type=int, default=8192, help="tokens of --corpus scored for perplexity")
    parser.add_argument("--reasoning", default="lambada,hellaswag,arc_easy", help="reasoning tasks ('' for none)")
    parser.add_argument("--reasoning-limit", type=int, default=1000, help="items per reasoning task")
    parser.add_argument("--workdir", type=Path, default=None, help="row cache (default: law_fast's cache dir)")
    parser.add_argument("--quick", action="store_true", help="N = 2, 2 controls, tiny settings, no reasoning")
    parser.add_argument("--name", default=None, help="result file name (default methods_smollm2[_quick])")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.controls, args.ppl_tokens, args.reasoning, args.stats_samples = 2, 2, 256, "", 200
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {ALL_METHODS}")
    name = args.name or ("methods_smollm2_quick" if args.quick else "methods_smollm2")
    reasoning = [t for t in args.reasoning.split(",") if t]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import law_fast as lf
    from law_fast.corpus import load_corpus
    from law_fast.eval.report import EvalReport, evaluate
    from law_fast.hf.adapters import model_fingerprint
    from law_fast.hf.loading import cache_dir

    model, tok = lf.load_model(args.model, device=args.device)
    washed, controls, scanned = select_facts(model, tok, args.facts, args.n, args.controls)
    print(
        f"{len(washed)} washed + {len(controls)} control facts (first known ones among {scanned} scanned)", flush=True
    )
    ppl_corpus = load_corpus(str(args.corpus))

    def measure(label: str, subset=None):
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
            label=label,
            progress=False,
        )

    workdir = args.workdir or cache_dir() / "bench_methods"
    base_key = {
        "tree": code_key("law_fast"),
        "model": model_fingerprint(model),
        "washed": [f.case_id for f in washed],
        "controls": [f.case_id for f in controls],
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("methods", "name", "workdir")},
    }
    path = workdir / f"original-{sha(base_key)}.json"
    if (row := read_json(path)) is None:
        t = time.perf_counter()
        report = measure("original")
        row = {"method": "original", "wash_s": None, "eval_s": time.perf_counter() - t, "report": report.to_dict()}
        write_json(path, row)
    original = EvalReport.from_dict(row["report"])
    rows = [{**row, "metrics": original.flat()}]
    print(f"original evaluated in {rows[0]['eval_s']:.0f} s", flush=True)
    for method in methods:
        config = method_config(method, model, args)
        path = workdir / f"{method}-{sha({**base_key, 'config': config.to_dict()})}.json"
        if (row := read_json(path)) is None:
            t = time.perf_counter()
            result = lf.wash(model, tok, washed, config, corpus=str(args.corpus), progress=False)
            wash_s = time.perf_counter() - t
            try:
                t = time.perf_counter()
                report = measure(method, subset=original)
                eval_s = time.perf_counter() - t
            finally:
                result.revert()
            training = result.report.get("training", {})
            row = {
                "method": method,
                "wash_s": wash_s,
                "eval_s": eval_s,
                "config": result.config.to_dict(),
                "wash_report": result.report.to_dict(),
                "report": report.to_dict(),
                "guard_stopped": training.get("guard", {}).get("stopped"),
            }
            write_json(path, row)
        row["metrics"] = EvalReport.from_dict(row["report"]).flat()
        rows.append(row)
        print(
            f"{method}: wash {row['wash_s']:.0f} s, eval {row['eval_s']:.0f} s, "
            f"washed Acc {row['metrics'].get('facts.rewrite.acc')}",
            flush=True,
        )

    columns = COLUMNS + [(f"{task} acc", f"reasoning.{task}.acc") for task in sorted(original.reasoning)]
    table = markdown(rows, columns, args, len(washed), len(controls))
    payload = {
        "benchmark": "methods",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "n_washed": len(washed),
        "n_controls": len(controls),
        "washed_ids": [f.case_id for f in washed],
        "control_ids": [f.case_id for f in controls],
        "columns": dict(columns),
        "table": [
            {"method": r["method"], "wash_s": r["wash_s"], **{t: r["metrics"].get(k) for t, k in columns}} for r in rows
        ],
        "runs": rows,
    }
    path = write_result(name, json.loads(json.dumps(payload, default=str)))
    (RESULTS_DIR / f"{name}.md").write_text(table)
    print(table)
    print(f"wrote {path} and {RESULTS_DIR / (name + '.md')}")
    return 0


def markdown(rows, columns, args, n_washed: int, n_controls: int) -> str:
    def cell(metrics, key):
        value = metrics.get(key)
        if value is None:
            return "—"
        if key == "fluency.perplexity":
            return f"{value:.2f}"
        error = metrics.get(f"{key}_stderr")
        return f"{100 * value:.1f}%" + ("" if error is None else f" ± {100 * error:.1f}")

    lines = [
        f"Washing methods on {n_washed} known CounterFact facts ({n_controls} controls), "
        f"{'quick settings' if args.quick else 'default settings per method'}.",
        "",
        "| method | " + " | ".join(t for t, _ in columns) + " | wash time (s) |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for r in rows:
        wash = "—" if r["wash_s"] is None else f"{r['wash_s']:.1f}"
        note = " (guard stopped)" if r.get("guard_stopped") else ""
        lines.append(
            f"| {r['method']}{note} | " + " | ".join(cell(r["metrics"], k) for _, k in columns) + f" | {wash} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
