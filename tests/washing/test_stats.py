"""Covariance statistics: one pass for all layers, padding excluded, cache keyed and verified, resumable."""

import warnings
from pathlib import Path

import pytest
import torch

import law_fast.washing.stats as stats_module
from law_fast.corpus import load_corpus
from law_fast.hf.adapters import get_adapter
from law_fast.hf.hooks import capture
from law_fast.hf.loading import cache_dir
from law_fast.washing.stats import _cache_path, _stats_key, layer_stats, token_batches, tokenize_documents

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
    stats = layer_stats(
        model, adapter, tiny_tokenizer, corpus, [0, 1, 3], batch_tokens=64, use_cache=False, progress=False
    )
    for layer in (0, 1, 3):
        expected, count = _manual_sum(model, adapter, tiny_tokenizer, TEXTS, layer)
        assert stats[layer].count == count
        torch.testing.assert_close(stats[layer].sum, expected, rtol=1e-5, atol=1e-4)
        separate = layer_stats(
            model, adapter, tiny_tokenizer, corpus, [layer], batch_tokens=64, use_cache=False, progress=False
        )
        torch.testing.assert_close(separate[layer].sum, stats[layer].sum, rtol=1e-6, atol=1e-6)


def test_cache_reuse_key_changes_and_corruption(tiny_tokenizer):
    from conftest import make_tiny_model

    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    adapter = get_adapter(model)
    corpus = load_corpus(TEXTS)
    first = layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False)
    key = _stats_key("x", "fp", 1, corpus, 64, "float64")
    base = _cache_path(key)
    for change in [
        dict(name="y"),
        dict(fingerprint="fq"),
        dict(layer=2),
        dict(corpus=load_corpus(TEXTS[:-1])),
        dict(max_length=32),
        dict(dtype="float32"),
        dict(block_tokens=65536),
    ]:
        args = dict(name="x", fingerprint="fp", layer=1, corpus=corpus, max_length=64, dtype="float64") | change
        assert _cache_path(_stats_key(**args)) != base, change
    # a cached result is reused: same numbers without running the model
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    again = layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False)
    handle.remove()
    assert not calls and torch.equal(again[1].sum, first[1].sum) and again[1].count == first[1].count
    # a truncated file is detected, warned about and recomputed (never used)
    from law_fast.hf.adapters import model_fingerprint, model_name

    path = _cache_path(_stats_key(model_name(model), model_fingerprint(model), 1, corpus, 64, "float64"))
    assert path.is_file()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unusable"):
        redo = layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False)
    torch.testing.assert_close(redo[1].sum, first[1].sum)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer_stats(
            model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False
        )  # rewritten, valid again


