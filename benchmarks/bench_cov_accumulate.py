"""Benchmark: law_fast::cov_accumulate_ on CPU (C++ kernel) vs the obvious ``cov.addmm_(x.T, x)``.

Both run in the same process, interleaved (op, baseline, op, baseline, ...), on the same x,
each into its own fp32 accumulator.  Rates count the full-GEMM work, 2·n·f² FLOPs, for BOTH
(the op does about half of that: n·f²·(1 + 0.75·256/f) FLOPs on the diagonal and upper blocks),
so the rates compare directly and their ratio is the speed-up.  On a shared or noisy machine the
per-round ratio (op and baseline timed back to back) is the steadier figure: its median is
reported next to the ratio of the medians.  A square torch.mm gives the
machine's GEMM rate for reference.

    python benchmarks/bench_cov_accumulate.py                 # f = 1536, 4096, 6400; n = 4096
    python benchmarks/bench_cov_accumulate.py --sizes 1536 --repeats 3

Writes benchmarks/results/cov_accumulate_cpu.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, timeit, write_result  # noqa: E402

import law_fast.ops as ops  # noqa: E402


def gemm_rate(size: int = 2048, repeats: int = 5) -> dict:
    """GFLOP/s of a square fp32 torch.mm (the machine's BLAS rate)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    timing = timeit(lambda: torch.mm(a, b), repeats=repeats, warmup=1)
    flops = 2 * size**3
    return {"size": size, "flops": flops, "seconds": timing, "gflops_median": flops / timing["median"] / 1e9}


def bench_size(n: int, f: int, repeats: int, warmup: int) -> dict:
    generator = torch.Generator().manual_seed(f)
    x = torch.randn(n, f, generator=generator)
    cov_op = torch.zeros(f, f)
    cov_baseline = torch.zeros(f, f)
    count = torch.zeros((), dtype=torch.int64)

    timings = interleaved(
        {
            "law_fast": lambda: ops.cov_accumulate_(x, cov_op, count),
            "addmm_": lambda: cov_baseline.addmm_(x.T, x),
        },
        repeats=repeats,
        warmup=warmup,
    )
    # same number of calls on both sides: the accumulators must agree
    relative_error = ((cov_op - cov_baseline).abs().max() / cov_baseline.abs().max()).item()
    assert relative_error < 1e-4, f"f={f}: op and baseline disagree (relative error {relative_error:.2e})"

    flops = 2 * n * f * f
    row = {"n": n, "f": f, "flops_per_call": flops, "relative_error_vs_baseline": relative_error}
    for name, timing in timings.items():
        row[name] = {"seconds": timing, "gflops_median": flops / timing["median"] / 1e9}
    row["speedup_ratio_of_medians"] = timings["addmm_"]["median"] / timings["law_fast"]["median"]
    # op and baseline timed back to back in each round: the ratio per round and its median
    ratios = [b / a for a, b in zip(timings["law_fast"]["samples"], timings["addmm_"]["samples"])]
    row["speedup_per_round"] = ratios
    row["speedup_per_round_median"] = statistics.median(ratios)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1536, 4096, 6400], help="feature sizes f")
    parser.add_argument("--n", type=int, default=4096, help="rows of x per call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--name", default="cov_accumulate_cpu", help="results/<name>.json")
    args = parser.parse_args(argv)

    report = ops.backend_report()
    if report["ops"]["cov_accumulate_"]["cpu"] != "cpp":
        print(
            f"warning: the CPU op is served by {report['ops']['cov_accumulate_']['cpu']!r}, not the C++ "
            f"kernel (native module: {report['native']})",
            file=sys.stderr,
        )

    machine_gemm = gemm_rate()
    print(f"machine GEMM rate (fp32 {machine_gemm['size']}³ torch.mm): {machine_gemm['gflops_median']:.1f} GFLOP/s")
    rows = []
    print(
        f"{'f':>6} {'n':>6} {'law_fast s':>11} {'addmm_ s':>10} {'law_fast GF/s':>14} {'addmm_ GF/s':>12} "
        f"{'speed-up':>9} {'per-round median':>17}  per round"
    )
    for f in args.sizes:
        row = bench_size(args.n, f, args.repeats, args.warmup)
        rows.append(row)
        print(
            f"{f:>6} {args.n:>6} {row['law_fast']['seconds']['median']:>11.4f} "
            f"{row['addmm_']['seconds']['median']:>10.4f} {row['law_fast']['gflops_median']:>14.1f} "
            f"{row['addmm_']['gflops_median']:>12.1f} {row['speedup_ratio_of_medians']:>8.2f}x "
            f"{row['speedup_per_round_median']:>16.2f}x  " + " ".join(f"{r:.2f}" for r in row["speedup_per_round"]),
            flush=True,
        )

    path = write_result(
        args.name,
        {
            "benchmark": "cov_accumulate_ CPU: law_fast C++ kernel vs cov.addmm_(x.T, x)",
            "dtype": {"x": "float32", "cov": "float32"},
            "flop_count": "2*n*f^2 for both (full-GEMM equivalent), although the op computes ~half",
            "speedup": "addmm_ seconds / law_fast seconds: ratio of the medians, and median of the per-round ratios",
            "served_by": report["ops"]["cov_accumulate_"],
            "machine_gemm": machine_gemm,
            "results": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
