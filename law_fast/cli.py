"""Command line: ``law-fast demo | wash | eval | compare | stats | info``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from importlib import resources
from pathlib import Path

from .config import AUDIT_PROBES, METHODS

log = logging.getLogger(__name__)


def _layers(text: str) -> tuple[int, ...]:
    """ "4-8" or "4,5,6" or "1-2,7" → (4, 5, ...): block indices, ascending ranges, at least one."""
    out: list[int] = []
    for part in text.split(","):
        bounds = part.strip().split("-")
        if not all(b.strip().isdigit() for b in bounds) or len(bounds) > 2:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected block indices such as 4-8 or 4,6 or 1-2,7 (got the part {part.strip()!r})"
            )
        low, high = int(bounds[0]), int(bounds[-1])
        if high < low:
            raise argparse.ArgumentTypeError(f"{text!r}: the range {part.strip()!r} is empty (write low-high)")
        out.extend(range(low, high + 1))
    return tuple(out)


def _count(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small (at least {minimum})")
        return value

    return parse


def _config(args, model):
    from .config import WashConfig

    given = WashConfig.from_json(args.config) if getattr(args, "config", None) else None
    cfg = WashConfig.for_method(model, given, getattr(args, "method", None) or None)
    changes = {}
    if getattr(args, "layers", None):
        changes["layers"] = args.layers
    if getattr(args, "corpus", None):
        changes["corpus"] = args.corpus
    if getattr(args, "samples", None):
        changes["mom2_n_samples"] = args.samples
    if getattr(args, "all_facts", False):
        changes["only_known"] = False
    return cfg.replace(**changes) if changes else cfg


def demo_facts():
    from .facts import load_facts

    data = resources.files("law_fast") / "data"
    with resources.as_file(data / "demo_wash.jsonl") as w, resources.as_file(data / "demo_control.jsonl") as c:
        return load_facts(w), load_facts(c)


FLUENCY_PROMPTS = ("The weather today is", "My favourite book is about", "In the morning, I usually")


def cmd_demo(args) -> int:
    from .eval.report import evaluate
    from .hf.generate import greedy_continuations, sample_continuations
    from .hf.loading import DEFAULT_MODEL_NAME
    from .washing.api import wash
    from .washing.result import check_output_dir

    t0 = time.perf_counter()
    model, tok = _load(args, args.model)
    if args.out:
        check_output_dir(args.out, args.overwrite, model)  # before the work, not after it
    washed, control = demo_facts()
    held_out = [
        p + c
        for p, c in zip(FLUENCY_PROMPTS * 3, sample_continuations(model, tok, FLUENCY_PROMPTS * 3, 48, 40, seed=99))
    ]

    def measure(subset=None):
        # the same metrics as `law-fast eval`; after the wash, on the facts the original model knew
        report = evaluate(
            model,
            tok,
            facts=washed,
            controls=control,
            corpus=held_out,
            known_only=subset is None,
            subset=subset,
            progress=False,
        )
        return report, greedy_continuations(model, tok, FLUENCY_PROMPTS, max_new_tokens=16)

    before, gens_before = measure()
    cfg = _config(args, model)
    result = wash(model, tok, washed, cfg)
    after, gens_after = measure(subset=before)
    b, a = before.flat(), after.flat()
    n_facts, n_controls = len(before.knowledge["facts"]["case_ids"]), len(before.knowledge["controls"]["case_ids"])
    rows = [
        ("washed facts: accuracy", "facts.rewrite.acc", f"({n_facts} facts the model knew)"),
        ("washed facts: QA-F1", "facts.rewrite.qa_f1", ""),
        ("washed facts: paraphrase accuracy", "facts.paraphrase.acc", ""),
        ("washed facts: answer NLL (1st token)", "facts.rewrite.nll_first_token", "(higher = more forgotten)"),
        ("control facts: accuracy", "controls.rewrite.acc", f"({n_controls} facts, not washed)"),
        ("control facts: paraphrase accuracy", "controls.paraphrase.acc", ""),
        ("fluency: perplexity (held-out)", "fluency.perplexity", ""),
    ]
    print()
    title = DEFAULT_MODEL_NAME if args.model is None else Path(result.report.model).name
    print(f"law_fast demo — {title} — method {cfg.method}, layers {list(cfg.layers)}")
    print(f"{'':38s}{'before':>10s}{'after':>10s}")
    for title, key, note in rows:
        if key in b:
            pct = key.endswith(("acc", "qa_f1"))
            fmt = (lambda v: f"{v:>10.1%}") if pct else (lambda v: f"{v:>10.2f}")
            print(f"{title:38s}{fmt(b[key])}{fmt(a[key]) if key in a else '—':>10s}   {note}".rstrip())
    for prompt, gb, ga in zip(FLUENCY_PROMPTS, gens_before, gens_after):
        print(f"  {prompt!r}\n     before: {gb!r}\n     after:  {ga!r}")
    print("stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.report["timings_s"].items()))
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.out:
        result.save(args.out, overwrite=args.overwrite)
        print(f"saved washed model, deltas and report to {args.out}")
    return 0


def _task_limits(reasoning: str | None, limit: int | None) -> tuple[list[str], int | dict[str, int] | None]:
    """ "lambada,hellaswag,gsm8k:50" and --limit 200 → (tasks, {"default": 200, "gsm8k": 50})."""
    tasks, limits = [], {}
    for part in (reasoning or "").split(","):
        if not part.strip():
            continue
        name, _, count = part.partition(":")
        tasks.append(name.strip())
        if count.strip():
            if not count.strip().isdigit() or int(count) < 1:
                raise ValueError(f"--reasoning: {part!r}: the limit after ':' must be a positive integer")
            limits[name.strip()] = int(count)
    if not limits:
        return tasks, limit
    if limit is not None:
        limits["default"] = limit
    return tasks, limits


def cmd_eval(args) -> int:
    from .eval.compare import text_table
    from .eval.report import EvalReport, evaluate
    from .facts import load_facts

    tasks, limit = _task_limits(args.reasoning, args.limit)
    if not (args.facts or args.controls or args.corpus or tasks or args.entropy):
        raise ValueError("nothing to evaluate: give --facts, --controls, --corpus, --reasoning and/or --entropy")
    if args.known_only and args.subset:
        raise ValueError(
            "--known-only and --subset exclude each other (use --known-only on the original model, "
            "--subset ITS_REPORT.json on the washed one)"
        )
    t0 = time.perf_counter()
    model, tok = _load(args, args.model)
    facts = load_facts(args.facts, format=args.format, limit=args.facts_limit) if args.facts else None
    controls = load_facts(args.controls, format=args.format, limit=args.facts_limit) if args.controls else None
    subset = EvalReport.from_json(args.subset) if args.subset else None
    paths = {}
    for item in args.task_file or []:
        task, sep, path = item.partition("=")
        if not sep or not task.strip() or not path.strip():
            raise ValueError(f"--task-file {item!r}: expected TASK=PATH, e.g. hellaswag=my/hellaswag_val.jsonl")
        paths[task.strip()] = path.strip()
    report = evaluate(
        model,
        tok,
        facts=facts,
        controls=controls,
        corpus=args.corpus,
        reasoning=tasks,
        limit=limit,
        seed=args.seed,
        batch_size=args.batch_size,
        known_only=args.known_only,
        subset=subset,
        ppl_window=args.window,
        ppl_stride=args.stride,
        ppl_max_tokens=args.ppl_tokens or None,
        entropy=args.entropy,
        reasoning_paths=paths,
        data_dir=args.data_dir,
        gsm8k_fewshot=args.gsm8k_fewshot,
        use_lm_eval=args.lm_eval,
        label=args.label or "",
    )
    print(text_table([report]))
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.out:
        report.to_json(args.out)
        print(f"report written to {args.out}")
    return 0


def cmd_compare(args) -> int:
    from .eval.compare import markdown_table, plot_comparison, text_table
    from .eval.report import EvalReport

    kinds = {json.loads(Path(p).read_text(encoding="utf-8")).get("kind") == "audit" for p in args.reports}
    if kinds == {True}:
        return _compare_audits(args)
    if len(kinds) > 1:
        raise ValueError("compare takes evaluation reports or audit reports, not both at once")
    reports = [EvalReport.from_json(path) for path in args.reports]
    labels = args.labels.split(",") if args.labels else None
    if labels is None:  # default: the report's label, or the file name when labels collide
        names = [r.name for r in reports]
        if len(set(names)) < len(names):
            labels = [Path(p).stem for p in args.reports]
    print(text_table(reports, labels))
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(reports, labels), encoding="utf-8")
        print(f"markdown table written to {args.markdown}")
    if args.plot:
        plot_comparison(reports, args.plot, labels)
        print(f"bar chart written to {args.plot}")
    return 0


def _compare_audits(args) -> int:
    from .eval.audit import AuditReport, audit_table

    reports = [AuditReport.from_json(path) for path in args.reports]
    labels = args.labels.split(",") if args.labels else [Path(p).stem for p in args.reports]
    table = audit_table(reports, labels)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
        print(f"markdown table written to {args.markdown}")
    if args.plot:
        raise ValueError("--plot draws evaluation reports; an audit report has its own (law-fast audit --plot)")
    return 0


def cmd_audit(args) -> int:
    from .eval.audit import PROBES, audit, plot_audit
    from .facts import load_facts

    model, tok = _load(args, args.model)
    original = _load(args, args.original)[0] if args.original else None
    facts = load_facts(args.facts, format=args.format, limit=args.facts_limit)
    demos = load_facts(args.demos, format=args.format) if args.demos else ()
    probes = tuple(p for p in args.probes.split(",") if p) if args.probes else PROBES
    report = audit(model, tok, facts, original=original, demos=demos, probes=probes, seed=args.seed)
    report.to_json(args.out)
    summary = report.summary()
    print(summary)
    print(f"audit report written to {args.out}")
    if args.markdown:
        Path(args.markdown).write_text(summary + "\n", encoding="utf-8")
        print(f"markdown summary written to {args.markdown}")
    if args.plot:
        plot_audit(report, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def cmd_wash(args) -> int:
    from . import dist
    from .facts import load_facts
    from .washing.api import wash
    from .washing.result import check_output_dir

    _join(args)  # under torchrun: z*, key moments and checks sharded; rank 0 saves
    model, tok = _load(args, args.model)
    check_output_dir(args.out, args.overwrite, model)  # before the work, not after it
    facts = load_facts(args.facts, format=args.format, limit=args.limit)
    cfg = _config(args, model)
    stats = None
    if args.stats_file:
        from .compat.stats import stats_from_files

        stats = stats_from_files(args.stats_file, model, cfg.layers)
    result = wash(model, tok, facts, cfg, workdir=args.workdir, stats=stats)
    if not result.report.n_washed_requests and not args.allow_nothing:
        raise ValueError(
            f"none of the {len(facts)} facts is produced by the model, so nothing was washed and nothing saved "
            "(--allow-nothing saves the unchanged model anyway)"
        )
    if not dist.is_main():
        return 0
    out = result.save(args.out, overwrite=args.overwrite)
    rep = result.report
    print(
        json.dumps(
            {k: rep.get(k) for k in ("n_facts", "known_before", "n_washed_requests", "still_known_after", "timings_s")},
            indent=2,
        )
    )
    print(f"saved to {out}")
    return 0


def cmd_stats(args) -> int:
    from . import dist
    from .corpus import resolve
    from .hf.adapters import get_adapter
    from .washing.stats import layer_stats

    _join(args)  # under torchrun: the corpus is sharded over the processes
    model, tok = _load(args, args.model)
    corpus = resolve(args.corpus, model, tok, n_samples=args.samples)
    t = time.perf_counter()
    stats = layer_stats(
        model,
        get_adapter(model),
        tok,
        corpus,
        args.layers,
        args.max_length,
        args.batch_tokens,
        args.dtype,
        use_cache=not args.no_cache,
        block_tokens=args.block_tokens,
        checkpoint_every_tokens=args.checkpoint_every,
    )
    if not dist.is_main():
        return 0
    for layer, s in stats.items():
        print(f"layer {layer}: {s.count} tokens, f = {s.sum.shape[0]}, trace(C) = {float(s.cov.trace()):.4g}")
    print(f"{time.perf_counter() - t:.1f} s" + (f" ({dist.world_size()} processes)" if dist.active() else ""))
    if args.export_dir:
        from .compat.stats import export_client_stats

        for path in export_client_stats(
            stats, model, args.export_dir, args.export_for, args.export_dataset, args.export_dtype, args.samples
        ):
            print(f"exported {path}")
    return 0


def cmd_info(args) -> int:
    from . import ops
    from .info import versions

    print(json.dumps({**versions(), **ops.backend_report()}, indent=2, default=str))
    return 0


def _join(args) -> None:
    """Under torchrun: join the process group (law_fast.dist) — a bare --device cuda is this process's GPU."""
    from . import dist

    args.device = dist.local_device(args.device)
    dist.init_from_env(args.device)


