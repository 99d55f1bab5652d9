"""EasyEdit's ``BaseEditor.batch_edit`` running on law_fast through ``law_fast.compat.easyedit.register()``,
with the real ``easyeditor`` from ../shared/clients/easyedit (the optional packages this machine lacks
stubbed: law_fast.testing.easyedit_client): the same edited weights as calling law_fast's entry points
directly, on a tiny GPT-2 that EasyEdit loads from disk itself."""

from __future__ import annotations

import pytest
import torch
import yaml
from client_harness import CLIENTS, HPARAMS, MODULES, easyedit_client

import law_fast as lf
from law_fast.compat import (
    HparamsError,
    apply_alphaedit_to_model,
    apply_law_to_model,
    apply_memit_to_model,
    export_client_stats,
)
from law_fast.compat.easyedit import BACKENDS, LawHyperParams, register
from law_fast.testing import TOKENIZER_TEXT, make_tiny_model
from law_fast.washing.stats import layer_stats

GPT2_TOKENIZER = CLIENTS.parent / "data" / "tokenizers" / "gpt2"
PROMPTS = ["The capital of France is", "The mother tongue of Danielle Darrieux is", "Apple was founded by"]
SUBJECTS = ["France", "Danielle Darrieux", "Apple"]
NEW = ["Rome", "English", "Steve Jobs"]
TRUE = ["Paris", "French", "Steve Jobs"]


@pytest.fixture(scope="module")
def easyeditor(tmp_path_factory):
    with easyedit_client(tmp_path_factory.mktemp("easyedit_cwd")) as (module, stubbed):
        yield module


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny GPT-2 saved with the GPT-2 tokenizer in a folder whose name holds "gpt2" (EasyEdit picks its
    loader and tokenizer class by the name), and its statistics written where EasyEdit looks."""
    from transformers import GPT2Tokenizer

    if not (GPT2_TOKENIZER / "vocab.json").is_file():
        pytest.skip(f"the GPT-2 tokenizer is not at {GPT2_TOKENIZER} (../shared/data)")
    root = tmp_path_factory.mktemp("easyedit_model")
    folder = root / "tiny-gpt2"
    tok = GPT2Tokenizer(str(GPT2_TOKENIZER / "vocab.json"), str(GPT2_TOKENIZER / "merges.txt"))
    tok.save_pretrained(folder)
    model = make_tiny_model("gpt2", len(tok))
    model.save_pretrained(folder)
    model.config._name_or_path = str(folder)
    stats = layer_stats(
        model, lf.get_adapter(model), tok, lf.load_corpus(TOKENIZER_TEXT * 4), HPARAMS["layers"], progress=False
    )
    export_client_stats(stats, model, root / "stats", "easyedit", "wikipedia", sample_size=64)
    hparams = {
        **HPARAMS,
        **MODULES["gpt2"],
        "v_num_grad_steps": 4,
        "alg_name": "MEMIT",
        "model_name": str(folder),
        "stats_dir": str(root / "stats"),
        "device": "cpu",
        "batch_size": len(PROMPTS),
        "max_length": 40,
        "model_parallel": False,
    }
    path = root / "memit-tiny-gpt2.yaml"
    path.write_text(yaml.safe_dump(hparams))
    return folder, path, hparams


def _load(folder):
    from transformers import AutoModelForCausalLM, GPT2Tokenizer

    tok = GPT2Tokenizer.from_pretrained(folder)  # as EasyEdit's BaseEditor loads a "gpt" model
    tok.pad_token_id = tok.eos_token_id
    return AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32), tok


def _weights(model, hparams):
    return {
        n: model.get_parameter(n).detach().clone()
        for n in (f"{hparams['rewrite_module_tmp'].format(layer)}.weight" for layer in hparams["layers"])
    }


def test_register_adds_and_unregister_restores(easyeditor):
    from easyeditor.editors.batch_editor import BatchEditor
    from easyeditor.util.alg_dict import ALG_DICT

    theirs = ALG_DICT["MEMIT"]
    assert not BatchEditor.is_batchable_method("LAW")
    theirs_alpha = ALG_DICT["AlphaEdit"]
    unregister = register(replace_memit=True, replace_alphaedit=True)
    try:
        assert ALG_DICT["MEMIT"] is apply_memit_to_model and ALG_DICT["AlphaEdit"] is apply_alphaedit_to_model
        assert BatchEditor.is_batchable_method("AlphaEdit")
        assert all(ALG_DICT[name] is fn for name, fn in BACKENDS.items())
        assert BatchEditor.is_batchable_method("LAW") and BatchEditor.is_batchable_method("LAW_FAST_MEMIT")
        assert BatchEditor.is_batchable_method("ROME") is False and BatchEditor.is_batchable_method("EMMET")
    finally:
        unregister()
    assert ALG_DICT["MEMIT"] is theirs and "LAW" not in ALG_DICT and "LAW_FAST_MEMIT" not in ALG_DICT
    assert ALG_DICT["AlphaEdit"] is theirs_alpha
    assert not BatchEditor.is_batchable_method("LAW") and BatchEditor.is_batchable_method("MEMIT")


def test_batch_edit_runs_law_fast_memit(easyeditor, saved):
    """Their YAML, their MEMITHyperParams, their BaseEditor: the edited weights are law_fast's."""
    from easyeditor import BaseEditor, MEMITHyperParams

    folder, path, hparams = saved
    unregister = register(replace_memit=True)
    try:
        editor = BaseEditor.from_hparams(MEMITHyperParams.from_hparams(str(path)))
        original = _weights(editor.model, hparams)
        metrics, edited, _ = editor.batch_edit(
            prompts=PROMPTS, target_new=NEW, ground_truth=TRUE, subject=SUBJECTS, sequential_edit=True
        )
    finally:
        unregister()
    assert len(metrics) == len(PROMPTS) and all("post" in m for m in metrics)
    model, tok = _load(folder)
    requests = [
        {"prompt": p, "subject": s, "target_new": n, "ground_truth": t}
        for p, s, n, t in zip(PROMPTS, SUBJECTS, NEW, TRUE)
    ]
    direct, orig = apply_memit_to_model(model, tok, requests, str(path), return_orig_weights=True, progress=False)
    got, want = _weights(edited, hparams), _weights(direct, hparams)
    for name in got:
        assert torch.equal(orig[name], original[name])
        assert not torch.equal(got[name], original[name]), f"{name} was not edited"
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7)


