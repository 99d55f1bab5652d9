"""Covariance statistics C_ℓ = E[k kᵀ] of down-projection inputs over a corpus (law-reference §3).

One pass over the corpus serves every requested layer: each batch runs the model only up to
the deepest missing layer and accumulates the keys of all layers (padding excluded) with the
``cov_accumulate_`` op.  Results are cached per layer on disk as the raw sum and the token
count, keyed by model identity (name + a hash of every weight), layer, corpus identity (which
includes the sample count and seed), max length, accumulator dtype and block size; files are
written atomically with a digest of their payload, and a file whose key, digest, shape, dtype or
finiteness is wrong is recomputed with a warning, never used.

Resume: every ``checkpoint_every_tokens`` tokens the partial sums, the token count and the
position in the (deterministic) batch stream are written atomically to a checkpoint file next
to the cache files, keyed like them plus the layer set and ``batch_tokens``.  A rerun with the
same arguments continues from it and gives bit-identical sums; the checkpoint is deleted once
the per-layer cache files are written.  See docs/statistics.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import dist
from ..corpus import Corpus
from ..hf.adapters import Adapter, model_device, model_fingerprint, model_name
from ..hf.compat import max_length as context_length
from ..hf.compat import pad_id
from ..hf.hooks import capture, run_until
from ..hf.loading import cache_dir
from ..integrity import read_verified, write_atomic
from ..ops import cov_accumulate_

log = logging.getLogger(__name__)

SORT_GROUP = 256  # documents are length-sorted within consecutive groups of this many (limits padding)
DTYPES = ("float32", "float64")


@dataclass
class LayerStats:
    """Raw second-moment sum and token count of one layer's keys."""

    sum: torch.Tensor  # (f, f) float32/float64: Σ k kᵀ
    count: int  # number of tokens

    @property
    def cov(self) -> torch.Tensor:
        """C = Σ k kᵀ / count (uncentred)."""
        if self.count == 0:
            raise ValueError("no tokens were accumulated")
        return self.sum / self.count


def checked_stats(stats: dict, model, adapter: Adapter, layers: Sequence[int]) -> dict[int, LayerStats]:
    """Statistics given from outside (a client's files, another run): one finite, symmetric (f, f)
    :class:`LayerStats` with a positive count for every layer in ``layers``, else a ValueError that
    names the layer and what is wrong."""
    out = {}
    for layer in layers:
        if layer not in stats:
            raise ValueError(f"statistics given for layers {sorted(stats)}, but layer {layer} is edited")
        s = stats[layer]
        f = adapter.dims(model, layer)[1]
        if not isinstance(s, LayerStats):
            raise ValueError(f"statistics of layer {layer}: expected a LayerStats, got {type(s).__name__}")
        if tuple(s.sum.shape) != (f, f):
            raise ValueError(
                f"statistics of layer {layer}: shape {tuple(s.sum.shape)}, the layer's keys need ({f}, {f})"
            )
        if not int(s.count) > 0:
            raise ValueError(f"statistics of layer {layer}: count {s.count}, expected a positive number of tokens")
        if not bool(torch.isfinite(s.sum).all()):
            raise ValueError(f"statistics of layer {layer}: the second-moment sum holds NaN or inf")
        if not torch.allclose(s.sum, s.sum.T, rtol=1e-4, atol=1e-6 * float(s.sum.diagonal().abs().max())):
            raise ValueError(f"statistics of layer {layer}: the second-moment matrix is not symmetric")
        out[layer] = s
    return out


# ------------------------------------------------------------------------------------------
# Cache and checkpoint files
# ------------------------------------------------------------------------------------------
def _stats_key(
    name: str,
    fingerprint: str,
    layer: int,
    corpus: Corpus,
    max_length: int,
    dtype: str,
    block_tokens: int | None = None,
) -> dict:
    return {
        "model": name,
        "fingerprint": fingerprint,
        "layer": layer,
        "corpus": corpus.identity,
        "max_length": max_length,
        "dtype": dtype,
        "block_tokens": block_tokens,
        "version": 2,
    }


def _checkpoint_key(layer_keys: Sequence[dict], batch_tokens: int) -> dict:
    """A partial run is keyed by everything its layers' cache keys hold, plus the batching."""
    return {
        "kind": "checkpoint",
        "layers": list(layer_keys),
        "batch_tokens": batch_tokens,
        "sort_group": SORT_GROUP,
        "version": 2,
    }


def _key_path(key: dict, model: str, fingerprint: str, stem: str) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[-60:]
    return cache_dir() / "stats" / f"{safe}-{fingerprint}" / f"{stem}-{digest}.pt"


def _cache_path(key: dict) -> Path:
    return _key_path(key, key["model"], key["fingerprint"], f"layer{key['layer']}")