def _load(args, source):
    """load_model with the command's --device and --dtype."""
    from .hf.loading import load_model

    return load_model(source, dtype=args.model_dtype, device=args.device)


def _model_options(p, flag: str = "--dtype") -> None:
    """--device and the model's dtype (``flag``: ``stats`` already has a --dtype, its accumulator's)."""
    p.add_argument("--device", default=None, help="where the model runs: cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument(
        flag,
        dest="model_dtype",
        choices=("float32", "float64", "bfloat16", "float16"),
        default=None,
        help="the model's weights (default: float32; in a half-precision model the edited down-projections become float32)",
    )


SHARDED = ("stats", "wash")  # the commands that torchrun shards (law_fast.dist); the others refuse WORLD_SIZE > 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="law-fast", description="Wash facts out of Hugging Face causal LMs (LaW).")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "demo", help="wash built-in facts from the embedded default model and print a before/after table"
    )
    p.add_argument("--model", default=None, help="model directory or .gguf (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--layers", type=_layers, help='e.g. "4-8" or "4,6"')
    p.add_argument("--config", help="WashConfig JSON")
    p.add_argument("--out", help="also save the washed model here")
    p.add_argument("--overwrite", action="store_true")
    _model_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("wash", help="wash the facts of a file out of a model and save the result")
    p.add_argument("--model", default=None)
    p.add_argument("--facts", required=True)
    p.add_argument("--format", default=None, help="facts format (default: detected from the content)")
    p.add_argument("--limit", type=_count(1), default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--method",
        choices=METHODS,
        help="memit, law or a fine-tuning baseline (docs/baselines.md); default: the preset's — memit keeping "
        "names mined from the corpus and the facts' neighbourhood prompts on SmolLM2 and untuned models, "
        "law on GPT2-XL/GPT-J (docs/retention.md)",
    )
    p.add_argument("--layers", type=_layers, help='e.g. "4-8" or "4,6"')
    p.add_argument("--config")
    p.add_argument("--corpus", help="statistics corpus: .txt, .jsonl or hf:NAME[:CONFIG[:SPLIT]] (default: embedded)")
    p.add_argument("--samples", type=_count(1), help="documents sampled from the corpus")
    p.add_argument(
        "--allow-nothing", action="store_true", help="save (exit 0) even when no fact is known, so nothing is washed"
    )
    p.add_argument("--workdir", help="checkpoint z* and every stage here; a rerun after a crash continues (law, memit)")
    p.add_argument(
        "--all-facts",
        action="store_true",
        help="wash every given fact, also those the model does not produce now (only_known=False)",
    )
    p.add_argument(
        "--stats-file",
        nargs="+",
        metavar="PATH",
        help="covariance statistics from MEMIT/EasyEdit .npz files (or folders of them), one per edited layer, "
        "instead of computing them (law, memit; docs/dropin.md)",
    )
    _model_options(p)
    p.set_defaults(func=cmd_wash)

    p = sub.add_parser(
        "audit",
        help="is the knowledge really gone? probes beyond the greedy answer, per fact (docs/audit.md)",
    )
    p.add_argument("--model", default=None, help="the washed model (directory or .gguf)")
    p.add_argument("--original", default=None, help="the model before the wash, audited the same way")
    p.add_argument("--facts", required=True, help="the washed facts")
    p.add_argument("--demos", default=None, help="facts not washed (the controls): few-shot and relearning probes")
    p.add_argument("--format", default=None, help="facts format (default: detected from the content)")
    p.add_argument("--facts-limit", type=_count(1), default=None)
    p.add_argument("--probes", default=None, help="comma-separated (default: all): " + ",".join(AUDIT_PROBES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the audit report (JSON)")
    p.add_argument("--markdown", default=None)
    p.add_argument("--plot", default=None, help="PNG: per probe, original vs washed, with the chance level")
    _model_options(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "stats",
        help="compute (and cache) covariance statistics; an interrupted run resumes",
        description="Covariance statistics of the down-projection inputs of --layers, one pass over "
        "the corpus for all of them; cached per layer, checkpointed, resumed when rerun "
        "with the same arguments (docs/statistics.md).",
    )
    p.add_argument("--model", default=None)
    p.add_argument("--corpus", default=None, help=".txt, .jsonl, .json or hf:NAME[:CONFIG[:SPLIT]] (default: embedded)")
    p.add_argument("--layers", required=True, type=_layers, help='e.g. "4-8" or "4,6"')
    p.add_argument("--samples", type=_count(1), default=None, help="documents sampled from the corpus (default: all)")
    p.add_argument("--max-length", type=_count(2), default=1024)
    p.add_argument("--batch-tokens", type=_count(1), default=4096)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64", help="accumulator dtype")
    p.add_argument(
        "--block-tokens",
        type=_count(1),
        default=None,
        help="accumulate blocks of this many tokens in --dtype, added to a float64 total (e.g. 65536)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_count(0),
        default=1_000_000,
        metavar="TOKENS",
        help="write a resumable checkpoint every this many tokens (0: never)",
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cache files or checkpoints")
    p.add_argument("--export-dir", help="also write the statistics as MEMIT/EasyEdit .npz files under this stats dir")
    p.add_argument("--export-for", choices=("memit", "easyedit"), default="memit", help="whose file naming")
    p.add_argument("--export-dataset", default="wikipedia", help="the dataset name in the file path (mom2_dataset)")
    p.add_argument("--export-dtype", choices=("float32", "float64"), default="float32", help="precision (mom2_dtype)")
    _model_options(p, "--model-dtype")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "eval",
        help="evaluate a model: forgetting, retention, fluency, reasoning (JSON report)",
        description="Knowledge (Acc, QA-F1, first-token NLL on prompts, paraphrases, neighbourhood), "
        "sliding-window perplexity and lm-evaluation-harness-style reasoning scores, "
        "from local files (docs/evaluation.md).",
    )
    p.add_argument("--model", default=None, help="model directory or .gguf (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--facts", help="facts that were washed (any format load_facts reads)")
    p.add_argument("--controls", help="facts that were not washed and must stay")
    p.add_argument("--format", default=None, help="facts format (default: detected from the content)")
    p.add_argument(
        "--facts-limit", type=_count(1), default=None, help="only the first N facts (and controls) of the files"
    )
    p.add_argument(
        "--known-only", action="store_true", help="only the facts this model knows (use on the original model)"
    )
    p.add_argument(
        "--subset", metavar="REPORT", help="evaluate exactly the facts of an earlier report (before vs after)"
    )
    p.add_argument("--corpus", help="perplexity text: .txt, .jsonl, .json or hf:NAME[:CONFIG[:SPLIT]]")
    p.add_argument(
        "--ppl-tokens",
        type=_count(0),
        default=16384,
        help="score the first N corpus tokens (default 16384, a few minutes on a CPU; 0 = all)",
    )
    p.add_argument(
        "--window", type=_count(2), default=None, help="perplexity window in tokens (default: min(1024, context))"
    )
    p.add_argument("--stride", type=_count(1), default=None, help="perplexity stride (default: window // 2)")
    p.add_argument("--entropy", action="store_true", help="also the n-gram entropy of sampled generations")
    p.add_argument(
        "--reasoning", default=None, help='tasks, e.g. "lambada,hellaswag,arc_easy,gsm8k:50" (":N" = own limit)'
    )
    p.add_argument(
        "--limit", type=_count(1), default=None, help="items per reasoning task (fixed-seed subset; default: all)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder of the reasoning files (default: ../shared/data/reasoning)")
    p.add_argument("--task-file", action="append", metavar="TASK=PATH", help="file of one task (repeatable)")
    p.add_argument("--gsm8k-fewshot", type=_count(0), default=8, help="chain-of-thought exemplars for gsm8k (0-8)")
    p.add_argument("--lm-eval", action="store_true", help="score the reasoning tasks with lm-evaluation-harness")
    p.add_argument("--batch-size", type=_count(1), default=16)
    p.add_argument("--label", help="name of this model in compare tables and plots")
    p.add_argument("--out", help="write the JSON report here")
    _model_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="side-by-side table of eval reports; markdown table and PNG bar chart")
    p.add_argument("reports", nargs="+", help="report JSON files written by `law-fast eval --out`")
    p.add_argument("--labels", help="comma-separated names, one per report")
    p.add_argument("--markdown", help="write a markdown table here")
    p.add_argument("--plot", help="write a PNG bar chart here (needs matplotlib)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("info", help="versions, native build and which kernel serves each op")
    p.set_defaults(func=cmd_info)

    args = parser.parse_args(argv)
    if args.command not in SHARDED and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print(
            f"law-fast {args.command}: error: not sharded over processes yet (docs/distributed.md): every one of the "
            f"{os.environ['WORLD_SIZE']} processes would run all of it and write the same outputs; run it in one "
            f"process (torchrun shards: {', '.join(SHARDED)})",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from . import dist

    try:
        code = args.func(args)
        if dist.leave():  # under torchrun: wait for every process, close the group and end without finalisation
            dist.exit_now(code)
        return code
    except Exception as error:  # every failure is one line (exit 2); --debug shows where it came from
        if args.debug:
            raise
        kind = "" if isinstance(error, (ValueError, OSError, NotImplementedError)) else f"{type(error).__name__}: "
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"law-fast {args.command}: error: {kind}{message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
