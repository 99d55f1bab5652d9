"""Benchmark (issue 14): a wash killed with SIGKILL resumes to the same deltas, and the same wash under
``torchrun --nproc-per-node 2`` (gloo) gives the same deltas as one process — at m facts on the scale
testbed of ``bench_scale.py`` (the same model, facts, layers and settings; its ``one_run`` does the wash).

Four runs of the same wash, each in a fresh work directory:
  reference    one process, uninterrupted
  interrupted  one process, killed (SIGKILL) three times — during z* (once --kill-chunks chunks are on
               disk), during the MEMIT initialisation of layer --kill-layer (once the layer before it
               is on disk) and during that layer's LaW key pass and solve (likewise) — then run to the end
  processes-2  torchrun --standalone --nproc-per-node 2 (gloo), uninterrupted: 1 thread per process
  reference-1-thread  one process with OMP_NUM_THREADS=1, uninterrupted (what processes-2 is compared to
               besides the reference: float32 sums in another order change a wash as much as sharding can)

    python benchmarks/bench_resume.py --m 10000

Writes benchmarks/results/<name>.json (default resume_cpu): per run the wall seconds (and stage seconds of
the last attempt), where each kill landed (z* chunks / stage files on disk), and per layer the largest
|ΔW − ΔW_reference| (absolute, relative to max |ΔW_reference|) and ‖ΔW − ΔW_reference‖ / ‖ΔW_reference‖;
processes-2 is compared with reference-1-thread too.  Targets: interrupted = reference bit for bit (same
process, same settings); processes-2 within 1e-5 relative of reference-1-thread (float32: the all-reduced
sums are added in another order).  A finished run is cached (keyed by its settings and law_fast's code) and not rerun.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale  # noqa: E402
from common import code_key, read_json, sha, write_json, write_result  # noqa: E402


def _command(args, m: int, processes: int, workdir: Path, row: Path, deltas: Path) -> list[str]:
    tail = ["--layers", args.layers, "--stats-docs", str(args.stats_docs), "--vocab", str(args.vocab)]
    tail += ["--law-iters", str(args.law_iters), "--seed", str(args.seed), "--processes", str(processes)]
    tail += ["--one", str(m), "--out", str(row), "--workdir", str(workdir), "--deltas-out", str(deltas)]
    return bench_scale.one_run_command(processes, tail)


def _stage_files(workdir: Path) -> dict:
    """What a killed run left in its workdir: z* chunks and per-layer stage files."""
    chunks = list(workdir.glob("*/targets-*/chunk-*.pt"))
    stages = sorted(p.name for p in workdir.glob("*/stages-*/*.pt"))
    return {"z_chunks": len(chunks), "stage_files": stages}


def _kill_when(cmd: list[str], ready, workdir: Path, timeout_s: float) -> dict:
    """Start ``cmd``; SIGKILL its process group once ``ready()`` holds.  Returns where the kill landed."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, start_new_session=True)
    while process.poll() is None:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return {"killed_after_s": time.perf_counter() - started, **_stage_files(workdir)}
        if time.perf_counter() - started > timeout_s:
            os.killpg(process.pid, signal.SIGKILL)
            raise SystemExit(f"{' '.join(cmd)}: the kill point was not reached within {timeout_s:.0f} s")
        time.sleep(0.05)
    raise SystemExit(f"{' '.join(cmd)} ended (rc {process.returncode}) before its kill point")


def _run(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, **env})
    return time.perf_counter() - started


