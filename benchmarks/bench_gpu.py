"""GPU check and benchmark: the law_fast ops on the device vs float64 references, and one LaW
iteration at GPT2-XL and GPT-J sizes with the achieved TFLOP/s against the device's measured
matrix-product rate (issue 4's GPU benchmark).

Prepared as one short run for a lent GPU (the device tool; a few minutes on an H200, most of it
building the extension):

    pip install --no-build-isolation --no-deps -e . && python benchmarks/bench_gpu.py --out "$OUT"

What it does, per implementation that can serve the ops on the device:

    dispatched   what law_fast.ops dispatches to (Triton on CUDA when Triton is importable)
    cuda_cpp     the CUDA C++ kernels of law_fast._C (a child process with LAW_FAST_USE_TRITON=0;
                 only when the extension was built with CUDA)
    torch        the pure-torch default kernels (law_quadratic_ref / law_adam_step_ref: cuBLAS)

1. checks: law_quadratic, 5 LaW iterations (law_adam_step_ + law_quadratic) and cov_accumulate_
   against float64 computations of the same formulas, over shapes and dtypes; the maximum
   relative errors and whether they are within tolerance ("ok");
2. matmul rates: torch.mm at the solver's product shape (f×f)·(f×d) per dtype (float32 without
   TF32 — the kernels use IEEE float32 —, float64, bfloat16 for scale);
3. solver: seconds per iteration of the Gram-form loop (4·f²·d FLOPs, independent of m), its
   TFLOP/s and fraction of the same dtype's matmul rate; the reference's autograd-through-K
   iteration in float64 at each m (--m), and the Gram build (cov_accumulate_ over K's rows).

``--device cpu --quick`` runs every path on tiny sizes (the test suite does, so the script
cannot rot).  Writes benchmarks/results/<--name>.json (default gpu_<device name>) and a copy
into --out; a --quick run writes only into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_law_iteration import AutogradLoop, GramLoop, build_gram, random_cov  # noqa: E402
from common import interleaved, timeit, write_result  # noqa: E402

import law_fast.ops as ops  # noqa: E402
from law_fast.kernels.cov_accumulate import cov_accumulate_ref  # noqa: E402
from law_fast.kernels.law_step import law_adam_step_ref, law_quadratic_ref  # noqa: E402

CHECK_SHAPES = [(16, 16), (100, 37), (300, 77), (1536, 576)]
CHECK_ITERATIONS = 5
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def problem(f: int, d: int, device: str, seed: int):
    """U₀ (f, d), G and C (f, f) SPD, all float64 on the device."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(2 * f, f, generator=generator, dtype=torch.float64)
    U0 = 0.01 * torch.randn(f, d, generator=generator, dtype=torch.float64)
    return U0.to(device), (keys.T @ keys).to(device), random_cov(f, seed).to(device)


def check_ops(impls: dict, device: str, shapes) -> list[dict]:
    rows = []
    for f, d in shapes:
        U0, G, C = problem(f, d, device, seed=f * 1000 + d)
        GU64, uGu64, uCu64 = law_quadratic_ref(U0, G, C)
        reference = GramLoop(G, C, U0, torch.float64, law_quadratic_ref, law_adam_step_ref)
        reference.run(CHECK_ITERATIONS)
        x = torch.randn(257, f, generator=torch.Generator().manual_seed(f), dtype=torch.float64).to(device)
        for name, (quadratic, adam_step, cov_acc) in impls.items():
            for dtype in (torch.float32, torch.float64):
                GU, uGu, uCu = quadratic(U0.to(dtype), G.to(dtype), C.to(dtype))
                loop = GramLoop(G, C, U0, dtype, quadratic, adam_step)
                loop.run(CHECK_ITERATIONS)
                errors = {
                    "GU": rel(GU, GU64),
                    "uGu": rel(uGu, uGu64),
                    "uCu": rel(uCu, uCu64),
                    f"U_after_{CHECK_ITERATIONS}_iterations": rel(loop.U, reference.U),
                }
                for x_dtype in (torch.float32, torch.bfloat16) if dtype == torch.float32 else (torch.float64,):
                    xs = x.to(x_dtype)
                    cov, count = (
                        torch.zeros(f, f, dtype=dtype, device=device),
                        torch.zeros((), dtype=torch.int64, device=device),
                    )
                    cov_acc(xs, cov, count)
                    errors[f"cov_accumulate_{str(x_dtype)[6:]}"] = rel(cov, xs.double().T @ xs.double())
                    errors[f"cov_accumulate_{str(x_dtype)[6:]}_count"] = int(count) - x.shape[0]
                ok = all(abs(v) <= TOLERANCE[dtype] if not k.endswith("count") else v == 0 for k, v in errors.items())
                rows.append({"impl": name, "f": f, "d": d, "dtype": str(dtype)[6:], "max_rel_error": errors, "ok": ok})
                print(
                    f"  check {name:>10} f={f:<5} d={d:<4} {str(dtype)[6:]:>7}: "
                    f"max {max(abs(v) for v in errors.values()):.1e} {'ok' if ok else 'FAILED'}",
                    flush=True,
                )
    return rows


