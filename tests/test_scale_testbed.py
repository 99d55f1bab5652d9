"""The scale testbed (issue 14): deterministic synthetic facts, the tiny Llama, and bench_scale's run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

from law_fast.testing import OBJECTS, RELATIONS, gpt2_tokenizer, make_scale_model, synthetic_facts

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
bench_scale = pytest.importorskip("bench_scale")


def test_synthetic_facts_are_deterministic_distinct_and_valid():
    facts = synthetic_facts(5000, seed=3)
    assert facts == synthetic_facts(5000, seed=3) and facts != synthetic_facts(5000, seed=4)
    assert len({f.subject for f in facts}) == 5000 and [f.case_id for f in facts] == list(range(5000))
    assert {f.template for f in facts} <= set(RELATIONS) and {f.answer for f in facts} <= set(OBJECTS)
    assert all(f.answer.lower() not in f.subject.lower() and f.prompt.count(f.subject) == 1 for f in facts)
    assert synthetic_facts(10, seed=3) == facts[:10]  # a prefix of a larger set
    with pytest.raises(ValueError, match="at most"):
        synthetic_facts(10**9)


def test_scale_model_shape():
    model = make_scale_model(1000)
    assert (model.config.hidden_size, model.config.intermediate_size, model.config.num_hidden_layers) == (64, 256, 6)


def test_gpt2_tokenizer_cut_to_a_smaller_vocabulary():
    """GPT-2's BPE with its first merges only: ids below the size, EOS last, any text round-trips, and the
    common tokens keep GPT-2's ids."""
    if not (bench_scale.TOKENIZER / "vocab.json").is_file():
        pytest.skip(f"no GPT-2 tokenizer at {bench_scale.TOKENIZER} (../shared/data)")
    full, small = gpt2_tokenizer(bench_scale.TOKENIZER), gpt2_tokenizer(bench_scale.TOKENIZER, 600)
    assert (len(full), full.eos_token_id) == (50257, 50256) and (len(small), small.eos_token_id) == (600, 599)
    text = "Kalo Mivar was born in Paris, ünïcode 日本 — 42!"
    ids = small(text)["input_ids"]
    assert max(ids) < 599 and small.decode(ids) == text and len(ids) > len(full(text)["input_ids"])
    assert (
        small(" the")["input_ids"] == full(" the")["input_ids"]
        and small(text + "<|endoftext|>")["input_ids"][-1] == 599
    )
    for bad in (257, 50258):
        with pytest.raises(ValueError, match="vocab_size must be in 258..50257"):
            gpt2_tokenizer(bench_scale.TOKENIZER, bad)


def test_bench_scale_one_run(tmp_path):
    if not (bench_scale.TOKENIZER / "vocab.json").is_file():
        pytest.skip(f"no GPT-2 tokenizer at {bench_scale.TOKENIZER} (../shared/data)")
    args = argparse.Namespace(
        layers="1,2",
        prune=False,
        stats_docs=20,
        law_iters=3,
        seed=0,
        workdir=str(tmp_path),
        processes=1,
        final_check=True,
        vocab=512,
    )
    row, deltas = bench_scale.one_run(12, args)
    assert row["m"] == 12 and row["processes"] == 1 and row["peak_rss_mb"] > 0
    assert {"covariance", "targets", "memit init"} <= set(row["stages_s"]) and len(row["delta_norms"]) == 2
    assert sorted(deltas) == [1, 2] and all(float(d.norm()) == row["delta_norms"][str(k)] for k, d in deltas.items())
    again, again_deltas = bench_scale.one_run(12, args)  # resumed from the workdir: the same deltas
    assert again["delta_norms"] == row["delta_norms"]
    assert all(torch.equal(again_deltas[k], deltas[k]) for k in deltas)


def test_bench_scale_subprocess_arguments_drop_m():
    # torchrun would read --m as an abbreviation of its own --module / --master-addr
    assert bench_scale._without_m(["--m", "10,20", "--processes", "2", "--m=5", "--name", "x"]) == [
        "--processes",
        "2",
        "--name",
        "x",
    ]
