"""Covariance statistics C_ℓ = E[k kᵀ] of down-projection inputs over a corpus (law-reference §3).

One pass over the corpus serves every requested layer: each batch runs the model only up to
the deepest missing layer and accumulates the keys of all layers (padding excluded) with the
``cov_accumulate_`` op.  Results are cached per layer on disk as the raw sum and the token
count, keyed by model identity (name + weight fingerprint), layer, corpus identity (which
includes the sample count and seed), max length and accumulator dtype; files are written
atomically and a corrupt or mismatching file is recomputed with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .corpus import Corpus, load_corpus
from .generation import sample_continuations
from .models import Adapter, cache_dir, capture, model_device, model_fingerprint, model_name, run_until
from .ops import cov_accumulate_
from .tokens import padding_side

log = logging.getLogger(__name__)


@dataclass
class LayerStats:
    """Raw second-moment sum and token count of one layer's keys."""

    sum: torch.Tensor    # (f, f) float32/float64: Σ k kᵀ
    count: int           # number of tokens

    @property
    def cov(self) -> torch.Tensor:
        """C = Σ k kᵀ / count (uncentred)."""
        if self.count == 0:
            raise ValueError("no tokens were accumulated")
        return self.sum / self.count


def _stats_key(name: str, fingerprint: str, layer: int, corpus: Corpus, max_length: int, dtype: str) -> dict:
    return {"model": name, "fingerprint": fingerprint, "layer": layer, "corpus": corpus.identity,
            "max_length": max_length, "dtype": dtype, "version": 1}


def _cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key["model"])[-60:]
    return cache_dir() / "stats" / f"{safe}-{key['fingerprint']}" / f"layer{key['layer']}-{digest}.pt"


def _load_cached(path: Path, key: dict) -> LayerStats | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["key"] != json.dumps(key, sort_keys=True):
            raise ValueError("key mismatch")
        stats = LayerStats(blob["sum"], int(blob["count"]))
        if stats.sum.ndim != 2 or stats.sum.shape[0] != stats.sum.shape[1] or stats.count <= 0:
            raise ValueError("bad shapes or count")
        return stats
    except Exception as e:  # corrupt, truncated or foreign file: recompute, never use it
        warnings.warn(f"covariance cache {path} is unusable ({type(e).__name__}: {e}); recomputing", stacklevel=2)
        return None


def _save_atomic(path: Path, key: dict, stats: LayerStats) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"key": json.dumps(key, sort_keys=True), "sum": stats.sum.cpu(), "count": stats.count}, tmp)
    os.replace(tmp, path)


def token_batches(tokenizer, texts: Sequence[str], max_length: int, batch_tokens: int):
    """Yield right-padded batches (input_ids, attention_mask) whose padded size ≤ batch_tokens
    (or one sequence), documents sorted by length within groups of 256 to limit padding."""
    group = 256
    for start in range(0, len(texts), group):
        ids = tokenizer(list(texts[start:start + group]), truncation=True, max_length=max_length)["input_ids"]
        ids = sorted((x for x in ids if len(x) > 0), key=len, reverse=True)
        i = 0
        while i < len(ids):
            width = len(ids[i])
            n = max(1, batch_tokens // width)
            chunk = ids[i:i + n]
            i += len(chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, x in enumerate(chunk):
                input_ids[row, :len(x)] = torch.tensor(x)
                mask[row, :len(x)] = 1
            yield input_ids, mask


@torch.no_grad()
def layer_stats(model, adapter: Adapter, tokenizer, corpus: Corpus, layers: Sequence[int], max_length: int = 1024,
                batch_tokens: int = 4096, dtype: str = "float64", use_cache: bool = True,
                progress: bool = True) -> dict[int, LayerStats]:
    """Statistics of every layer in ``layers`` from one pass over ``corpus`` (cached layers are skipped)."""
    max_length = min(max_length, getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", max_length))
    name, fingerprint = model_name(model), model_fingerprint(model)
    keys = {layer: _stats_key(name, fingerprint, layer, corpus, max_length, dtype) for layer in layers}
    result: dict[int, LayerStats] = {}
    if use_cache:
        for layer in layers:
            cached = _load_cached(_cache_path(keys[layer]), keys[layer])
            if cached is not None:
                result[layer] = cached
    missing = [layer for layer in layers if layer not in result]
    if not missing:
        return result
    device = model_device(model)
    acc_dtype = getattr(torch, dtype)
    sums = {layer: torch.zeros((adapter.dims(model, layer)[1],) * 2, dtype=acc_dtype, device=device) for layer in missing}
    counts = {layer: torch.zeros((), dtype=torch.long, device=device) for layer in missing}
    bar = tqdm(desc=f"covariance L{missing}", unit="tok", disable=not progress, unit_scale=True)
    with padding_side(tokenizer, "right"):
        for input_ids, mask in token_batches(tokenizer, corpus.texts, max_length, batch_tokens):
            input_ids, mask = input_ids.to(device), mask.to(device)
            with capture(model, adapter, key_layers=missing, stop_after=max(missing)) as store:
                run_until(model, input_ids=input_ids, attention_mask=mask)
            real = mask.bool()
            for layer in missing:
                cov_accumulate_(store[("key", layer)][real], sums[layer], counts[layer])
            bar.update(int(real.sum()))
    bar.close()
    for layer in missing:
        stats = LayerStats(sums[layer].cpu(), int(counts[layer]))
        if stats.count == 0:
            raise ValueError(f"corpus {corpus.identity} yielded no tokens")
        if use_cache:
            _save_atomic(_cache_path(keys[layer]), keys[layer], stats)
        result[layer] = stats
    return result


DEFAULT_CORPUS_PROMPTS = (
    "The", "In", "A", "It", "He", "She", "They", "We", "This", "When", "After", "Although", "Many", "Some", "One",
    "Today", "History", "Science", "According to", "During the", "My", "There", "If", "Why", "How", "What",
    "The city of", "The team", "Scientists", "The government", "In 1990,", "Music", "The company", "Water",
    "The first", "Students", "Our", "Every", "Most", "At the", "For", "Two", "Although the", "Researchers",
    "The book", "The river", "People", "Yesterday",
)


def default_corpus(model, tokenizer, n_texts: int = 64, new_tokens: int = 128, seed: int = 1234) -> Corpus:
    """The embedded default corpus: text sampled from the model itself (top-40, fixed seed).

    Needs no download and no licence; it is cached on disk per model fingerprint.  It is a
    stand-in for real text: for real runs pass a corpus (e.g. WikiText or Wikipedia)."""
    ident = f"sampled:{model_name(model)}:{model_fingerprint(model)}:n={n_texts}:len={new_tokens}:seed={seed}"
    path = cache_dir() / "corpora" / (hashlib.sha256(ident.encode()).hexdigest()[:20] + ".json")
    texts = None
    if path.is_file():
        try:
            blob = json.loads(path.read_text())
            texts = blob["texts"] if blob.get("identity") == ident else None
        except (json.JSONDecodeError, KeyError, TypeError):
            texts = None
    if texts is None:
        prompts = [DEFAULT_CORPUS_PROMPTS[i % len(DEFAULT_CORPUS_PROMPTS)] for i in range(n_texts)]
        conts = sample_continuations(model, tokenizer, prompts, max_new_tokens=new_tokens, top_k=40, seed=seed,
                                     batch_size=64, desc="sampling default corpus")
        texts = [p + c for p, c in zip(prompts, conts)]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"identity": ident, "texts": texts}))
        os.replace(tmp, path)
    return load_corpus(texts)
