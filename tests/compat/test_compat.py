"""law_fast.compat: requests, hyper-parameters and statistics files of MEMIT-family clients — read,
checked, and refused with the field named; the entry points on tiny models."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from client_harness import CLIENTS, HPARAMS, MODULES

import law_fast as lf
from law_fast.compat import (
    HparamsError,
    RequestError,
    apply_law_to_model,
    apply_memit_to_model,
    check_modules,
    client_stats_path,
    read_client_stats,
    read_hparams,
    read_requests,
    write_client_stats,
)
from law_fast.testing import TOKENIZER_TEXT, make_tiny_model
from law_fast.washing.stats import LayerStats

GPT2 = {**HPARAMS, **MODULES["gpt2"], "v_num_grad_steps": 4}
REQUEST = {"case_id": 7, "prompt": "The capital of {} is", "subject": "France", "target_new": {"str": "Rome"}}


def test_both_request_schemas():
    memit, easy = read_requests(
        [
            {**REQUEST, "target_true": {"str": "Paris"}},
            {"prompt": "The capital of Italy is", "subject": "Italy", "target_new": "Paris", "ground_truth": "Rome"},
        ]
    )
    assert (memit.template, memit.subject, memit.target_new, memit.target_true) == (
        "The capital of {} is",
        "France",
        "Rome",
        "Paris",
    )
    assert (easy.template, easy.case_id, easy.target_new, easy.target_true) == (
        "The capital of {} is",
        1,
        "Paris",
        "Rome",
    )
    assert easy.fact("target_true").answer == "Rome" and memit.fact().answer == "Rome"
    assert read_requests(REQUEST)[0].case_id == 7  # one dict, as the clients accept


@pytest.mark.parametrize(
    "request_, match",
    [
        ({**REQUEST, "colour": 1}, r"request 0 \(case_id 7\): unknown field\(s\) \['colour'\]"),
        ({k: v for k, v in REQUEST.items() if k != "subject"}, "missing field 'subject'"),
        ({**REQUEST, "target_new": {"text": "Rome"}}, r'target_new must be \{"str": \.\.\.\}'),
        ({**REQUEST, "target_new": {"str": " "}}, "target_new.str must be a non-empty string"),
        ({"prompt": "France or France is", "subject": "France", "target_new": "x"}, "occurs 2 times"),
        ({"prompt": "Italy is", "subject": "France", "target_new": "x"}, "occurs 0 times"),
        ({**REQUEST, "prompt": "The {} of {} is"}, "request 0"),
        ({**REQUEST, "case_id": [1]}, "case_id must be an int or a str"),
    ],
)
def test_bad_requests_name_the_request_and_field(request_, match):
    with pytest.raises(RequestError, match=match):
        read_requests([request_])
    with pytest.raises(RequestError, match=r"request 1 \(case_id 7\): case_id 7 is also request 0's"):
        read_requests([REQUEST, REQUEST])


def test_client_hparams_files_are_read():
    """The real files: MEMIT's JSON, EasyEdit's MEMIT YAML (5e-1 read by YAML as a string), LaW-free."""
    memit = CLIENTS / "memit" / "hparams" / "MEMIT" / "gpt2-xl.json"
    easy = CLIENTS / "easyedit" / "hparams" / "MEMIT" / "gpt2-xl.yaml"
    if not memit.exists() or not easy.exists():
        pytest.skip(f"the clients are not at {CLIENTS}")
    a, b = read_hparams(memit), read_hparams(easy)
    assert a.client == "memit" and b.client == "easyedit"
    for h in (a, b):
        assert h["layers"] == [13, 14, 15, 16, 17] and h["v_lr"] == 0.5 and h["mom2_update_weight"] == 20000.0
    assert b["stats_dir"] == "./data/stats"
    with pytest.raises(HparamsError, match=r"alg_name='AlphaEdit'.*runs MEMIT"):
        read_hparams(CLIENTS / "easyedit" / "hparams" / "AlphaEdit" / "gpt2-xl.yaml")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"nullspace_threshold": 0.02}, r"AlphaEdit field\(s\) \['nullspace_threshold'\].*apply_alphaedit_to_model"),
        ({"P_lock": "p.pt"}, r"unknown or unsupported field\(s\) \['P_lock'\]"),
        ({"fact_token": "last"}, r"fact_token='last' is not supported"),
        ({"layer_selection": "random"}, "layer_selection='random'"),
        ({"layers": [2, 1]}, "increasing"),
        ({"v_lr": "fast"}, "v_lr must be a number"),
        ({"learning_rate": 1e-4}, "LaW field"),
    ],
)
def test_bad_hparams_name_the_field(change, match, tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps({**GPT2, **change}))
    with pytest.raises(HparamsError, match=match) as info:
        read_hparams(path)
    assert str(path) in str(info.value)
    bad = tmp_path / "bad.json"
    bad.write_text('{"layers": [1,\n')
    with pytest.raises(HparamsError, match="line 2: invalid JSON"):
        read_hparams(bad)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"rewrite_module_tmp": "transformer.h.{}.mlp.c_fc"}, "law_fast edits the MLP down-projection"),
        ({"layer_module_tmp": "transformer.blocks.{}"}, "layer_module_tmp"),
        ({"lm_head_module": "transformer.wpe"}, "not the model's output embedding"),
        ({"layers": [1, 9]}, r"layers \[9\] are beyond the model's 4 blocks"),
        ({"ln_f_module": "transformer.ln_1"}, "final norm"),
    ],
)
def test_module_templates_are_checked_against_the_model(change, match, tiny_tokenizer):
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    check_modules(read_hparams(GPT2), model)
    with pytest.raises(HparamsError, match=match):
        check_modules(read_hparams({**GPT2, **change}), model)


def test_stats_files_round_trip_and_are_checked(tmp_path):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 8, generator=g, dtype=torch.float64)
    stats = LayerStats(X.T @ X, 50)
    path = client_stats_path(tmp_path, "gpt2-xl", "wikipedia", "transformer.h.3.mlp.c_proj", "float64", 100)
    assert path == tmp_path / "gpt2-xl" / "wikipedia_stats" / "transformer.h.3.mlp.c_proj_float64_mom2_100.npz"
    write_client_stats(path, stats, "float64", sample_size=100)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["mom2.constructor", "mom2.count", "mom2.mom2", "sample_size"]
    back = read_client_stats(path, f=8)
    assert back.count == 50 and torch.equal(back.sum, stats.sum)
    with pytest.raises(ValueError, match=r"has shape \(8, 8\), the layer's keys need \(16, 16\)"):
        read_client_stats(path, f=16)
    cases = {
        "nan.npz": {"mom2.mom2": np.full((2, 2), np.nan), "mom2.count": np.array(3)},
        "count.npz": {"mom2.mom2": np.eye(2), "mom2.count": np.array(0)},
        "keys.npz": {"mean.mean": np.eye(2)},
        "shape.npz": {"mom2.mom2": np.ones((2, 3)), "mom2.count": np.array(3)},
        "pickle.npz": {"mom2.mom2": np.array([object()], dtype=object), "mom2.count": np.array(3)},
    }
    messages = {
        "nan.npz": "NaN",
        "count.npz": "mom2.count",
        "keys.npz": "no \\['mom2.mom2'",
        "shape.npz": "square",
        "pickle.npz": "allow_pickle=False",
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=messages.get(name, "cannot be read")) as info:
            read_client_stats(tmp_path / name)
        assert name in str(info.value)
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cut.npz: cannot be read"):
        read_client_stats(tmp_path / "cut.npz")


def test_missing_statistics_say_where_they_were_looked_for(tiny_tokenizer, tmp_path, monkeypatch):
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    model.config._name_or_path = "org/tiny"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"data/stats/org_tiny/wikipedia_stats/transformer.h.1.mlp.c_proj_float32_mom2_64.npz"
    ):
        apply_memit_to_model(model, tiny_tokenizer, [REQUEST], GPT2, progress=False)
    easy = {**GPT2, "alg_name": "MEMIT", "stats_dir": str(tmp_path / "ee"), "device": 0, "model_name": "x"}
    with pytest.raises(FileNotFoundError, match=r"ee/tiny/wikipedia_stats"):  # EasyEdit: the last path part
        apply_memit_to_model(model, tiny_tokenizer, [REQUEST], easy, progress=False)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['colour'\]"):
        apply_memit_to_model(model, tiny_tokenizer, [REQUEST], GPT2, colour=1)


def test_memit_edit_with_a_corpus_is_wash_with_the_answer_target(tiny_tokenizer, tmp_path, monkeypatch):
    """No statistics files: computed from corpus=; copy=True leaves the given model alone; the edit is
    law_fast's MEMIT with each request's target_new as the answer to emit (λ fixed), bit for bit; the
    originals come back.  (Whether an edit takes is measured on SmolLM2 in benchmarks/bench_dropin.py: a
    tiny random model's logits hardly move within the z* norm clamp.)"""
    tok = tiny_tokenizer
    model = make_tiny_model("gpt2", len(tok))
    model.config._name_or_path = "tiny"
    monkeypatch.chdir(tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    corpus = TOKENIZER_TEXT * 4
    edited, orig = apply_memit_to_model(
        model, tok, [REQUEST], GPT2, copy=True, return_orig_weights=True, corpus=corpus, progress=False
    )
    assert edited is not model and all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    names = ["transformer.h.1.mlp.c_proj.weight", "transformer.h.2.mlp.c_proj.weight"]
    assert sorted(orig) == names and all(torch.equal(orig[n], before[n]) for n in names)
    config = lf.WashConfig.create(
        method="memit",
        layers=(1, 2),
        lambda_rule="fixed",
        mom2_update_weight=50.0,
        target="answer",
        only_known=False,
        prune_requests=False,
        v_num_grad_steps=4,
        v_loss_layer=3,
        mom2_n_samples=64,
    )
    plain = copy.deepcopy(model)
    lf.wash(plain, tok, [lf.Fact("France", "The capital of {} is", "Rome", 7)], config, corpus=corpus, progress=False)
    for n in names:
        assert not torch.equal(edited.get_parameter(n), before[n])
        assert torch.equal(edited.get_parameter(n), plain.get_parameter(n))


def test_law_entry_washes_to_one_target(tiny_tokenizer, tmp_path, monkeypatch):
    tok = tiny_tokenizer
    model = make_tiny_model("gpt2", len(tok))
    model.config._name_or_path = "tiny"
    monkeypatch.chdir(tmp_path)
    law = {**GPT2, "learning_rate": 1e-6, "total_iters": 10, "prune_requests": 0, "skip_search": True}
    corpus = TOKENIZER_TEXT * 4
    requests = [
        {**REQUEST, "target_true": {"str": "Paris"}},
        {
            "case_id": 8,
            "prompt": "{} was founded by",
            "subject": "Apple",
            "target_new": {"str": "Paris"},
            "target_true": {"str": "Steve Jobs"},
        },
    ]
    with pytest.raises(RequestError, match="2 different target_new texts"):
        apply_law_to_model(copy.deepcopy(model), tok, requests, law, corpus=corpus, progress=False)
    with pytest.raises(HparamsError, match="runs LAW"):
        read_hparams({**GPT2, "alg_name": "MEMIT"}, "LAW")
    edited, orig = apply_law_to_model(
        copy.deepcopy(model),
        tok,
        requests,
        law,
        return_orig_weights=True,
        corpus=corpus,
        progress=False,
        edit_to=tok.eos_token,
        ds_name="mcf",
        alg_name="LAW",
    )
    names = sorted(orig)
    assert names == ["transformer.h.1.mlp.c_proj.weight", "transformer.h.2.mlp.c_proj.weight"]
    assert all(not torch.equal(edited.get_parameter(n), orig[n]) for n in names)
    with pytest.raises(ValueError, match="alg_name='MEMIT'"):
        apply_law_to_model(model, tok, requests, law, corpus=corpus, alg_name="MEMIT")


def test_given_statistics_are_checked(tiny_tokenizer):
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    facts = [lf.Fact("France", "The capital of {} is", "Paris", 0)]
    config = lf.WashConfig.create(layers=(1,), method="memit", only_known=False, v_num_grad_steps=2)
    bad = {1: LayerStats(torch.eye(8, dtype=torch.float64), 3)}
    with pytest.raises(ValueError, match=r"layer 1: shape \(8, 8\), the layer's keys need \(64, 64\)"):
        lf.wash(model, tiny_tokenizer, facts, config, stats=bad, progress=False)
    with pytest.raises(ValueError, match="layer 1 is edited"):
        lf.wash(model, tiny_tokenizer, facts, config, stats={2: bad[1]}, progress=False)
    with pytest.raises(ValueError, match=r"stats= is for the closed-form methods"):
        lf.wash(model, tiny_tokenizer, facts, config.replace(method="ft"), stats=bad, progress=False)


def test_cache_template_keeps_a_job_folder_per_request_set(tiny_tokenizer, tmp_path, monkeypatch):
    """The client's cache_template names the folder; law_fast keeps one job folder per request set in
    it (so other requests never collide with a stopped run's), and a rerun gives the same weights."""
    tok = tiny_tokenizer
    model = make_tiny_model("gpt2", len(tok))
    model.config._name_or_path = "tiny"
    monkeypatch.chdir(tmp_path)
    template = str(tmp_path / "kvs" / "layer_{}_clamp_{}_case_{}.npz")
    corpus = TOKENIZER_TEXT * 4
    other = {"case_id": 8, "prompt": "{} was founded by", "subject": "Apple", "target_new": {"str": "Paris"}}
    runs = [
        apply_memit_to_model(model, tok, reqs, GPT2, copy=True, cache_template=template, corpus=corpus, progress=False)[
            0
        ]
        for reqs in ([REQUEST], [other], [REQUEST])
    ]
    folders = sorted(p.name for p in (tmp_path / "kvs").iterdir())
    assert len(folders) == 2 and all(f.startswith("law_fast-") for f in folders)
    name = "transformer.h.2.mlp.c_proj.weight"
    assert torch.equal(runs[0].get_parameter(name), runs[2].get_parameter(name))
    assert not torch.equal(runs[0].get_parameter(name), runs[1].get_parameter(name))