def matmul_rates(f: int, d: int, device: str, repeats: int) -> dict:
    rates = {}
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            a, b = torch.randn(f, f, device=device, dtype=dtype), torch.randn(f, d, device=device, dtype=dtype)
            timing = timeit(lambda: torch.mm(a, b), repeats=repeats, warmup=2, device=device)
            rates[str(dtype)[6:]] = {
                "shape": f"{f}x{f} @ {f}x{d}",
                "tflops_median": 2.0 * f * f * d / timing["median"] / 1e12,
            }
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return rates


def solver_rows(impls: dict, sizes, ms, device: str, rates: dict, args) -> list[dict]:
    rows = []
    for f, d in sizes:
        U0 = 0.01 * torch.randn(f, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64).to(device)
        cov = random_cov(f, seed=f).to(device)
        flops = 4.0 * f * f * d
        for m in ms:
            gram, build_s, keys = build_gram(m, f, seed=m + f, keep_keys=m <= args.autograd_max_m, device=device)
            loops = {
                f"{name}_{str(dtype)[6:]}": GramLoop(gram.double(), cov, U0, dtype, quadratic, adam_step)
                for name, (quadratic, adam_step, _) in impls.items()
                for dtype in (torch.float32, torch.float64)
            }
            del gram
            fns = {name: (lambda loop=loop: loop.run(args.iterations)) for name, loop in loops.items()}
            if keys is not None:
                autograd = AutogradLoop(keys, cov, U0)
                fns["autograd_float64"] = lambda: autograd.run(args.iterations)
            timings = interleaved(fns, repeats=args.repeats, warmup=1, device=device)
            row = {
                "f": f,
                "d": d,
                "m": m,
                "gram_build_s": build_s,
                "gram_build_tflops": m * f * f / build_s / 1e12,
                "seconds_per_iteration": {},
                "tflops": {},
                "fraction_of_matmul_rate": {},
            }
            for name, timing in timings.items():
                seconds = timing["median"] / args.iterations
                work = (4.0 * m * f * d + 2.0 * f * f * d + 2.0 * f * d * d) if name.startswith("autograd") else flops
                dtype = name.rsplit("_", 1)[1]
                row["seconds_per_iteration"][name] = seconds
                row["tflops"][name] = work / seconds / 1e12
                row["fraction_of_matmul_rate"][name] = row["tflops"][name] / rates[dtype]["tflops_median"]
            if keys is not None:
                row["speedup_vs_autograd"] = {
                    name: row["seconds_per_iteration"]["autograd_float64"] / s
                    for name, s in row["seconds_per_iteration"].items()
                    if not name.startswith("autograd")
                }
            rows.append(row)
            print(
                f"  solver f={f} d={d} m={m}: "
                + ", ".join(
                    f"{name} {s * 1e3:.2f} ms ({row['tflops'][name]:.1f} TF/s)"
                    for name, s in row["seconds_per_iteration"].items()
                ),
                flush=True,
            )
            del loops, fns, keys
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def section(args, device: str) -> dict:
    """Checks and solver timings for the implementations this process can call."""
    label = args.child or "dispatched"  # a child process serves one implementation, under its label
    impls = {label: (ops.law_quadratic, ops.law_adam_step_, ops.cov_accumulate_)}
    if not args.child:
        impls["torch"] = (law_quadratic_ref, law_adam_step_ref, cov_accumulate_ref)
    kind = torch.device(device).type
    served = {
        op: by_device[kind if kind in ("cpu", "cuda") else "other"]
        for op, by_device in ops.backend_report()["ops"].items()
    }
    print(f"{label}: ops served by {served}", flush=True)
    rates = matmul_rates(*args.sizes[-1], device, args.repeats)
    return {
        "served_by": {label: served},
        "matmul_rates_tflops": rates,
        "checks": check_ops(impls, device, args.check_shapes),
        "solver": solver_rows(impls, args.sizes, args.m, device, rates, args),
    }


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in size.lower().split("x")) for size in text.split(",")]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes("1536x576,6400x1600,16384x4096"),
        help="f x d, comma separated (the last one's product shape sets the matmul rates)",
    )
    parser.add_argument("--m", type=lambda s: [int(v) for v in s.split(",")], default=[20000, 200000])
    parser.add_argument("--autograd-max-m", type=int, default=200000, help="largest m with the autograd baseline")
    parser.add_argument("--iterations", type=int, default=10, help="solver iterations per timed sample")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test on any device)")
    parser.add_argument("--out", type=Path, default=None, help="also copy the JSON into this folder")
    parser.add_argument("--name", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one implementation
    args = parser.parse_args(argv)
    args.check_shapes = CHECK_SHAPES[:2] if args.quick else CHECK_SHAPES
    if args.quick:
        args.sizes, args.m, args.iterations, args.repeats = [(64, 32)], [300], 2, 1
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: CUDA is not available here (use --device cpu --quick for a smoke test)")

    started = time.time()
    result = section(args, device)
    if args.child:
        print("RESULT " + json.dumps(result), flush=True)
        return result
    native = ops.backend_report()["native"]
    if (
        device.startswith("cuda")
        and native.get("cuda_kernels")
        and result["served_by"]["dispatched"]["law_quadratic"] != "cuda"
    ):
        # the CUDA C++ kernels are registered only when Triton is not used: a child process without it
        env = dict(os.environ, LAW_FAST_USE_TRITON="0")
        command = [
            sys.executable,
            __file__,
            "--child",
            "cuda_cpp",
            "--device",
            device,
            "--sizes",
            ",".join(f"{f}x{d}" for f, d in args.sizes),
            "--m",
            ",".join(map(str, args.m)),
            "--autograd-max-m",
            "0",
            "--iterations",
            str(args.iterations),
            "--repeats",
            str(args.repeats),
        ]
        child = subprocess.run(command, env=env, capture_output=True, text=True)
        print(child.stdout + child.stderr, flush=True)
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode == 0 and lines:
            extra = json.loads(lines[-1][len("RESULT ") :])
            result["served_by"].update(extra["served_by"])
            result["checks"] += extra["checks"]
            for row, other in zip(result["solver"], extra["solver"]):
                for key in ("seconds_per_iteration", "tflops", "fraction_of_matmul_rate"):
                    row[key].update(other[key])
        else:
            result["cuda_cpp_error"] = (child.stderr or child.stdout)[-2000:]
    name = args.name or "gpu_" + (
        torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu_smoke"
    ).lower().replace(" ", "_")
    payload = {
        "benchmark": "law_fast ops on a device: checks vs float64, LaW iteration at GPT-J sizes",
        "device": device,
        "quick": args.quick,
        "wall_seconds": time.time() - started,
        "backends": ops.backend_report(),
        "flop_counts": {
            "gram": "4*f^2*d per iteration",
            "autograd": "4*m*f*d + 2*f^2*d + 2*f*d^2",
            "gram_build": "m*f^2",
        },
        **result,
        "all_checks_ok": all(row["ok"] for row in result["checks"]),
    }
    # a --quick run is a smoke test: its JSON goes only to --out, never into benchmarks/results
    path = None if args.quick else write_result(name, payload)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        target = args.out / f"{name}.json"
        if path is not None:
            shutil.copyfile(path, target)
        else:
            target.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"all checks ok: {payload['all_checks_ok']}; wrote {path or args.out}")
    return payload


if __name__ == "__main__":
    sys.exit(0 if main()["all_checks_ok"] else 1)
