"""The prepared end-to-end GPU benchmark (benchmarks/bench_gpu_e2e.py) runs on CPU with tiny shapes.

It is run only when a GPU is lent, so it is kept from rotting here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
bench = pytest.importorskip("bench_gpu_e2e")


def test_quick_run_on_cpu_washes_both_shapes_and_writes_only_into_out(tmp_path):
    if not (bench.TOKENIZER / "vocab.json").is_file():
        pytest.skip(f"no GPT-2 tokenizer at {bench.TOKENIZER} (../shared/data)")
    results = Path(bench.__file__).parent / "results"
    before = set(results.iterdir())
    payload = bench.main(["--device", "cpu", "--quick", "--out", str(tmp_path)])
    assert set(results.iterdir()) == before
    written = json.loads((tmp_path / "gpu_e2e_cpu_smoke.json").read_text())
    assert (
        [row["shape"] for row in written["rows"]]
        == ["gpt2-xl-shaped", "gpt-j-shaped"]
        == [row["shape"] for row in payload["rows"]]
    )
    for row in written["rows"]:
        assert row["m"] == 8 and row["dtype"] == "bfloat16" and row["layers"] == [1, 2]
        assert {"covariance", "targets", "memit init", "law keys", "law solve"} <= set(row["stages_s"])
        assert row["facts_per_s"] > 0 and row["projection"]["seconds"] > row["seconds"]
        assert len(row["delta_norms"]) == 2 and all(v > 0 for v in row["delta_norms"].values())
    with pytest.raises(SystemExit, match="unknown --shapes"):
        bench.main(["--device", "cpu", "--quick", "--shapes", "gpt-3"])
