"""The prepared GPU check (benchmarks/bench_gpu.py) runs end to end on CPU, and its checks can fail.

It is run only when a GPU is lent, so it is kept from rotting here: every path on tiny sizes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
bench_gpu = pytest.importorskip("bench_gpu")

from law_fast.kernels.cov_accumulate import cov_accumulate_ref  # noqa: E402
from law_fast.kernels.law_step import law_adam_step_ref, law_quadratic_ref  # noqa: E402


def test_quick_run_on_cpu_writes_only_into_out(tmp_path):
    results = Path(bench_gpu.__file__).parent / "results"
    before = set(results.iterdir())
    payload = bench_gpu.main(["--device", "cpu", "--quick", "--out", str(tmp_path)])
    assert set(results.iterdir()) == before
    written = json.loads((tmp_path / "gpu_cpu_smoke.json").read_text())
    assert written["all_checks_ok"] is True and payload["all_checks_ok"] is True
    assert {row["impl"] for row in written["checks"]} == {"dispatched", "torch"}
    (row,) = written["solver"]
    assert (row["f"], row["d"], row["m"]) == (64, 32, 300)
    assert set(row["seconds_per_iteration"]) == {
        "dispatched_float32",
        "dispatched_float64",
        "torch_float32",
        "torch_float64",
        "autograd_float64",
    }
    assert all(value > 0 for value in row["tflops"].values())
    assert set(written["matmul_rates_tflops"]) == {"float32", "float64", "bfloat16"}


def _off_quadratic(U, G, C):
    GU, uGu, uCu = law_quadratic_ref(U, G, C)
    return GU * (1 + 1e-3), uGu, uCu


def test_checks_flag_a_wrong_kernel():
    rows = bench_gpu.check_ops(
        {
            "good": (law_quadratic_ref, law_adam_step_ref, cov_accumulate_ref),
            "off": (_off_quadratic, law_adam_step_ref, cov_accumulate_ref),
        },
        "cpu",
        [(16, 16)],
    )
    verdict = {(row["impl"], row["dtype"]): row["ok"] for row in rows}
    assert verdict == {
        ("good", "float32"): True,
        ("good", "float64"): True,
        ("off", "float32"): False,
        ("off", "float64"): False,
    }
    off64 = next(row for row in rows if row["impl"] == "off" and row["dtype"] == "float64")
    assert off64["max_rel_error"]["GU"] == pytest.approx(1e-3, rel=1e-6)


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="CUDA is not available"):
        bench_gpu.main(["--device", "cuda"])