def _checkpoint_path(key: dict) -> Path:
    first = key["layers"][0]
    return _key_path(key, first["model"], first["fingerprint"], "checkpoint")


def _check_sum(name: str, tensor, f: int, dtype: torch.dtype) -> None:
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (f, f) or tensor.dtype != dtype:
        got = f"{tuple(tensor.shape)} {tensor.dtype}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} is {got}, expected ({f}, {f}) {dtype}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} holds NaN or inf")


def _load_cached(path: Path, key: dict, f: int, dtype: torch.dtype) -> LayerStats | None:
    """The cached statistics of one layer, or None (with a warning for an unusable file): the key,
    the digest, the shape (f, f), the dtype and finiteness of the sum and a positive count are
    checked before the file is trusted."""
    if not path.is_file():
        return None
    try:
        blob = read_verified(path, key)
        _check_sum("the sum", blob["sum"], f, dtype)
        count = blob["count"]
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise ValueError(f"bad token count {count!r}")
        return LayerStats(blob["sum"], count)
    except Exception as e:  # corrupt, truncated or foreign file: recompute, never use it
        warnings.warn(f"covariance cache {path} is unusable ({type(e).__name__}: {e}); recomputing", stacklevel=3)
        return None


def _save_atomic(path: Path, key: dict, stats: LayerStats) -> None:
    write_atomic(path, {"key": json.dumps(key, sort_keys=True), "sum": stats.sum.cpu(), "count": stats.count})


# ------------------------------------------------------------------------------------------
# Accumulation
# ------------------------------------------------------------------------------------------
class _Accumulator:
    """Σ k kᵀ and the token count of one layer's keys, on the model's device.

    Plain (``block_tokens=None``): every batch goes into one (f, f) ``dtype`` matrix.
    Blocked: batches go into a fresh ``dtype`` block that is added to a float64 total once it
    holds ``block_tokens`` tokens, so the rounding error of a float32 block never grows with
    the corpus (docs/statistics.md has the measured errors).
    """

    def __init__(self, f: int, dtype: torch.dtype, block_tokens: int | None, device: torch.device):
        self.block = torch.zeros((f, f), dtype=dtype, device=device)
        self.total = torch.zeros((f, f), dtype=torch.float64, device=device) if block_tokens else None
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.block_tokens = block_tokens
        self.tokens_in_block = 0  # host-side, so folding needs no device sync

    def add(self, keys: torch.Tensor) -> None:
        """keys: (n, f) float32/bf16/fp16 (float64 with a float64 accumulator)."""
        cov_accumulate_(keys, self.block, self.count)
        if self.total is not None:
            self.tokens_in_block += keys.shape[0]
            if self.tokens_in_block >= self.block_tokens:
                self.total.add_(self.block)
                self.block.zero_()
                self.tokens_in_block = 0

    def state(self) -> dict:
        return {"block": self.block, "total": self.total, "count": self.count, "tokens_in_block": self.tokens_in_block}

    def check_state(self, state: dict) -> None:
        """Raise ValueError unless ``state`` (from :meth:`state`) fits this accumulator."""
        for name in ("block", "total", "count"):
            mine, theirs = getattr(self, name), state[name]
            if (mine is None) != (theirs is None) or (
                mine is not None and (theirs.shape != mine.shape or theirs.dtype != mine.dtype)
            ):
                raise ValueError(f"{name} does not match the accumulator")
            if mine is not None and mine.is_floating_point() and not bool(torch.isfinite(theirs).all()):
                raise ValueError(f"{name} holds NaN or inf")
        if not 0 <= int(state["tokens_in_block"]) < (self.block_tokens or 1):
            raise ValueError("bad tokens_in_block")

    def load_state(self, state: dict) -> None:
        for name in ("block", "total", "count"):
            if state[name] is not None:
                getattr(self, name).copy_(state[name])
        self.tokens_in_block = int(state["tokens_in_block"])

    def result(self) -> LayerStats:
        """The sum and count — over every process under torchrun (all-reduced on the device)."""
        total = self.block if self.total is None else self.total.add_(self.block)
        count = dist.all_reduce_sum_(self.count.clone())
        return LayerStats(dist.all_reduce_sum_(total).cpu(), int(count))