def test_batch_edit_runs_law_washing(easyeditor, saved, tmp_path):
    """alg_name "LAW" with LawHyperParams: every fact washed to EOS, the same weights as apply_law_to_model."""
    from easyeditor import BaseEditor

    folder, _, memit = saved
    law = {
        **memit,
        "alg_name": "LAW",
        "learning_rate": 1e-6,
        "total_iters": 10,
        "prune_requests": 0,
        "skip_search": True,
    }
    path = tmp_path / "law.yaml"
    path.write_text(yaml.safe_dump(law))
    unregister = register()
    try:
        editor = BaseEditor.from_hparams(LawHyperParams.from_hparams(path))
        eos = editor.tok.eos_token
        original = _weights(editor.model, law)
        _, edited, _ = editor.batch_edit(
            prompts=PROMPTS, target_new=[eos] * 3, ground_truth=TRUE, subject=SUBJECTS, sequential_edit=True
        )
    finally:
        unregister()
    model, tok = _load(folder)
    requests = [
        {"prompt": p, "subject": s, "target_new": eos, "ground_truth": t} for p, s, t in zip(PROMPTS, SUBJECTS, TRUE)
    ]
    direct, _ = apply_law_to_model(model, tok, requests, LawHyperParams.from_hparams(path), progress=False)
    got, want = _weights(edited, law), _weights(direct, law)
    for name in got:
        assert not torch.equal(got[name], original[name]), f"{name} was not washed"
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7)


def test_law_hyperparams_are_checked(saved, tmp_path):
    _, _, memit = saved
    bad = tmp_path / "law.yaml"
    bad.write_text(yaml.safe_dump({**memit, "alg_name": "LAW", "learning_rte": 1e-6}))
    with pytest.raises(HparamsError, match=r"law\.yaml.*learning_rte"):
        LawHyperParams.from_hparams(bad)
    no_device = {k: v for k, v in memit.items() if k != "device"} | {"alg_name": "LAW"}
    with pytest.raises(HparamsError, match="missing field 'device'"):
        LawHyperParams.from_hparams(no_device)
    h = LawHyperParams.from_hparams({**memit, "alg_name": "LAW"})
    assert (h.alg_name, h.batch_size, h.model_parallel, h.layers) == ("LAW", len(PROMPTS), False, [1, 2])
