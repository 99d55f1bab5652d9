"""Benchmark: one LaW iteration on CPU, Gram form (fused ops) vs the reference's autograd-through-K.

Candidates, timed round-robin (common.interleaved) on the same problem:

    gram_fp32 / gram_fp64   law_fast's solver loop body: law_adam_step_ + law_quadratic (the ops
                            as dispatched: the C++ CPU kernels when law_fast._C is built), float32
                            products with float64 reductions / everything float64.  Work per
                            iteration: [G; C]·U = 4·f²·d FLOPs, independent of m.
    torch_default_fp64      the same loop on the pure-torch default kernels (law_*_ref); only for
                            f <= --torch-default-max-f
    autograd_fp64           the reference's structure (law-reference §5.3): zero_grad,
                            loss = −Σ(UᵀK*)² with K* (f×m) float64, backward, torch.optim.Adam step,
                            ρ = tr(UᵀCU)/tr(C) with C float64, radial rescale when ρ > β.  Work:
                            4·m·f·d (forward + gradient) + 2·f²·d + 2·f·d² (ρ) FLOPs.

The Gram form needs G = KᵀK once per layer: its build time (fp32, law_fast.ops.cov_accumulate_
over row chunks of K) is reported separately ("gram_build"), with m·f²(1 + …) FLOPs — to be
amortised over the solver's iterations (1000 in every LaW config).  The same random G and C
serve every candidate; K rows are N(0, 1), C = XᵀX/n + 0.1·I, U₀ = 0.01·N(0, 1).

    python benchmarks/bench_law_iteration.py                      # the default grid (~10 min, 2 threads)
    python benchmarks/bench_law_iteration.py --sizes 1536x576 --m 1000 --repeats 3   # quick

Writes benchmarks/results/<--name>.json (default law_iteration_cpu.json).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, timeit, write_result  # noqa: E402

import law_fast.ops as ops  # noqa: E402
from law_fast.kernels.law_step import law_adam_step_ref, law_quadratic_ref, law_state  # noqa: E402

CHUNK_ROWS = 16384


def parse_size(text: str) -> tuple[int, int]:
    f, d = text.lower().split("x")
    return int(f), int(d)


def random_cov(f: int, seed: int) -> torch.Tensor:
    """(f, f) float64 symmetric positive definite: XᵀX/n + 0.1·I with n = 256 Gaussian rows."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, f, generator=generator, dtype=torch.float64)
    return x.T @ x / 256 + 0.1 * torch.eye(f, dtype=torch.float64)


def build_gram(
    m: int, f: int, seed: int, keep_keys: bool, device: str = "cpu"
) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """G = KᵀK (float32, cov_accumulate_ per chunk of K's N(0, 1) rows) on ``device``, its build
    seconds (chunk generation excluded), and K (m, f) float64 when keep_keys (the autograd baseline)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    gram = torch.zeros(f, f, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    keys = torch.empty(m, f, dtype=torch.float64, device=device) if keep_keys else None
    seconds = 0.0
    for r0 in range(0, m, CHUNK_ROWS):
        chunk = torch.randn(min(CHUNK_ROWS, m - r0), f, generator=generator, device=device)
        seconds += timeit(lambda: ops.cov_accumulate_(chunk, gram, count), repeats=1, warmup=0, device=device)["median"]
        if keys is not None:
            keys[r0 : r0 + chunk.shape[0]] = chunk
    return gram, seconds, keys


class GramLoop:
    """The body of law_optimize's loop on given kernels: adam step, then [G; C]·U."""

    def __init__(self, gram, cov, U0, dtype, quadratic, adam_step):
        self.G, self.C = gram.to(dtype), cov.to(dtype)
        self.quadratic, self.adam_step = quadratic, adam_step
        self.U = U0.to(dtype).clone()
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.U), torch.zeros_like(self.U)
        trace_c = cov.diagonal().sum()
        self.GU, _, self.uCu = quadratic(self.U, self.G, self.C)
        self.state = law_state(1e-3, 1.1 * self.uCu / trace_c, trace_c, 1e-5)

    def run(self, iterations: int) -> None:
        for _ in range(iterations):
            self.adam_step(self.U, self.GU, self.exp_avg, self.exp_avg_sq, self.state, self.uCu, True)
            self.GU, _, self.uCu = self.quadratic(self.U, self.G, self.C)