class _KeyCollector:
    """Forward pre-hooks on the down-projections that add each layer's keys to its accumulator
    during the forward pass (so no layer's keys outlive its MLP).  Padding is excluded: call
    :meth:`set_mask` with the batch's attention mask before each forward pass."""

    def __init__(self, model, adapter: Adapter, accumulators: dict[int, _Accumulator]):
        self.rows: torch.Tensor | None = None  # flat indices of the real tokens; None: all
        self.handles = [
            adapter.down_proj_module(model, layer).register_forward_pre_hook(self._hook(accumulator))
            for layer, accumulator in accumulators.items()
        ]

    def set_mask(self, mask: torch.Tensor) -> int:
        """mask: (B, T) attention mask on the host; returns the number of real tokens."""
        flat = mask.reshape(-1).bool()
        n_tokens = int(flat.sum())
        self.rows = None if n_tokens == flat.numel() else flat.nonzero().squeeze(1)
        return n_tokens

    def _hook(self, accumulator: _Accumulator):
        def hook(module, args):
            keys = args[0].reshape(-1, args[0].shape[-1])  # (B·T, f)
            if self.rows is not None:
                self.rows = self.rows.to(keys.device, non_blocking=True)  # once per batch (per device)
                keys = keys.index_select(0, self.rows)
            accumulator.add(keys)

        return hook

    def __enter__(self) -> _KeyCollector:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _load_checkpoint(path: Path, key: dict, accumulators: dict[int, _Accumulator], n_documents: int) -> tuple[int, int]:
    """Load a checkpoint into ``accumulators``; returns (documents consumed, tokens) or (0, 0)."""
    if not path.is_file():
        return 0, 0
    try:
        blob = read_verified(path, key)
        documents, tokens, states = int(blob["documents"]), int(blob["tokens"]), blob["layers"]
        if not 0 <= documents <= n_documents:
            raise ValueError(f"position {documents} outside the corpus of {n_documents} documents")
        for layer, accumulator in accumulators.items():
            accumulator.check_state(states[str(layer)])
            if int(states[str(layer)]["count"]) != tokens:
                raise ValueError(f"layer {layer}: token count does not match the checkpoint's")
    except Exception as e:  # corrupt, truncated or foreign file: start from the beginning
        warnings.warn(
            f"statistics checkpoint {path} is unusable ({type(e).__name__}: {e}); starting from the beginning",
            stacklevel=3,
        )
        return 0, 0
    for layer, accumulator in accumulators.items():
        accumulator.load_state(states[str(layer)])
    log.info("resuming statistics from %s: %d documents, %d tokens done", path, documents, tokens)
    return documents, tokens


def _warn_stale_checkpoints(mine: Path) -> None:
    """Name the checkpoints of interrupted runs of this model with other settings (they can be GBs):
    they are kept, since their run may still be resumed, but the user is told where they are."""
    others = [p for p in mine.parent.glob("checkpoint-*.pt") if p != mine] if mine.parent.is_dir() else []
    if others:
        size = sum(p.stat().st_size for p in others) / 2**20
        warnings.warn(
            f"{len(others)} statistics checkpoint(s) of interrupted runs of this model with other settings "
            f"({size:.0f} MiB) in {mine.parent}: {', '.join(p.name for p in others[:3])}; rerun with those "
            "settings to resume, or delete them",
            stacklevel=3,
        )


def _save_checkpoint(path: Path, key: dict, accumulators: dict[int, _Accumulator], documents: int, tokens: int) -> None:
    write_atomic(
        path,
        {
            "key": json.dumps(key, sort_keys=True),
            "documents": documents,
            "tokens": tokens,
            "layers": {str(layer): acc.state() for layer, acc in accumulators.items()},
        },
    )


# ------------------------------------------------------------------------------------------
# Batching
# ------------------------------------------------------------------------------------------
def tokenize_documents(tokenizer, texts: Sequence[str], max_length: int, progress: bool = False) -> list[torch.Tensor]:
    """Token ids of every document, truncated to ``max_length``: a list of 1-D int32 tensors."""
    documents: list[torch.Tensor] = []
    with tqdm(total=len(texts), desc="tokenizing", unit="doc", disable=not progress) as bar:
        for start in range(0, len(texts), SORT_GROUP):
            batch = tokenizer(list(texts[start : start + SORT_GROUP]), truncation=True, max_length=max_length)[
                "input_ids"
            ]
            documents.extend(torch.tensor(ids, dtype=torch.int32) for ids in batch)
            bar.update(len(batch))
    return documents