def _compare(deltas: dict, reference: dict) -> dict:
    out = {}
    for layer, ref in reference.items():
        scale = float(ref.abs().max())
        error = deltas[layer].double() - ref.double()
        diff = float(error.abs().max())
        out[str(layer)] = {
            "max_abs_diff": diff,
            "max_rel_diff": diff / scale,
            "frobenius_rel_diff": float(error.norm() / ref.double().norm()),
            "bitwise_equal": bool(diff == 0.0),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, default=10000)
    parser.add_argument("--layers", default="1,2,3,4,5")
    parser.add_argument("--stats-docs", type=int, default=2000)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--law-iters", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-chunks", type=int, default=40, help="kill z* once this many chunks are on disk")
    parser.add_argument(
        "--kill-layer", type=int, default=3, help="the layer whose MEMIT init and LaW are interrupted (≥ 2)"
    )
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--workdir", default=None, help="default: law_fast's cache dir / bench_resume")
    parser.add_argument("--name", default="resume_cpu")
    args = parser.parse_args(argv)
    import torch

    if args.workdir is None:
        from law_fast.hf.loading import cache_dir

        args.workdir = str(cache_dir() / "bench_resume")
    setting = {k: getattr(args, k) for k in ("m", "layers", "stats_docs", "vocab", "law_iters", "seed")}
    setting |= {"kill_chunks": args.kill_chunks, "kill_layer": args.kill_layer}
    root = Path(args.workdir) / sha({**setting, "code": code_key("law_fast")})[:16]
    runs = {}
    # torchrun gives each process 1 thread: "reference-1-thread" tells the sharding from the thread count
    for name, processes in (("reference", 1), ("interrupted", 1), ("processes-2", 2), ("reference-1-thread", 1)):
        done = read_json(root / f"{name}.json")
        if done is None:
            work = root / name
            shutil.rmtree(work, ignore_errors=True)  # an attempt stopped half-way starts again
            row, deltas = root / f"{name}-row.json", root / f"{name}-deltas.pt"
            cmd = _command(args, args.m, processes, work, row, deltas)
            print(f"{name}: {' '.join(cmd[1:3])} ...", flush=True)
            done = {"processes": processes, "kills": []}
            wall = 0.0
            if name == "interrupted":
                k = args.kill_layer
                points = (
                    ("z*", lambda: _stage_files(work)["z_chunks"] >= args.kill_chunks),
                    (f"MEMIT init of layer {k}", lambda: any(work.glob(f"*/stages-*/init-L{k - 1}.pt"))),
                    (f"LaW of layer {k}", lambda: any(work.glob(f"*/stages-*/law-L{k - 1}.pt"))),
                )
                for where, ready in points:
                    kill = _kill_when(cmd, ready, work, args.timeout_s)
                    wall += kill["killed_after_s"]
                    done["kills"].append({"during": where, **kill})
                    print(f"{name}: killed during {where} after {kill['killed_after_s']:.0f} s: {kill}", flush=True)
            wall += _run(cmd, {"OMP_NUM_THREADS": "1"} if name == "reference-1-thread" else {})
            done |= {"wall_s_all_attempts": wall, "last_attempt": read_json(row)}
            write_json(root / f"{name}.json", done)
        runs[name] = done
    reference = torch.load(root / "reference-deltas.pt")
    one_thread = torch.load(root / "reference-1-thread-deltas.pt")
    runs["processes-2"]["vs_reference_1_thread"] = _compare(torch.load(root / "processes-2-deltas.pt"), one_thread)
    for name in ("interrupted", "processes-2", "reference-1-thread"):
        runs[name]["vs_reference"] = _compare(torch.load(root / f"{name}-deltas.pt"), reference)
        worst = max(v["frobenius_rel_diff"] for v in runs[name]["vs_reference"].values())
        print(
            f"{name}: wall {runs[name]['wall_s_all_attempts']:.0f} s, largest relative (Frobenius) difference {worst:.2e}"
        )
    worst = max(v["frobenius_rel_diff"] for v in runs["processes-2"]["vs_reference_1_thread"].values())
    print(f"processes-2 vs reference-1-thread: largest relative (Frobenius) difference {worst:.2e}")
    print(f"reference: wall {runs['reference']['wall_s_all_attempts']:.0f} s")
    out = write_result(args.name, {"benchmark": "resume", "settings": vars(args), "runs": runs})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