class AutogradLoop:
    """The reference's update_upd_matrix iteration (law-reference §5.3), float64, K* = keysᵀ (f×m)."""

    def __init__(self, keys, cov, U0):
        self.K = keys.T  # f×m (a view, as compute_ks(...).T is in the reference)
        self.C = cov
        self.U = U0.to(torch.float64).clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.U], lr=1e-3)
        with torch.no_grad():
            self.beta = 1.1 * float(torch.trace(self.U.T @ self.C @ self.U) / torch.trace(self.C))
        self.contact = False

    def run(self, iterations: int) -> None:
        for _ in range(iterations):
            self.optimizer.zero_grad()
            loss = -((self.U.T @ self.K) ** 2).sum()
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                rho = float(torch.trace(self.U.T @ self.C @ self.U) / torch.trace(self.C))
                if rho > self.beta:
                    self.U.data = self.U.data * math.sqrt(self.beta / rho)
                    if not self.contact:
                        self.contact = True
                        for group in self.optimizer.param_groups:
                            group["lr"] = 1e-5


def summarise(timing: dict, iterations: int, flops: float) -> dict:
    per_iteration = {
        key: (value / iterations if key != "samples" else [v / iterations for v in value])
        for key, value in timing.items()
        if key != "stdev"
    }
    per_iteration["stdev"] = timing["stdev"] / iterations
    return {
        "iterations_per_sample": iterations,
        "seconds_per_iteration": per_iteration,
        "flops_per_iteration": flops,
        "gflops_median": flops / per_iteration["median"] / 1e9,
    }


