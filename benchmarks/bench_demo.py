"""Benchmark: what ``law-fast demo`` prints on a fresh machine, and how much it varies.

Runs the demo (the README's first command) several times, each in a fresh process with an empty
cache folder (``LAW_FAST_CACHE``: nothing reused — the default corpus, its statistics and the
GGUF conversion are made anew, as on a new machine), with the given thread counts, parses the
before/after table and writes every run's numbers and the spread (min/max per row) to
``benchmarks/results/<name>.json``.  The README's demo table is the first run's.

    python benchmarks/bench_demo.py                      # 2 runs with 2 threads, 1 run with 1 thread
    python benchmarks/bench_demo.py --threads 2,2,1
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, write_result  # noqa: E402

ROW = re.compile(r"^(\S.*?)\s{2,}(-?[\d.]+)(%?)\s+(-?[\d.]+)(%?)\s*(\(.*\))?$")


def parse_table(text: str) -> dict[str, dict]:
    """{row title: {"before", "after"}} of the demo's before/after table (percentages as fractions)."""
    rows = {}
    for line in text.splitlines():
        match = ROW.match(line.rstrip())
        if match:
            title, before, pct_b, after, pct_a, _ = match.groups()
            scale_b, scale_a = (0.01 if pct_b else 1.0), (0.01 if pct_a else 1.0)
            rows[title.strip()] = {
                "before": round(float(before) * scale_b, 6),
                "after": round(float(after) * scale_a, 6),
            }
    return rows


def run_demo(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix="law_fast_demo_cache_") as cache:
        env["LAW_FAST_CACHE"] = cache
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "law_fast.cli", "demo"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"law-fast demo failed ({out.returncode}):\n{out.stderr[-3000:]}")
    table = parse_table(out.stdout)
    if not table:
        raise SystemExit(f"no table found in the demo's output:\n{out.stdout[-3000:]}")
    return {"threads": threads, "seconds": seconds, "table": table, "stdout": out.stdout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="2,2,1", help="comma-separated thread count per run")
    parser.add_argument("--name", default="demo_cpu")
    args = parser.parse_args()
    runs = []
    for threads in (int(t) for t in args.threads.split(",")):
        run = run_demo(threads)
        runs.append(run)
        print(
            f"{threads} thread(s), {run['seconds']:.0f} s: "
            + ", ".join(f"{k}: {v['after']:.3f}" for k, v in run["table"].items()),
            flush=True,
        )
    titles = list(runs[0]["table"])
    spread = {
        title: {
            "after_min": min(r["table"][title]["after"] for r in runs),
            "after_max": max(r["table"][title]["after"] for r in runs),
            "before_min": min(r["table"][title]["before"] for r in runs),
            "before_max": max(r["table"][title]["before"] for r in runs),
        }
        for title in titles
    }
    identical = all(r["table"] == runs[0]["table"] for r in runs)
    print(f"identical tables: {identical}")
    print(
        write_result(
            args.name,
            {"benchmark": "law-fast demo on fresh caches", "runs": runs, "spread": spread, "identical": identical},
        )
    )


if __name__ == "__main__":
    main()