def token_batches(
    documents: Sequence[torch.Tensor], batch_tokens: int, pad_id: int, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Right-padded batches ``(input_ids, attention_mask, position)`` (both (B, T) int64) of
    padded size ≤ ``batch_tokens`` (or one sequence); empty documents are skipped.

    Documents are taken in consecutive groups of ``SORT_GROUP``, longest first within a group.
    ``position`` counts the documents consumed after this batch: those of earlier groups plus
    the ones of this group (in its sorted order) used so far.  The stream is deterministic, so
    ``token_batches(..., start=position)`` yields exactly the batches that followed.
    """
    for group_start in range(start - start % SORT_GROUP, len(documents), SORT_GROUP):
        group_end = min(group_start + SORT_GROUP, len(documents))
        order = sorted((d for d in documents[group_start:group_end] if len(d) > 0), key=len, reverse=True)
        i = start - group_start if group_start < start else 0
        while i < len(order):
            width = len(order[i])
            chunk = order[i : i + max(1, batch_tokens // width)]
            i += len(chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, ids in enumerate(chunk):
                input_ids[row, : len(ids)] = ids
                mask[row, : len(ids)] = 1
            yield input_ids, mask, (group_start + i if i < len(order) else group_end)


# ------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def layer_stats(
    model,
    adapter: Adapter,
    tokenizer,
    corpus: Corpus,
    layers: Sequence[int],
    max_length: int = 1024,
    batch_tokens: int = 4096,
    dtype: str = "float64",
    use_cache: bool = True,
    progress: bool = True,
    *,
    block_tokens: int | None = None,
    checkpoint_every_tokens: int | None = 1_000_000,
) -> dict[int, LayerStats]:
    """Statistics of every layer in ``layers`` from one pass over ``corpus`` (cached layers are skipped).

    dtype: accumulator dtype, "float32" or "float64".  block_tokens: accumulate blocks of about
    this many tokens in ``dtype`` and add them to a float64 total (then ``sum`` is float64);
    None accumulates everything in ``dtype``.  checkpoint_every_tokens: write a resumable
    checkpoint every this many tokens (None or 0: never); only with ``use_cache`` (with
    ``use_cache=False`` nothing is read from or written to disk).
    Returns {layer: LayerStats(sum (f, f), count)} for every layer in ``layers``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if block_tokens is not None and block_tokens < 1:
        raise ValueError(f"block_tokens must be None or a positive integer, got {block_tokens!r}")
    max_length = min(max_length, context_length(model, tokenizer))
    name, fingerprint = model_name(model), model_fingerprint(model)
    keys = {layer: _stats_key(name, fingerprint, layer, corpus, max_length, dtype, block_tokens) for layer in layers}
    result: dict[int, LayerStats] = {}
    if use_cache:
        for layer in layers:
            f = adapter.dims(model, layer)[1]
            cached = _load_cached(
                _cache_path(keys[layer]), keys[layer], f, torch.float64 if block_tokens else getattr(torch, dtype)
            )
            if cached is not None:
                result[layer] = cached
    missing = dist.union(set(layers) - set(result))  # under torchrun: every process computes the same layers
    if not missing:
        return result

    progress = progress and dist.is_main()
    # under torchrun each process reads every world-th document; the sums are all-reduced below
    documents = dist.shard(tokenize_documents(tokenizer, corpus.texts, max_length, progress))
    total_tokens = sum(len(d) for d in documents)
    device = model_device(model)
    if int(dist.all_reduce_sum_(torch.tensor(total_tokens, device=device))) == 0:  # NCCL: a device tensor
        raise ValueError(f"corpus {corpus.identity} yielded no tokens")
    accumulators = {
        layer: _Accumulator(
            adapter.dims(model, layer)[1], getattr(torch, dtype), block_tokens, adapter.weight(model, layer).device
        )
        for layer in missing
    }
    checkpointing = bool(use_cache and checkpoint_every_tokens)
    checkpoint_key = _checkpoint_key([keys[layer] for layer in missing], batch_tokens)
    if dist.active():  # each process checkpoints its own shard
        checkpoint_key["shard"] = [dist.rank(), dist.world_size()]
    checkpoint_path = _checkpoint_path(checkpoint_key)
    if checkpointing:
        _warn_stale_checkpoints(checkpoint_path)
    position, tokens_done = (
        _load_checkpoint(checkpoint_path, checkpoint_key, accumulators, len(documents)) if checkpointing else (0, 0)
    )
    tokens_since_checkpoint = 0
    bar = tqdm(
        total=total_tokens,
        initial=tokens_done,
        desc=f"covariance layers {missing}",
        unit="tok",
        unit_scale=True,
        disable=not progress,
    )
    with bar, capture(model, adapter, stop_after=missing[-1]), _KeyCollector(model, adapter, accumulators) as collector:
        for input_ids, mask, consumed in token_batches(documents, batch_tokens, pad_id(tokenizer), position):
            n_tokens = collector.set_mask(mask)
            run_until(model, input_ids=input_ids.to(device), attention_mask=mask.to(device))
            bar.update(n_tokens)
            tokens_done += n_tokens
            tokens_since_checkpoint += n_tokens
            if checkpointing and tokens_since_checkpoint >= checkpoint_every_tokens:
                _save_checkpoint(checkpoint_path, checkpoint_key, accumulators, consumed, tokens_done)
                tokens_since_checkpoint = 0
    for layer, accumulator in accumulators.items():
        result[layer] = accumulator.result()
        if use_cache and dist.is_main():
            _save_atomic(_cache_path(keys[layer]), keys[layer], result[layer])
    if checkpointing:
        checkpoint_path.unlink(missing_ok=True)
    return {layer: result[layer] for layer in layers}
