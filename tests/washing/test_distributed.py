"""torch.distributed (law_fast.dist): under torchrun the statistics are sharded over the processes and
all-reduced — the same Σkkᵀ and token count as one process (float64, 1e-9 relative); one process
without torchrun is unchanged.  Two gloo processes on the CPU, launched as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import law_fast as lf
from law_fast import dist
from law_fast.compat import read_client_stats
from law_fast.hf.loading import load_model
from law_fast.testing import TOKENIZER_TEXT
from law_fast.washing.stats import layer_stats


def test_one_process_is_unchanged():
    assert not dist.active() and dist.rank() == 0 and dist.world_size() == 1 and dist.is_main()
    assert dist.shard([1, 2, 3]) == [1, 2, 3] and dist.union({3, 1}) == [1, 3]
    t = torch.ones(2)
    assert dist.all_reduce_sum_(t) is t and torch.equal(t, torch.ones(2))
    assert dist.init_from_env("cpu") is False  # no WORLD_SIZE: nothing to join
    assert dist.local_device("cuda") == "cuda"


def test_torchrun_stats_equal_one_process(tiny_dir, tmp_path):
    """`torchrun --nproc-per-node 2 -m law_fast stats ...` writes the statistics one process computes."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TOKENIZER_TEXT * 5) + "\n")  # 20 documents: 10 per process
    out = tmp_path / "stats"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAW_FAST_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "law_fast"]
    args = ["stats", "--model", str(tiny_dir), "--corpus", str(corpus), "--layers", "1,2", "--batch-tokens", "64"]
    args += ["--export-dir", str(out), "--export-dtype", "float64"]
    run = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "(2 processes)" in run.stdout and run.stdout.count("layer 1:") == 1  # rank 0 alone reports
    model, tok = load_model(str(tiny_dir))
    one = layer_stats(
        model, lf.get_adapter(model), tok, lf.load_corpus(str(corpus)), [1, 2], batch_tokens=64, use_cache=False
    )
    files = sorted(out.rglob("*.npz"))
    assert len(files) == 2, files
    for layer, path in zip([1, 2], files):
        got = read_client_stats(path)
        assert got.count == one[layer].count
        want = one[layer].sum.double()
        assert float((got.sum - want).norm() / want.norm()) < 1e-9
    # the cache rank 0 wrote is the one a single process now reads
    cached = tmp_path / "cache"
    assert any(cached.rglob("*")), "rank 0 wrote no cache"


@pytest.mark.parametrize("bad", ["0", "1"])
def test_no_group_without_more_than_one_process(monkeypatch, bad):
    monkeypatch.setenv("WORLD_SIZE", bad)
    assert dist.init_from_env("cpu") is False and not dist.active()


def test_commands_not_sharded_yet_refuse_torchrun(monkeypatch, capsys, tiny_dir, tmp_path):
    from law_fast.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", "--model", str(tiny_dir), "--out", str(tmp_path / "o.json")]) == 2
    assert "not sharded over processes yet" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_torchrun_wash_equals_one_process(tiny_dir, tmp_path):
    """`torchrun --nproc-per-node 2 -m law_fast wash ...` (z* chunks, key moments, checks sharded; λ and LaW
    solved on the all-reduced sums, rank 0's Δ broadcast) saves the deltas one process computes: float64,
    1e-9 relative."""
    from safetensors.torch import load_file

    from law_fast.cli import main
    from law_fast.config import WashConfig
    from law_fast.facts import Fact, save_facts_jsonl

    facts = [
        Fact("France", "The capital of {} is", "Paris", 0),
        Fact("Danielle Darrieux", "The mother tongue of {} is", "French", 1),
        Fact("Apple", "{} was founded by", "Steve Jobs", 2),
        Fact("Toyota", "{} is headquartered in", "Japan", 3),
        Fact("Italy", "The capital of {} is", "Rome", 4),
    ]
    save_facts_jsonl(facts, tmp_path / "facts.jsonl")
    config = WashConfig.create(
        layers=(1, 2, 3),
        method="law",
        only_known=False,
        prune_requests=False,
        v_num_grad_steps=3,
        total_iters=10,
        learning_rate=1e-4,
        stats_max_length=64,
        target_batch_tokens=64,  # several z* chunks, so that both processes get some
    )
    config.to_json(tmp_path / "config.json")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TOKENIZER_TEXT * 5) + "\n")
    common = ["wash", "--model", str(tiny_dir), "--facts", str(tmp_path / "facts.jsonl"), "--config"]
    common += [str(tmp_path / "config.json"), "--corpus", str(corpus), "--dtype", "float64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAW_FAST_CACHE": str(tmp_path / "cache2")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "law_fast"]
    cmd += common + ["--out", str(tmp_path / "two"), "--workdir", str(tmp_path / "work")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("saved to") == 1  # rank 0 alone saves and reports
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    deltas = load_file(tmp_path / "one" / "deltas.safetensors")
    assert len(deltas) == 3 and all(float(d.norm()) > 0 for d in deltas.values())
    two, one = load_file(tmp_path / "two" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert sorted(two) == sorted(one)
    for name in one:  # the float64 weights as saved: the edited down-projections and everything else
        assert one[name].dtype == torch.float64
        assert float((two[name] - one[name]).norm()) <= 1e-9 * float(one[name].norm()), name