def _tamper_sum(path, change):
    """Rewrite a cache file with its payload changed by ``change(blob)`` but its key (and, unless the
    change touches it, its old digest) kept — what a bug, a foreign writer or a disk fault leaves."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    change(blob)
    torch.save(blob, path)


def _flip_one_bit(blob):
    flat = blob["sum"].view(-1).view(torch.uint8)
    flat[len(flat) // 2] ^= 1


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("wrong size", lambda blob: blob.update(sum=blob["sum"][:16, :16].clone())),
        ("NaN", lambda blob: blob["sum"].view(-1).__setitem__(5, float("nan"))),
        ("float16", lambda blob: blob.update(sum=blob["sum"].half())),
        ("flipped bit", _flip_one_bit),
        ("zero count", lambda blob: blob.update(count=0)),
        ("not a dict", lambda blob: (blob.clear(), blob.update(key="x"))),
    ],
)
def test_cache_payload_is_checked_before_it_is_trusted(name, change, tiny_tokenizer, tmp_path, monkeypatch):
    """A cache file whose key matches but whose payload is wrong is never used: it is recomputed (same
    result as a fresh computation) with a warning naming the file."""
    from conftest import make_tiny_model

    from law_fast.hf.adapters import model_fingerprint, model_name

    monkeypatch.setenv("LAW_FAST_CACHE", str(tmp_path))
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    adapter = get_adapter(model)
    corpus = load_corpus(TEXTS)
    first = layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False)[1]
    path = _cache_path(_stats_key(model_name(model), model_fingerprint(model), 1, corpus, 64, "float64"))
    _tamper_sum(path, change)
    with pytest.warns(UserWarning, match=f"covariance cache {path} is unusable"):
        again = layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False)[1]
    assert again.sum.shape == first.sum.shape and again.sum.dtype == first.sum.dtype
    assert torch.equal(again.sum, first.sum) and again.count == first.count


def test_statistics_of_models_differing_at_one_weight_are_not_shared(tiny_tokenizer, tmp_path, monkeypatch):
    from conftest import make_tiny_model

    monkeypatch.setenv("LAW_FAST_CACHE", str(tmp_path))
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    adapter = get_adapter(model)
    corpus = load_corpus(TEXTS)
    first = layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False)[1]
    # one value of the embedding (12,800 values) of a token the corpus uses, at a position that a strided
    # sample of 4096 values (law_fast 0.1's fingerprint: every 3rd here) skips
    embedding = model.transformer.wte.weight
    token = tiny_tokenizer(TEXTS[0])["input_ids"][1]
    index = next(i for i in range(token * 32, token * 32 + 32) if i % 3)
    with torch.no_grad():
        embedding.view(-1)[index] += 0.5
    second = layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, progress=False)[1]
    fresh = layer_stats(model, adapter, tiny_tokenizer, corpus, [1], max_length=64, use_cache=False, progress=False)[1]
    assert not torch.equal(second.sum, first.sum) and torch.equal(second.sum, fresh.sum)


def test_empty_corpus_is_an_error(tiny_tokenizer):
    from law_fast.corpus import CorpusError

    with pytest.raises(CorpusError):
        load_corpus(["", "   "])


def test_blocked_accumulation_is_float64_and_close(tiny_tokenizer):
    from conftest import make_tiny_model

    model = make_tiny_model("llama", len(tiny_tokenizer))
    adapter = get_adapter(model)
    corpus = load_corpus(TEXTS)
    kwargs = dict(batch_tokens=64, use_cache=False, progress=False)
    exact = layer_stats(model, adapter, tiny_tokenizer, corpus, [2], dtype="float64", **kwargs)[2]
    blocked = layer_stats(model, adapter, tiny_tokenizer, corpus, [2], dtype="float32", block_tokens=100, **kwargs)[2]
    assert blocked.sum.dtype == torch.float64 and blocked.count == exact.count
    torch.testing.assert_close(blocked.sum, exact.sum, rtol=1e-5, atol=1e-5)
    assert not torch.equal(blocked.sum, exact.sum)  # it did run in float32


def test_token_batches_resume_from_any_position(tiny_tokenizer, monkeypatch):
    """The batch stream is deterministic: starting at a batch's position yields the batches after it."""
    monkeypatch.setattr(stats_module, "SORT_GROUP", 8)  # several groups, positions inside and at ends of groups
    documents = tokenize_documents(tiny_tokenizer, TEXTS + [""], max_length=64)
    full = list(token_batches(documents, 48, 0))
    assert full[-1][2] == len(documents) and sum(int(m.sum()) for _, m, _ in full) == sum(map(len, documents))
    for j, (_, _, position) in enumerate(full):
        rest = list(token_batches(documents, 48, 0, start=position))
        assert len(rest) == len(full) - j - 1
        for (ids_a, mask_a, pos_a), (ids_b, mask_b, pos_b) in zip(rest, full[j + 1 :]):
            assert torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b) and pos_a == pos_b


class _Interrupt(RuntimeError):
    pass


def _count_forwards(model):
    calls = []

    def hook(module, args, kwargs):
        calls.append(1)

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


def _interrupt_after(model, batches):
    calls, handle = _count_forwards(model)

    def hook(module, args, kwargs):
        if len(calls) > batches:
            raise _Interrupt(f"simulated kill after {batches} batches")

    return handle, model.register_forward_pre_hook(hook, with_kwargs=True)


def _checkpoints() -> list[Path]:
    return sorted((cache_dir() / "stats").rglob("checkpoint-*.pt"))


@pytest.mark.parametrize("dtype,block_tokens", [("float64", None), ("float32", 70)])
def test_resume_equals_uninterrupted(dtype, block_tokens, tiny_tokenizer, tmp_path, monkeypatch):
    from conftest import make_tiny_model

    monkeypatch.setattr(stats_module, "SORT_GROUP", 8)  # resume across and inside length-sorted groups
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    adapter = get_adapter(model)
    corpus = load_corpus(TEXTS)
    kwargs = dict(batch_tokens=64, dtype=dtype, block_tokens=block_tokens, checkpoint_every_tokens=40, progress=False)

    monkeypatch.setenv("LAW_FAST_CACHE", str(tmp_path / "uninterrupted"))
    calls, handle = _count_forwards(model)
    whole = layer_stats(model, adapter, tiny_tokenizer, corpus, [0, 2], **kwargs)
    handle.remove()
    n_batches = len(calls)
    assert n_batches > 6 and not _checkpoints()  # the checkpoint is gone once the cache files exist

    monkeypatch.setenv("LAW_FAST_CACHE", str(tmp_path / "interrupted"))
    handles = _interrupt_after(model, 6)
    with pytest.raises(_Interrupt):
        layer_stats(model, adapter, tiny_tokenizer, corpus, [0, 2], **kwargs)
    for h in handles:
        h.remove()
    assert len(_checkpoints()) == 1
    calls, handle = _count_forwards(model)
    resumed = layer_stats(model, adapter, tiny_tokenizer, corpus, [0, 2], **kwargs)
    handle.remove()
    assert 0 < len(calls) <= n_batches - 3  # continued, not restarted (checkpoints every ~1–2 batches)
    assert not _checkpoints()
    for layer in (0, 2):
        assert resumed[layer].count == whole[layer].count
        assert resumed[layer].sum.dtype == whole[layer].sum.dtype
        assert torch.equal(resumed[layer].sum, whole[layer].sum)  # bit-identical


