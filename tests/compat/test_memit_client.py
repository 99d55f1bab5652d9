"""law_fast.compat.apply_memit_to_model side by side with the real MEMIT client (kmeng01/memit,
../shared/clients/memit): the same edited weights on tiny GPT-2 and GPT-J models in float64, for
editing and for the EOS target, with the same statistics file and context templates given to both."""

from __future__ import annotations

import copy

import pytest
import torch
from client_harness import HPARAMS, MODULES, memit_client, need_memit

import law_fast as lf
from law_fast.compat import apply_memit_to_model, client_stats_path, write_client_stats
from law_fast.testing import make_tiny_model
from law_fast.washing.stats import LayerStats, layer_stats
from law_fast.washing.templates import context_templates

REQUESTS = [
    {"case_id": 0, "prompt": "The capital of {} is", "subject": "France", "target_new": {"str": "Rome"}},
    {
        "case_id": 1,
        "prompt": "The mother tongue of {} is",
        "subject": "Danielle Darrieux",
        "target_new": {"str": "English"},
    },
    {"case_id": 2, "prompt": "{} was founded by", "subject": "Apple", "target_new": {"str": "Steve Jobs"}},
]
CORPUS = [
    "The man is a teacher and a writer in the city of London.",
    "I think that you should go because it is late. Therefore we stay.",
    "hello world this is text about science, history and music.",
] * 8


def _setup(family, tok, tmp_path):
    """A float64 tiny model named for the clients' stats path, and its statistics written where MEMIT
    reads them (float32 second moment over one 'token': the C both packages then use is identical)."""
    model = make_tiny_model(family, len(tok)).double()
    model.config._name_or_path = f"tiny/{family}"
    h = {**HPARAMS, **MODULES[family]}
    adapter = lf.get_adapter(model)
    stats = layer_stats(model, adapter, tok, lf.load_corpus(CORPUS), h["layers"], use_cache=False, progress=False)
    for layer in h["layers"]:
        C = (stats[layer].sum / stats[layer].count).float()  # the client casts its C to float32
        path = client_stats_path(
            tmp_path / "data" / "stats",
            f"tiny_{family}",
            "wikipedia",
            h["rewrite_module_tmp"].format(layer),
            "float32",
            64,
        )
        write_client_stats(path, LayerStats(C.double(), 1), "float32", sample_size=64)
    return model, h


def _deltas(before, after, names):
    return {n: after.get_parameter(n).detach() - before.get_parameter(n).detach() for n in names}


@pytest.mark.parametrize("family", ["gpt2", "gptj"])
@pytest.mark.parametrize("target", ["edit", "eos"])
@pytest.mark.parametrize("float64_delta", [True, False])
def test_same_edited_weights_as_the_memit_client(family, target, float64_delta, tiny_tokenizer, tmp_path, monkeypatch):
    """Within 1e-6 once the client's z* offset δ is float64 as the model (the rest of the difference
    is its float32 cast of the update when it adds it); with its own float32 δ (``torch.zeros`` without
    a dtype in compute_z) its z* carry float32 rounding through Adam: a pinned 1e-6..1e-3."""
    need_memit()
    tok = tiny_tokenizer
    model, h = _setup(family, tok, tmp_path)
    requests = copy.deepcopy(REQUESTS)
    if target == "eos":
        for r in requests:
            r["target_new"] = {"str": tok.eos_token}
    templates = context_templates(model, tok, seed=0, length=10)  # what law_fast's wash samples
    names = [f"{h['rewrite_module_tmp'].format(layer)}.weight" for layer in h["layers"]]

    monkeypatch.chdir(tmp_path)  # MEMIT's data/stats; law_fast looks there too
    ours_model, ours_orig = apply_memit_to_model(
        copy.deepcopy(model), tok, requests, h, return_orig_weights=True, progress=False
    )
    with memit_client(tmp_path, float64_delta=float64_delta) as memit:
        from memit import memit_main
        from memit.memit_hparams import MEMITHyperParams

        memit_main.CONTEXT_TEMPLATES_CACHE = [["{}"], templates[1:]]  # theirs are sampled without a seed
        memit_main.COV_CACHE.clear()
        theirs_model, theirs_orig = memit.apply_memit_to_model(
            copy.deepcopy(model), tok, copy.deepcopy(requests), MEMITHyperParams(**h), return_orig_weights=True
        )
    assert sorted(ours_orig) == sorted(theirs_orig) == sorted(names)
    for n in names:
        torch.testing.assert_close(ours_orig[n], theirs_orig[n], rtol=0, atol=0)
    ours, theirs = _deltas(model, ours_model, names), _deltas(model, theirs_model, names)
    for n in names:
        rel = float((ours[n] - theirs[n]).norm() / theirs[n].norm())
        assert theirs[n].norm() > 0
        if float64_delta:
            assert rel < 1e-6, (n, rel)
        else:
            assert 1e-6 < rel < 1e-3, (n, rel)
