"""Shared helpers for the benchmark scripts: timing, machine/version info, JSON results.

    from common import timeit, interleaved, write_result, machine_info

Benchmarks are data: every script writes ``benchmarks/results/<name>.json`` with the machine,
the versions, the git sha, the medians and spreads, the FLOP (or byte) counts and the rates, and
its provenance: the script and the arguments of the one run that produced it.  Only a run from a
clean work tree at a committed revision (``git_sha`` without ``-dirty``) writes into
``benchmarks/results/``; any other run writes into ``benchmarks/results/unclean/`` (ignored by
git), so that a long run is never lost and never committed as data.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _summary(samples: list[float]) -> dict:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
        "samples": list(samples),
    }


def _sync(device: str | None) -> None:
    if device is not None and device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: str | None = None) -> dict:
    """Wall-clock seconds of ``fn()``: dict(median, min, max, stdev, samples).

    ``device="cuda..."`` synchronises before and after each call so GPU time is included.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
    return _summary(samples)


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1, device: str | None = None
) -> dict[str, dict]:
    """Time several candidates round-robin (a, b, a, b, ...) so that a noisy or shared machine
    (frequency changes, other jobs) affects them alike; same result format as ``timeit``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: _summary(values) for name, values in samples.items()}


def git_sha(rev: str = "HEAD", paths: tuple[str, ...] = (".", ":(exclude)benchmarks/results")) -> str | None:
    """The object ``rev`` names (HEAD: the commit; "HEAD:law_fast": that folder's tree), with "-dirty" when
    tracked files under ``paths`` have uncommitted changes — by default anywhere outside benchmarks/results,
    what the scripts write, not what runs (untracked files, e.g. a built module or a link, do not count).
    None if unknown."""
    try:
        sha = subprocess.run(["git", "rev-parse", rev], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def code_key(folder: str = "law_fast") -> str | None:
    """What computes a cached result: the committed tree of ``folder``, and with uncommitted changes to it
    also a digest of those changes (so that a result made by other uncommitted code is not reused)."""
    tree = git_sha(f"HEAD:{folder}", (folder,))
    if tree is None or not tree.endswith("-dirty"):
        return tree
    try:
        diff = subprocess.run(["git", "diff", "HEAD", "--", folder], cwd=REPO_ROOT, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{tree}-{sha(diff.stdout.decode(errors='replace'))}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Machine and software versions (JSON-able); the versions come from ``law_fast.info.versions``."""
    import torch

    from law_fast.info import versions

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        **versions(),
        "torch_cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "blas": _blas_name(torch),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_sha": git_sha(),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import law_fast.ops

        info["law_fast_backends"] = law_fast.ops.backend_report()
    except Exception as error:  # benchmarks of pure-torch code still run without the native module
        info["law_fast_backends"] = f"unavailable: {error}"
    return info


def provenance() -> dict:
    """The one run that produces a result: script (relative to the repository), its arguments, the sha."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_name = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_name = str(script)
    return {"script": script_name, "argv": sys.argv[1:], "git_sha": git_sha()}


def _blas_name(torch) -> str:
    config = torch.__config__.show()
    if "BLAS_INFO=" not in config:
        return "unknown"
    return config.split("BLAS_INFO=", 1)[1].split(",", 1)[0].strip()


def write_result(name: str, payload: dict) -> Path:
    """Write ``benchmarks/results/<name>.json`` (payload + "machine" and "provenance"); returns the path.

    From a work tree with uncommitted changes (the sha would not say what ran) the file goes to
    ``benchmarks/results/unclean/`` instead, with a warning."""
    payload = dict(payload)
    payload.setdefault("machine", machine_info())
    payload["provenance"] = provenance()
    sha = payload["provenance"]["git_sha"]
    folder = RESULTS_DIR
    if sha is None or sha.endswith("-dirty"):
        folder = RESULTS_DIR / "unclean"
        print(
            f"warning: the work tree is not a clean committed revision (git sha {sha}): writing {name}.json into "
            f"{folder} (ignored by git), not benchmarks/results",
            file=sys.stderr,
        )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def sha(value) -> str:
    """A short digest of a JSON-able value (cache keys)."""
    import hashlib

    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


def read_json(path: Path):
    """A cached JSON value, or None when the file is absent or unreadable (then it is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_json(path: Path, value) -> None:
    """Write a cache file atomically (a killed run leaves the old file or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, default=str))
    tmp.replace(path)
