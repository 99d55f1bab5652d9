"""load_model refuses what would fail late or silently: missing weights, unusable tokenizers; and
short-context models are respected by the default corpus."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from law_fast.corpus import default_corpus
from law_fast.hf.adapters import get_adapter
from law_fast.hf.compat import max_length
from law_fast.hf.loading import load_model
from law_fast.testing import make_tiny_model
from law_fast.washing.stats import layer_stats


def _saved(tmp_path, tok, family="gpt2", name="model"):
    folder = tmp_path / name
    make_tiny_model(family, len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_complete_model_loads(tmp_path, tiny_tokenizer, family):
    model, tok = load_model(_saved(tmp_path, tiny_tokenizer, family))
    assert not model.training and tok.pad_token is not None


def test_missing_or_misshapen_weights_are_refused(tmp_path, tiny_tokenizer):
    folder = _saved(tmp_path, tiny_tokenizer)
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    edited = state.pop("transformer.h.1.mlp.c_proj.weight")
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \['transformer.h.1.mlp.c_proj.weight'\].*refusing"):
        load_model(folder)
    state["transformer.h.1.mlp.c_proj.weight"] = edited[:, :16].contiguous()
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="does not"):
        load_model(folder)


def test_unusable_tokenizers_are_refused(tmp_path, tiny_tokenizer):
    folder = _saved(tmp_path, tiny_tokenizer)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, bare / name)
    with pytest.raises(ValueError, match=f"{bare}: (no usable tokenizer|the tokenizer is empty)"):
        load_model(bare)
    # a tokenizer whose ids go beyond the model's embedding table
    small = tmp_path / "small"
    make_tiny_model("gpt2", 100).save_pretrained(small)
    with pytest.raises(ValueError, match="the tokenizer has 400 tokens but the model's embedding only 100 rows"):
        load_model(small, tokenizer=tiny_tokenizer)


def test_default_corpus_stays_within_a_short_context(tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=32, n_embd=32, n_layer=2, n_head=4))
    assert max_length(model, tiny_tokenizer) == 32
    corpus = default_corpus(model.eval(), tiny_tokenizer, n_texts=3, new_tokens=128)  # 128 would run past 32
    assert len(corpus.texts) == 3
    stats = layer_stats(model, get_adapter(model), tiny_tokenizer, corpus, [1], use_cache=False, progress=False)
    assert stats[1].count > 0 and bool(torch.isfinite(stats[1].sum).all())