def test_checkpoint_of_other_corpus_or_corrupt_is_not_used(tiny_tokenizer, tmp_path, monkeypatch):
    from conftest import make_tiny_model

    monkeypatch.setenv("LAW_FAST_CACHE", str(tmp_path))
    model = make_tiny_model("llama", len(tiny_tokenizer))
    adapter = get_adapter(model)
    corpus_a, corpus_b = load_corpus(TEXTS), load_corpus(TEXTS[::-1])
    kwargs = dict(batch_tokens=64, checkpoint_every_tokens=40, progress=False)
    fresh = {
        name: layer_stats(model, adapter, tiny_tokenizer, corpus, [1], use_cache=False, **kwargs)[1]
        for name, corpus in (("a", corpus_a), ("b", corpus_b))
    }
    calls, handle = _count_forwards(model)
    layer_stats(model, adapter, tiny_tokenizer, corpus_a, [1], use_cache=False, **kwargs)
    handle.remove()
    n_batches = len(calls)

    handles = _interrupt_after(model, 4)
    with pytest.raises(_Interrupt):
        layer_stats(model, adapter, tiny_tokenizer, corpus_a, [1], **kwargs)
    for h in handles:
        h.remove()
    (checkpoint_a,) = _checkpoints()

    # another corpus: A's checkpoint is neither used nor removed, and the user is told it is there
    calls, handle = _count_forwards(model)
    with pytest.warns(UserWarning, match=f"1 statistics checkpoint.*{checkpoint_a.name}"):
        other = layer_stats(model, adapter, tiny_tokenizer, corpus_b, [1], **kwargs)[1]
    handle.remove()
    assert len(calls) == n_batches and torch.equal(other.sum, fresh["b"].sum)
    assert _checkpoints() == [checkpoint_a]

    # a checkpoint with one flipped bit in its sums is ignored with a warning
    intact = checkpoint_a.read_bytes()
    blob = torch.load(checkpoint_a, map_location="cpu", weights_only=True)
    blob["layers"]["1"]["block"].view(-1).view(torch.uint8)[7] ^= 4
    torch.save(blob, checkpoint_a)
    with pytest.warns(UserWarning, match="checkpoint .* is unusable .*digest"):
        flipped = layer_stats(model, adapter, tiny_tokenizer, corpus_a, [1], **kwargs)[1]
    assert torch.equal(flipped.sum, fresh["a"].sum)
    for cached in tmp_path.rglob("layer*.pt"):  # back to the interrupted state: no result, the checkpoint
        cached.unlink()
    checkpoint_a.write_bytes(intact)

    # a truncated checkpoint is ignored with a warning: full pass, same result
    checkpoint_a.write_bytes(checkpoint_a.read_bytes()[:200])
    calls, handle = _count_forwards(model)
    with pytest.warns(UserWarning, match="checkpoint .* is unusable"):
        again = layer_stats(model, adapter, tiny_tokenizer, corpus_a, [1], **kwargs)[1]
    handle.remove()
    assert len(calls) == n_batches and torch.equal(again.sum, fresh["a"].sum)
    assert not _checkpoints()


def test_stats_command_progress_and_no_cache(tmp_path, tiny_tokenizer, capsys, monkeypatch):
    from conftest import make_tiny_model

    from law_fast.cli import main

    monkeypatch.setenv("LAW_FAST_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "tiny"
    make_tiny_model("llama", len(tiny_tokenizer)).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS))
    args = ["stats", "--model", str(model_dir), "--corpus", str(corpus), "--layers", "1-2", "--max-length", "64"]
    assert main([*args, "--no-cache"]) == 0
    captured = capsys.readouterr()
    assert "layer 1:" in captured.out and "layer 2:" in captured.out
    assert "100%" in captured.err and "tok/s" in captured.err  # a bar with a known total, a rate and an ETA
    assert not (tmp_path / "cache" / "stats").exists()
    assert main([*args, "--dtype", "float32", "--block-tokens", "100"]) == 0
    assert len(list((tmp_path / "cache" / "stats").rglob("layer*.pt"))) == 2