def bench_case(f: int, d: int, m: int, args, skip_autograd: bool) -> dict:
    cov = random_cov(f, seed=f)
    U0 = 0.01 * torch.randn(f, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    gram32, build_seconds, keys = build_gram(m, f, seed=m + f, keep_keys=not skip_autograd)
    gram64 = gram32.to(torch.float64)
    gram_flops = 4.0 * f * f * d
    autograd_flops = 4.0 * m * f * d + 2.0 * f * f * d + 2.0 * f * d * d
    big = f >= 4096
    iterations = {"gram": 1 if big else args.gram_iters, "autograd": 1}

    loops = {
        "gram_fp32": GramLoop(gram32, cov, U0, torch.float32, ops.law_quadratic, ops.law_adam_step_),
        "gram_fp64": GramLoop(gram64, cov, U0, torch.float64, ops.law_quadratic, ops.law_adam_step_),
    }
    if f <= args.torch_default_max_f:
        loops["torch_default_fp64"] = GramLoop(gram64, cov, U0, torch.float64, law_quadratic_ref, law_adam_step_ref)
    if not skip_autograd:
        loops["autograd_fp64"] = AutogradLoop(keys, cov, U0)
    heavy = big or m >= 100_000
    repeats, warmup = (args.big_repeats, args.big_warmup) if heavy else (args.repeats, args.warmup)
    fns = {
        name: (lambda loop=loop, n=iterations["autograd" if name.startswith("autograd") else "gram"]: loop.run(n))
        for name, loop in loops.items()
    }
    timings = interleaved(fns, repeats=repeats, warmup=warmup)
    row = {
        "f": f,
        "d": d,
        "m": m,
        "repeats": repeats,
        "warmup_rounds": warmup,
        "gram_build": {
            "seconds": build_seconds,
            "flops": float(m) * f * f,
            "dtype": "float32",
            "note": "cov_accumulate_ over chunks of K (upper triangle, ~m·f² FLOPs); once per layer",
        },
    }
    for name, timing in timings.items():
        n = iterations["autograd" if name.startswith("autograd") else "gram"]
        row[name] = summarise(timing, n, autograd_flops if name.startswith("autograd") else gram_flops)
    if skip_autograd:
        row["autograd_fp64"] = {"skipped": args.skip_reason}
    else:
        a = row["autograd_fp64"]["seconds_per_iteration"]
        for name in ("gram_fp32", "gram_fp64"):
            g = row[name]["seconds_per_iteration"]
            row[f"speedup_{name}_vs_autograd"] = {
                "ratio_of_medians": a["median"] / g["median"],
                "per_round_median": statistics.median(x / y for x, y in zip(a["samples"], g["samples"])),
            }
        # including the one-time Gram build, amortised over 1000 iterations
        row["speedup_gram_fp32_vs_autograd_incl_build_1000_iters"] = a["median"] / (
            row["gram_fp32"]["seconds_per_iteration"]["median"] + build_seconds / 1000
        )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1536x576", "6400x1600"], help="f x d")
    parser.add_argument("--m", type=int, nargs="+", default=[1000, 20000, 200000], help="numbers of keys")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big-repeats", type=int, default=2, help="repeats for f >= 4096 or m >= 100000")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--big-warmup", type=int, default=0, help="warm-up rounds for f >= 4096 or m >= 100000")
    parser.add_argument("--gram-iters", type=int, default=5, help="Gram iterations per timed sample (f < 4096)")
    parser.add_argument("--torch-default-max-f", type=int, default=2048)
    parser.add_argument(
        "--skip-autograd", nargs="*", default=["6400x1600:200000"], help="f x d:m cases without the autograd baseline"
    )
    parser.add_argument(
        "--skip-reason",
        default="not run: K* alone is 10 GB in float64 and one iteration is "
        "about 8 TFLOP (minutes per iteration on this machine)",
    )
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    parser.add_argument("--name", default="law_iteration_cpu", help="results/<name>.json")
    args = parser.parse_args(argv)

    report = ops.backend_report()
    for op in ("law_quadratic", "law_adam_step_"):
        if report["ops"][op]["cpu"] != "cpp":
            print(
                f"warning: {op} on CPU is served by {report['ops'][op]['cpu']!r}, not the C++ kernel", file=sys.stderr
            )
    gemm = {}
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(1536, 1536, dtype=dtype)
        b = torch.randn(1536, 576, dtype=dtype)
        timing = timeit(lambda: torch.mm(a, b), repeats=5)
        gemm[str(dtype)[6:]] = {
            "shape": "1536x1536 @ 1536x576",
            "gflops_median": 2 * 1536**2 * 576 / timing["median"] / 1e9,
        }
    print("machine GEMM rate: " + ", ".join(f"{k} {v['gflops_median']:.1f} GFLOP/s" for k, v in gemm.items()))

    rows = []
    started = time.time()
    header = (
        f"{'f':>5} {'d':>5} {'m':>7} | {'gram32 s/it':>11} {'gram64 s/it':>11} {'autograd s/it':>13} | "
        f"{'x fp32':>7} {'x fp64':>7} | {'GF/s 32':>7} {'GF/s 64':>7} {'GF/s ag':>7} | build s"
    )
    print(header, flush=True)
    for size in args.sizes:
        f, d = parse_size(size)
        for m in args.m:
            skip = f"{f}x{d}:{m}" in args.skip_autograd
            row = bench_case(f, d, m, args, skip)
            rows.append(row)
            g32, g64 = row["gram_fp32"], row["gram_fp64"]
            ag = row["autograd_fp64"]
            ag_s = ag["seconds_per_iteration"]["median"] if "skipped" not in ag else float("nan")
            ratios = [
                row.get(f"speedup_{n}_vs_autograd", {}).get("ratio_of_medians", float("nan"))
                for n in ("gram_fp32", "gram_fp64")
            ]
            print(
                f"{f:>5} {d:>5} {m:>7} | {g32['seconds_per_iteration']['median']:>11.4f} "
                f"{g64['seconds_per_iteration']['median']:>11.4f} {ag_s:>13.4f} | {ratios[0]:>6.1f}x {ratios[1]:>6.1f}x | "
                f"{g32['gflops_median']:>7.1f} {g64['gflops_median']:>7.1f} "
                f"{ag.get('gflops_median', float('nan')):>7.1f} | {row['gram_build']['seconds']:.2f}",
                flush=True,
            )

    path = write_result(
        args.name,
        {
            "benchmark": "one LaW iteration on CPU: Gram form (law_adam_step_ + law_quadratic) vs autograd through K* (fp64)",
            "note": args.note,
            "wall_seconds": time.time() - started,
            "flop_counts": {
                "gram": "4*f^2*d per iteration ([G; C]·U), independent of m",
                "autograd": "4*m*f*d (forward + gradient of U) + 2*f^2*d + 2*f*d^2 (rho via C)",
                "gram_build": "m*f^2 (cov_accumulate_, upper triangle), once per layer",
            },
            "speedup": "autograd seconds / Gram seconds per iteration: ratio of the medians, and median of the "
            "per-round ratios (candidates timed back to back)",
            "served_by": {op: report["ops"][op] for op in ("law_quadratic", "law_adam_step_", "cov_accumulate_")},
            "machine_gemm": gemm,
            "results": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
