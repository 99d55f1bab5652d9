"""Benchmark (issue 14): the whole washing pipeline at m facts on the scale testbed — seconds per 1k
facts per stage and peak memory, so that every cost that grows with m shows up.

Testbed: ``law_fast.testing.synthetic_facts`` (deterministic invented facts) and ``make_scale_model``
(a random Llama, hidden 64, MLP 256, 6 blocks; GPT-2's BPE from ../shared/data cut to its first --vocab
tokens, 2,048 by default: with all 50,257 the output head is most of the z* cost of so small a model),
``only_known=False`` (a random model knows none of them), LaW on --layers, statistics from
--stats-docs WikiText-2 documents (cached).  Each m runs in its own process (its peak RSS is its own),
with its workdir under --workdir, so a stopped run resumes: a finished m is not rerun, and an
unfinished one continues from its checkpoints (z* chunks, every layer's stages).

    python benchmarks/bench_scale.py --m 1000,10000             # one after the other, each in a subprocess
    python benchmarks/bench_scale.py --m 1000 --processes 2     # the same wash under torchrun (gloo)

Writes benchmarks/results/<name>.json (default scale_cpu) with, per m: the stage seconds, seconds per
1k facts, peak RSS (MB) and the bytes per fact of RSS above the smallest m's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, code_key, read_json, sha, write_json, write_result  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "data"
TOKENIZER = DATA / "tokenizers" / "gpt2"


def one_run(m: int, args) -> tuple[dict, dict]:
    """The wash of m facts in this process (called in a subprocess by main): its row and its deltas."""
    import law_fast as lf
    from law_fast import dist
    from law_fast.testing import gpt2_tokenizer, make_scale_model, synthetic_facts

    dist.init_from_env("cpu")
    tok = gpt2_tokenizer(TOKENIZER, args.vocab)
    model = make_scale_model(len(tok))
    facts = synthetic_facts(m, seed=args.seed)
    layers = tuple(int(x) for x in args.layers.split(","))
    config = lf.WashConfig.create(
        method="law",
        layers=layers,
        only_known=False,
        prune_requests=args.prune,
        mom2_n_samples=args.stats_docs,
        total_iters=args.law_iters,
    )
    started = time.perf_counter()
    result = lf.wash(
        model,
        tok,
        facts,
        config,
        corpus=str(DATA / "wikitext2" / "wiki.test.raw"),
        progress=False,
        workdir=Path(args.workdir) / f"m{m}-p{args.processes}-v{args.vocab}",
        final_check=args.final_check,
    )
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "m": m,
        "processes": dist.world_size(),
        "seconds": seconds,
        "stages_s": dict(result.report.timings_s),
        "stages_memory_mb": dict(result.report.memory_mb),  # resident and peak MB at each stage's end
        "peak_rss_mb": peak_mb,
        "delta_norms": {str(k): float(v.norm()) for k, v in result.deltas.items()},
    }, result.deltas


def one_run_command(processes: int, arguments: list[str]) -> list[str]:
    """The command that runs this script's ``--one`` wash: in this interpreter, or under torchrun (gloo)
    with ``processes`` processes (bench_scale's rows, bench_resume's runs)."""
    if processes == 1:
        return [sys.executable, __file__, *arguments]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    return [*launcher, __file__, *arguments]


def _without_m(argv: list[str]) -> list[str]:
    """The arguments less ``--m`` and its value: the subprocess gets ``--one``, and torchrun's parser
    would take ``--m`` for an abbreviation of its own options (``--module``, ``--master-addr``, ...)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--m":
            skip = True
        elif not a.startswith("--m="):
            out.append(a)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", default="1000,10000", help="numbers of facts, comma-separated")
    parser.add_argument("--layers", default="1,2,3,4,5")
    parser.add_argument("--prune", action="store_true", help="successive elimination on (prunes all: a random model)")
    parser.add_argument("--final-check", action="store_true", help="also the final known-fact check")
    parser.add_argument("--stats-docs", type=int, default=2000)
    parser.add_argument(
        "--vocab", type=int, default=2048, help="tokens of the testbed's BPE (GPT-2's first merges; 50257: all of it)"
    )
    parser.add_argument("--law-iters", type=int, default=100)
    parser.add_argument("--processes", type=int, default=1, help="torchrun --nproc-per-node (gloo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="default: law_fast's cache dir / bench_scale")
    parser.add_argument("--name", default="scale_cpu")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the subprocess's m
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deltas-out", default=None, help=argparse.SUPPRESS)  # bench_resume: the deltas
    args = parser.parse_args(argv)
    if args.workdir is None:
        from law_fast.hf.loading import cache_dir

        args.workdir = str(cache_dir() / "bench_scale")
    if args.one is not None:
        row, deltas = one_run(args.one, args)
        if int(os.environ.get("RANK", "0")) == 0:
            if args.deltas_out:
                import torch

                torch.save(deltas, args.deltas_out)
            write_json(Path(args.out), row)
        return 0
    rows = []
    for m in (int(x) for x in args.m.split(",")):
        setting = {k: getattr(args, k) for k in ("layers", "prune", "final_check", "stats_docs", "vocab", "law_iters")}
        # a row of other settings or other code is not reused
        digest = sha({**setting, "seed": args.seed, "code": code_key("law_fast")})[:16]
        path = Path(args.workdir) / f"row-m{m}-p{args.processes}-{digest}.json"
        row = read_json(path)
        if row is None:
            passed = _without_m(argv if argv is not None else sys.argv[1:])
            cmd = one_run_command(
                args.processes, [*passed, "--one", str(m), "--out", str(path), "--workdir", args.workdir]
            )
            print(f"m = {m}: {' '.join(cmd[2:6])} ...", flush=True)
            subprocess.run(cmd, check=True)
            row = read_json(path)
        rows.append(row)
        per_k = {k: 1000 * v / m for k, v in row["stages_s"].items()}
        print(
            f"m = {m}: {row['seconds']:.0f} s ({1000 * row['seconds'] / m:.1f} s per 1k facts), "
            f"peak RSS {row['peak_rss_mb']:.0f} MB; per 1k: " + ", ".join(f"{k} {v:.1f}" for k, v in per_k.items()),
            flush=True,
        )
    base = rows[0]
    for row in rows[1:]:
        row["rss_bytes_per_fact_above_first"] = (
            (row["peak_rss_mb"] - base["peak_rss_mb"]) * 2**20 / (row["m"] - base["m"])
            if row["m"] != base["m"]
            else None
        )
    payload = {"benchmark": "scale", "settings": vars(args), "rows": rows}
    out = write_result(args.name, json.loads(json.dumps(payload, default=str)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
