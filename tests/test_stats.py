"""Covariance statistics: one pass for all layers, padding excluded, cache keyed and verified."""

import warnings

import pytest
import torch

from law_fast.corpus import load_corpus
from law_fast.models import capture, get_adapter, run_until
from law_fast.stats import _cache_path, _stats_key, layer_stats

TEXTS = [f"Document {i}: " + " ".join(["the river and the city"] * (1 + i % 5)) for i in range(23)]


def _manual_sum(model, adapter, tok, texts, layer):
    """Σ k kᵀ in float64, one unpadded document at a time through the full model."""
    f = adapter.dims(model, layer)[1]
    total, count = torch.zeros(f, f, dtype=torch.float64), 0
    for text in texts:
        ids = tok(text, return_tensors="pt")
        with torch.no_grad(), capture(model, adapter, key_layers=[layer]) as store:
            model(**ids)
        k = store[("key", layer)][0].double()
        total += k.T @ k
        count += k.shape[0]
    return total, count


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_single_pass_equals_per_layer_unpadded(family, tiny_tokenizer):
    from conftest import make_tiny_model

    model = make_tiny_model(family, len(tiny_tokenizer))
    adapter = get_adapter(model)
    corpus = load_corpus(TEXTS)
    stats = layer_stats(model, adapter, tiny_tokenizer, corpus, [0, 1, 3], batch_tokens=64, use_cache=False, progress=False)
    for layer in (0, 1, 3):
        expected, count = _manual_sum(model, adapter, tiny_tokenizer, TEXTS, layer)
        assert stats[layer].count == count
        torch.testing.assert_close(stats[layer].sum, expected, rtol=1e-5, atol=1e-4)
        separate = layer_stats(model, adapter, tiny_tokenizer, corpus, [layer], batch_tokens=64, use_cache=False, progress=False)
        torch.testing.assert_close(separate[layer].sum, stats[layer].sum, rtol=1e-6, atol=1e-6)


def test_cache_reuse_key_changes_and_corruption(tiny_tokenizer):
    from conftest import make_tiny_model

    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    adapter = get_adapter(model)
    corpus = load_corpus(TEXTS)
    first = layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False)
    key = _stats_key("x", "fp", 1, corpus, 64, "float64")
    base = _cache_path(key)
    for change in [dict(name="y"), dict(fingerprint="fq"), dict(layer=2), dict(corpus=load_corpus(TEXTS[:-1])),
                   dict(max_length=32), dict(dtype="float32")]:
        args = dict(name="x", fingerprint="fp", layer=1, corpus=corpus, max_length=64, dtype="float64") | change
        assert _cache_path(_stats_key(**args)) != base, change
    # a cached result is reused: same numbers without running the model
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    again = layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False)
    handle.remove()
    assert not calls and torch.equal(again[1].sum, first[1].sum) and again[1].count == first[1].count
    # a truncated file is detected, warned about and recomputed (never used)
    from law_fast.models import model_fingerprint, model_name

    path = _cache_path(_stats_key(model_name(model), model_fingerprint(model), 1, corpus, 64, "float64"))
    assert path.is_file()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unusable"):
        redo = layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False)
    torch.testing.assert_close(redo[1].sum, first[1].sum)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False)  # rewritten, valid again


def test_empty_corpus_is_an_error(tiny_tokenizer):
    from law_fast.corpus import CorpusError

    with pytest.raises(CorpusError):
        load_corpus(["", "   "])
