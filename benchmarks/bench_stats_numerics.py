"""Numerics of the covariance accumulators: plain fp32, blocked fp32 and fp64 vs a float64 reference.

Synthetic keys with the scale and skew of real MLP keys (post-activation, mostly small and
positive with a heavy upper tail): x = GELU(s ⊙ z + b), z = (g A)·0.7 + 0.7·ε with g (n×32)
and ε (n×f) standard Gaussian, a fixed random A (32×f, correlated features), per-feature
scales s ~ LogNormal(0, 0.5) and biases b ~ N(−0.5, 0.5).  They are streamed in batches of
``--batch`` tokens (fp32, as the model produces them) into each scheme, all fed the same batches:

    float32           one fp32 (f, f) sum for everything (``layer_stats(dtype="float32")``)
    float32_blocked   fp32 blocks of ``--block-tokens`` tokens added to a float64 total
                      (``layer_stats(dtype="float32", block_tokens=...)``)
    float64           one fp64 sum, inputs upcast (``layer_stats(dtype="float64")``)

The schemes are law_fast.washing.stats._Accumulator, the code layer_stats runs.  Reference: Gram
matrices of 100-row slices in float64 (fp32 inputs, so every product is exact; sums of 100
terms) added with Kahan compensation: its own relative error is ~1e-15, below the float64
scheme's (~1e-14), which is therefore resolved, if only just.
Errors are ‖S − S_ref‖_F / ‖S_ref‖_F (and the largest entry error over the largest entry) at
each mark of ``--marks`` tokens; seconds are the time spent in each scheme's accumulate calls.

    python benchmarks/bench_stats_numerics.py                          # f = 512, marks 1e5, 1e6, 1e7
    python benchmarks/bench_stats_numerics.py --tokens 1e6 --name stats_numerics_quick

Writes benchmarks/results/<name>.json (default stats_numerics).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from law_fast.ops import cov_accumulate_  # noqa: E402
from law_fast.washing.stats import _Accumulator  # noqa: E402


class SyntheticKeys:
    """Deterministic stream of (n, f) fp32 post-activation-like keys (see the module docstring)."""

    def __init__(self, f: int, seed: int = 0, rank: int = 32):
        self.generator = torch.Generator().manual_seed(seed)
        self.mixing = torch.randn(rank, f, generator=self.generator) / math.sqrt(rank)
        self.scale = torch.exp(0.5 * torch.randn(f, generator=self.generator))
        self.bias = -0.5 + 0.5 * torch.randn(f, generator=self.generator)

    def batch(self, n: int) -> torch.Tensor:
        g = torch.randn(n, self.mixing.shape[0], generator=self.generator)
        noise = torch.randn(n, self.mixing.shape[1], generator=self.generator)
        z = 0.7 * (g @ self.mixing) + 0.7 * noise
        return torch.nn.functional.gelu(self.scale * z + self.bias)


class KahanReference:
    """Σ xᵀx: Gram matrices of ``rows``-row slices in float64 (exact products of fp32 inputs,
    sums of ``rows`` terms), added with Kahan compensation.  Relative error ~ rows · 2⁻⁵³."""

    def __init__(self, f: int, rows: int = 100):
        self.rows = rows
        self.total = torch.zeros(f, f, dtype=torch.float64)
        self.compensation = torch.zeros_like(self.total)
        self.gram = torch.zeros_like(self.total)
        self.count = torch.zeros((), dtype=torch.long)

    def add(self, x: torch.Tensor) -> None:
        for piece in x.split(self.rows):
            self.gram.zero_()
            cov_accumulate_(piece, self.gram, self.count)
            y = self.gram - self.compensation
            t = self.total + y
            self.compensation = (t - self.total) - y
            self.total = t


def relative_errors(value: torch.Tensor, reference: torch.Tensor) -> dict:
    diff = value.double() - reference
    return {
        "frobenius": float(diff.norm() / reference.norm()),
        "max_abs_over_max_abs": float(diff.abs().max() / reference.abs().max()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--f", type=int, default=512)
    parser.add_argument("--tokens", type=float, default=1e7, help="total tokens (the last mark)")
    parser.add_argument("--marks", type=float, nargs="+", default=[1e5, 1e6, 1e7], help="token counts to report")
    parser.add_argument("--batch", type=int, default=4000, help="tokens per accumulate call (divides the marks)")
    parser.add_argument("--block-tokens", type=int, default=64_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="stats_numerics", help="results/<name>.json")
    args = parser.parse_args(argv)
    total = int(args.tokens)
    marks = sorted(int(m) for m in args.marks if m <= total)
    if total not in marks:
        marks.append(total)
    if any(m % args.batch for m in marks):
        parser.error(f"--batch {args.batch} must divide every mark {marks}")

    keys = SyntheticKeys(args.f, args.seed)
    schemes = {
        "float32": _Accumulator(args.f, torch.float32, None, torch.device("cpu")),
        "float32_blocked": _Accumulator(args.f, torch.float32, args.block_tokens, torch.device("cpu")),
        "float64": _Accumulator(args.f, torch.float64, None, torch.device("cpu")),
    }
    reference = KahanReference(args.f)
    seconds = dict.fromkeys(schemes, 0.0)
    rows, done = [], 0
    print(
        f"f = {args.f}, {total:.3g} tokens in batches of {args.batch}, blocks of {args.block_tokens}; "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    print(f"{'tokens':>10} " + " ".join(f"{name + ' (Frobenius)':>28}" for name in schemes), flush=True)
    start = time.perf_counter()
    for mark in marks:
        while done < mark:
            x = keys.batch(args.batch)
            for name, accumulator in schemes.items():
                t0 = time.perf_counter()
                accumulator.add(x)
                seconds[name] += time.perf_counter() - t0
            reference.add(x)
            done += args.batch
        row = {"tokens": mark}
        for name, accumulator in schemes.items():
            state = accumulator.state()
            value = state["block"].double() if state["total"] is None else state["total"] + state["block"]
            row[name] = relative_errors(value, reference.total)
        rows.append(row)
        print(f"{mark:>10.3g} " + " ".join(f"{row[name]['frobenius']:>28.3e}" for name in schemes), flush=True)
    mean = reference.total.diagonal() / done  # E[x²] per feature: the keys' scale
    path = write_result(
        args.name,
        {
            "benchmark": "covariance accumulation error vs a Kahan-summed float64 reference (synthetic GELU keys)",
            "command": "python benchmarks/bench_stats_numerics.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "f": args.f,
            "batch_tokens": args.batch,
            "block_tokens": args.block_tokens,
            "seed": args.seed,
            "keys": {
                "generator": "GELU(s*(0.7*g@A + 0.7*eps) + b), s~LogNormal(0,0.5), b~N(-0.5,0.5), rank(A)=32",
                "rms_per_feature_median": float(mean.sqrt().median()),
                "rms_per_feature_max": float(mean.sqrt().max()),
            },
            "error": "relative to the reference: Frobenius norm of the difference / Frobenius norm of the reference, "
            "and max |difference| / max |reference|",
            "results": rows,
            "seconds_in_accumulate": seconds,
            "wall_seconds": time.perf_counter() - start,
            "threads": torch.get_num_threads(),
        },
    )
    print("seconds in accumulate: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
