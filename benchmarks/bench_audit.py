"""Benchmark: which method really forgets? ``law_fast.audit`` after washes by each method (issue 17).

Model: SmolLM2-135M-Instruct.  Facts: the sets of the retention frontier (bench_retention.py: all
three CounterFact files in a seeded order, the model's known facts, sets fixed for every m): the first
m known facts are washed; of its 256 controls (known facts not washed, disjoint subjects), the first 128
are the audit's ``demos`` (few-shot context, relearning, distractors) and the other 128 are audited as
controls — what a method must not wash.  Per (method, m): the wash, then the audit of the washed facts
and of the controls on the washed model; the original model is audited once per m.

Methods (--methods): default (``WashConfig.preset``: MEMIT keeping names mined from the corpus and the
washed facts' neighbourhood prompts), plain law
and memit (no names kept), and the fine-tuning baselines ft-ul, seul, woh (their presets).  Every point is cached (keyed by the law_fast source tree, the method's config, the
sets, the audit settings): a stopped run continues.

    python benchmarks/bench_audit.py --m 64,256
    python benchmarks/bench_audit.py --quick        # m = 4, 8 controls, 2 methods, few probes' steps

Writes benchmarks/results/<name>.json, .md and .png (default ``audit_smollm2``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_retention import FACT_FILES, fact_sets, job_dir, source_tree  # noqa: E402
from common import read_json, sha, write_json, write_result  # noqa: E402

METHODS = ("default", "law", "memit", "ft-ul", "seul", "woh")
CLOSED_FORM = ("default", "law", "memit")  # through the MEMIT/LaW pipeline (the rest are the baselines)
WIKI = FACT_FILES[0].parents[1] / "wikitext2"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", default="64,256", help="numbers of washed facts (nested sets)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--stats-samples", type=int, default=2000, help="WikiText-2 documents for the statistics")
    parser.add_argument("--seed", type=int, default=0, help="order of the CounterFact cases")
    parser.add_argument("--workdir", type=Path, default=None, help="cache (default: law_fast's cache dir)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    ms = sorted(int(x) for x in args.m.split(","))
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {METHODS}")
    n_controls = 256
    if args.quick:
        ms, methods, n_controls, args.stats_samples = [4], methods[:2], 16, 200
    name = args.name or ("audit_smollm2_quick" if args.quick else "audit_smollm2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import law_fast as lf
    from law_fast.config import PLAIN
    from law_fast.eval.audit import AuditConfig, AuditReport, audit, audit_table
    from law_fast.hf.adapters import model_fingerprint
    from law_fast.hf.loading import cache_dir

    audit_config = AuditConfig(relearn_steps=2, samples=2) if args.quick else AuditConfig()
    workdir = args.workdir or cache_dir() / "bench_retention"  # shares the known-fact scan and z* with it
    model, tok = lf.load_model(None)
    fingerprint = model_fingerprint(model)
    tree = source_tree()
    n_retain = 128 if not args.quick else 8  # the retention sets' pool: not used here, but part of the same sets
    washed_all, controls, _, scanned = fact_sets(
        lf, model, tok, fingerprint, workdir, args.seed, ms, n_controls, n_retain
    )
    demos, audited_controls = controls[: n_controls // 2], controls[n_controls // 2 :]
    wiki = str(WIKI / "wiki.test.raw")
    base = {
        "tree": tree,
        "model": fingerprint,
        "audit": audit_config.__dict__,
        "controls": [f.case_id for f in controls],
    }
    points_dir = workdir / "audit_points"

    def audited(kind: str, m: int, key: dict, run) -> dict:
        path = points_dir / f"{kind}-m{m}-{sha(key)}.json"
        if (cached := read_json(path)) is None:
            t = time.perf_counter()
            cached = run()
            cached["seconds"] = time.perf_counter() - t
            write_json(path, cached)
        return cached

    def both():
        return {
            "washed": audit(model, tok, washed, demos=demos, config=audit_config).to_dict(),
            "controls": audit(model, tok, audited_controls, demos=demos, config=audit_config).to_dict(),
        }

    rows = []
    for m in ms:
        washed = washed_all[:m]
        ids = [f.case_id for f in washed]
        original = audited("original", m, {**base, "washed": ids}, both)
        rows.append({"method": "original", "m": m, **original})
        print(f"original m={m}: {summary(original)}", flush=True)
        for method in methods:
            if method == "default":
                config = lf.WashConfig.preset(model, mom2_n_samples=args.stats_samples)
            elif method in ("law", "memit"):
                config = lf.WashConfig.preset(model, method=method, mom2_n_samples=args.stats_samples, **PLAIN)
            else:
                config = lf.WashConfig.baseline_preset(method, model)
            if args.quick:
                config = config.replace(v_num_grad_steps=3, total_iters=10) if method in CLOSED_FORM else config

            def run(config=config, method=method):
                extra = {"workdir": job_dir(workdir, washed)} if method in CLOSED_FORM else {}
                result = lf.wash(model, tok, washed, config, corpus=wiki, progress=False, **extra)
                try:
                    out = both()
                    out["still_known_after"] = result.report.still_known_after
                    out["wash_timings_s"] = result.report.timings_s
                finally:
                    result.revert()
                return out

            point = audited(method, m, {**base, "washed": ids, "config": config.to_dict()}, run)
            rows.append({"method": method, "m": m, **point})
            print(f"{method} m={m}: {summary(point)}", flush=True)

    payload = {
        "benchmark": "audit",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "audit_config": audit_config.__dict__,
        "model_fingerprint": fingerprint,
        "law_fast_tree": tree,
        "washed_ids": [f.case_id for f in washed_all],
        "demo_ids": [f.case_id for f in demos],
        "control_ids": [f.case_id for f in audited_controls],
        "rows": rows,
    }
    out = write_result(name, payload)
    md = [f"# Audit: which method really forgets (SmolLM2-135M-Instruct, {scanned} CounterFact cases scanned)\n"]
    for m in ms:
        mine = [r for r in rows if r["m"] == m]
        labels = [r["method"] for r in mine]
        md.append(f"\n## m = {m}: washed facts still found\n")
        md.append(audit_table([AuditReport.from_dict(r["washed"]) for r in mine], labels))
        md.append(f"\n\n## m = {m}: controls still found (should stay)\n")
        md.append(audit_table([AuditReport.from_dict(r["controls"]) for r in mine], labels))
    (out.parent / f"{name}.md").write_text("\n".join(md) + "\n")
    plot(rows, ms, out.parent / f"{name}.png")
    print("\n".join(md))
    print(f"wrote {out}")
    return 0


def summary(point: dict) -> str:
    return ", ".join(f"{p} {100 * b['found']:.0f}%" for p, b in point["washed"]["probes"].items())


def plot(rows, ms, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(ms), 1, figsize=(10, 3.4 * len(ms)), squeeze=False)
    for ax, m in zip(axes[:, 0], ms):
        mine = [r for r in rows if r["m"] == m]
        probes = list(mine[0]["washed"]["probes"])
        width = 0.8 / len(mine)
        for j, r in enumerate(mine):
            values = [r["washed"]["probes"][p]["found"] for p in probes]
            ax.bar([i + j * width for i in range(len(probes))], values, width, label=r["method"])
        for i, p in enumerate(probes):
            ax.hlines(mine[0]["washed"]["probes"][p]["chance"], i - 0.1, i + 0.9, colors="black", linestyles="dashed")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(probes))], probes)
        ax.set_ylim(0, 1)
        ax.set_title(f"m = {m}: washed facts still found by each probe (dashed: chance)")
        ax.legend(fontsize=7, ncol=len(mine))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(json.dumps({"plot": str(path)}))


if __name__ == "__main__":
    raise SystemExit(main())
