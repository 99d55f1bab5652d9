"""Every Hugging Face quirk the library depends on, in one file: which keyword arguments a
model's ``forward`` accepts (they changed names across transformers versions), KV caches, the
pad token, and the precision in which logits are normalised."""

from __future__ import annotations

import copy
import inspect
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def accepts(model: nn.Module, argument: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``argument`` (cached per model class)."""
    cache = _ACCEPTS.setdefault(type(model), {})
    if argument not in cache:
        cache[argument] = argument in inspect.signature(model.forward).parameters
    return cache[argument]


_ACCEPTS: dict[type, dict[str, bool]] = {}


def last_logits_only(model: nn.Module, n: int = 1) -> dict:
    """Keyword arguments that make the LM head run on the last ``n`` positions only, where the
    model supports it (``logits_to_keep``); empty otherwise (the caller slices the logits)."""
    return {"logits_to_keep": n} if accepts(model, "logits_to_keep") else {}


def new_cache():
    """An empty Hugging Face ``DynamicCache`` (passed in, so an early-stopped pass still fills it)."""
    from transformers import DynamicCache

    return DynamicCache()


def cache_inputs(model: nn.Module, cache) -> dict:
    """Model keyword arguments that pass ``cache`` (``cache=`` in newer transformers, else
    ``past_key_values=``); ``use_cache=False`` when ``cache`` is None."""
    if cache is None:
        return {"use_cache": False}
    name = "cache" if accepts(model, "cache") else "past_key_values"
    return {name: cache, "use_cache": True}


def output_cache(output):
    """The KV cache of a model output (``cache`` in transformers >= 5, else ``past_key_values``)."""
    return getattr(output, "cache", None) or output.past_key_values


def fork_cache(cache, rows: torch.Tensor | None = None):
    """A copy of ``cache`` that a forward pass can extend without touching ``cache``.

    Cache layers extend themselves by rebinding (``keys = cat(keys, new)``), so a copy of the
    containers that shares the tensors is enough (no tensor is copied).  With ``rows`` the copy
    keeps only those batch rows (this copies the tensors once)."""
    fork = copy.copy(cache)
    for name, value in vars(cache).items():
        if isinstance(value, list):
            setattr(fork, name, [item if isinstance(item, torch.Tensor) else copy.copy(item) for item in value])
    if rows is not None:
        fork.batch_select_indices(rows)
    return fork


def pad_id(tokenizer) -> int:
    """The id that fills padded positions: the pad token, else EOS, else BOS, else 0.

    Padded positions are always masked out (attention mask, labels), so any valid id serves; this
    is the one rule the whole library uses."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, getattr(tokenizer, "bos_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token its EOS as pad token (what ``generate`` and batched
    calls of the tokenizer need); a tokenizer with one is left alone."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 → float32; float32/float64 unchanged.  Logits are normalised (``log_softmax``,
    ``cross_entropy``) in this precision everywhere."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the vocabulary in at least float32."""
    return at_least_fp32(logits).log_softmax(-1)


def max_length(model, tokenizer=None, default: int = 2048) -> int:
    """The model's context length, resolved as the harness does: config ``n_positions``,
    ``max_position_embeddings``, ``n_ctx``, else the tokenizer's ``model_max_length`` (when set),
    else ``default``."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**9:
        return limit
    return default
