"""Keys (down-projection inputs) and block outputs at the subject's last token (law-reference §2.4-2.5).

One forward pass per batch yields the keys of every requested layer and the block output of
the z layer, and stops right after the deepest block that is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import dist
from ..facts import Fact
from ..hf.adapters import Adapter, model_device
from ..hf.compat import cache_inputs, fork_cache, new_cache, pad_id
from ..hf.hooks import capture, run_until
from ..hf.tokens import fill, right_pad, tokenize_at
from ..ops import cov_accumulate_

log = logging.getLogger(__name__)


def fact_sentences(facts: Sequence[Fact], templates: Sequence[str]) -> tuple[list[str], list[int]]:
    """Sentences in request-major order: for each fact, each context template filled with it."""
    texts, ends = [], []
    for fact in facts:
        for context in templates:
            text, end = fill(context.replace("{}", fact.template, 1), fact.subject)
            texts.append(text)
            ends.append(end)
    return texts, ends


@torch.no_grad()
def states_at(
    model,
    adapter: Adapter,
    tokenizer,
    texts: Sequence[str],
    ends: Sequence[int],
    key_layers: Sequence[int] = (),
    block_layer: int | None = None,
    batch_size: int = 64,
    prefixes: Sequence[str] | None = None,
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Keys of ``key_layers`` (each (n, f)) and the output of block ``block_layer`` ((n, d)) at the
    token holding character ``ends[i]-1`` of ``texts[i]``.  float32 (float64 for a float64 model), on
    the model's device.

    Each row is run only up to that token (a causal model's states there do not depend on what follows).
    ``prefixes``: per row, a text the row starts with and shares with other rows (a context template's
    words before the prompt): its keys and values are computed once per call and every row whose tokens
    begin with the prefix's (checked, row by row: a tokenizer may merge across the boundary; the last
    prefix token is never shared, as it can merge with what follows) runs only its own tokens after them.
    Rows are run in forwards of up to ``batch_size`` rows of one prefix (rows sharing none together)."""
    device = model_device(model)
    block_layers = [block_layer] if block_layer is not None else []
    deepest = max([*key_layers, *block_layers])
    shared = _SharedPrefixes(model, adapter, tokenizer, deepest)
    out: dict = {}  # ("key", layer) / ("block", layer) → (n, ·) states at the read tokens, filled group by group

    def put(store, rows, at):
        picked = torch.arange(len(at), device=device)
        for name in [("key", layer) for layer in key_layers] + [("block", layer) for layer in block_layers]:
            value = _at_least_float32(store[name][picked, at])
            if name not in out:
                out[name] = value.new_empty((len(texts), value.shape[1]))
            out[name][rows] = value

    ids, index = tokenize_at(tokenizer, list(texts), list(ends))
    groups: dict[str | None, list[int]] = {}  # rows by the prefix they share (None: none), in order
    for r in range(len(texts)):
        prefix = prefixes[r] if prefixes is not None else None
        groups.setdefault(prefix if shared.covers(prefix, ids[r], index[r]) else None, []).append(r)
    for prefix, group in groups.items():
        P = 0 if prefix is None else len(shared.ids(prefix))
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            own = [ids[r][P : index[r] + 1] for r in rows]  # the row's tokens after the shared ones, to the read one
            input_ids, mask = right_pad(own, pad_id(tokenizer))
            mask = torch.cat([torch.ones((len(own), P), dtype=torch.long), mask], 1)  # the shared tokens: real
            inputs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
            if prefix is not None:
                inputs["position_ids"] = (P + torch.arange(input_ids.shape[1], device=device)).expand(len(own), -1)
                rows_of_prefix = torch.zeros(len(own), dtype=torch.long, device=device)
                inputs.update(cache_inputs(model, fork_cache(shared.cache(prefix), rows_of_prefix)))
            with capture(model, adapter, key_layers=key_layers, block_layers=block_layers, stop_after=deepest) as store:
                run_until(model, **inputs)
            put(store, torch.tensor(rows, device=device), torch.tensor([index[r] - P for r in rows], device=device))
    return {layer: out[("key", layer)] for layer in key_layers}, out[("block", block_layer)] if block_layers else None


class _SharedPrefixes:
    """The token ids and the KV cache (blocks up to ``deepest``) of each prefix text, computed once."""

    def __init__(self, model, adapter, tokenizer, deepest: int):
        self.model, self.adapter, self.tokenizer, self.deepest = model, adapter, tokenizer, deepest
        self._ids: dict[str, list[int]] = {}
        self._caches: dict = {}

    def ids(self, prefix: str) -> list[int]:
        if prefix not in self._ids:  # the last token can merge with the text after it: never shared
            self._ids[prefix] = list(self.tokenizer(prefix)["input_ids"])[:-1] if prefix else []
        return self._ids[prefix]

    def covers(self, prefix: str | None, row, index: int) -> bool:
        """Whether ``row`` (token ids) begins with the prefix's shared tokens, before its read token."""
        if prefix is None:
            return False
        shared = self.ids(prefix)
        return 0 < len(shared) <= index and list(row[: len(shared)]) == shared

    def cache(self, prefix: str):
        if prefix not in self._caches:
            device = model_device(self.model)
            cache = new_cache()
            with capture(self.model, self.adapter, stop_after=self.deepest):
                run_until(
                    self.model,
                    input_ids=torch.tensor([self.ids(prefix)], device=device),
                    **cache_inputs(self.model, cache),
                )
            self._caches[prefix] = cache
        return self._caches[prefix]


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def average_over_templates(states: torch.Tensor, n_templates: int) -> torch.Tensor:
    """(m·T, f) request-major → (m, f): ½·plain + ½·mean(other templates) (the reference's weighting)."""
    per_fact = states.reshape(-1, n_templates, states.shape[-1])
    if n_templates == 1:
        return per_fact[:, 0]
    return 0.5 * per_fact[:, 0] + 0.5 * per_fact[:, 1:].mean(1)


def compute_keys(
    model,
    adapter: Adapter,
    tokenizer,
    facts: Sequence[Fact],
    templates: Sequence[str],
    layers: Sequence[int],
    block_layer: int | None = None,
    batch_size: int = 64,
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Averaged keys per fact for each of ``layers`` ((m, f) each) and, with ``block_layer``, the block
    outputs at the plain prompt ((m, d)) — all from one set of forward passes of ``batch_size``
    sentences each (a fact has one sentence per template)."""
    if templates[0] != "{}":
        raise ValueError("templates[0] must be the plain template '{}'")
    texts, ends = fact_sentences(facts, templates)
    contexts = [t[: t.index("{}")] for t in templates]  # a template's words before the prompt: shared by all facts
    prefixes = [contexts[i % len(templates)] for i in range(len(texts))]
    keys, blocks = states_at(model, adapter, tokenizer, texts, ends, layers, block_layer, batch_size, prefixes)
    keys = {layer: average_over_templates(k, len(templates)) for layer, k in keys.items()}
    if blocks is not None:
        blocks = blocks.reshape(len(facts), len(templates), -1)[:, 0]
    return keys, blocks


@dataclass
class KeyMoments:
    """One layer's key statistics over a fact set — all the closed-form solvers need.

    gram = Σ_j k_j k_jᵀ (f×f), cross = Σ_j k_j r_jᵀ (f×d, with residuals r_j), resid_sq = Σ_j ‖r_j‖²;
    float64 on the model's device.  Accumulated chunk by chunk, so memory does not grow with m."""

    gram: torch.Tensor
    cross: torch.Tensor | None
    resid_sq: float
    count: int
    keys: torch.Tensor | None = None  # (m, f) float32, kept only while m < f/2 (smaller than gram then)


def key_moments(
    model,
    adapter: Adapter,
    tokenizer,
    facts: Sequence[Fact],
    templates: Sequence[str],
    layer: int,
    batch_size: int = 64,
    targets: torch.Tensor | None = None,
    z_layer: int | None = None,
    scale: float = 1.0,
) -> KeyMoments:
    """:class:`KeyMoments` of ``layer``'s averaged keys (:func:`compute_keys`) over ``facts``.

    With ``targets`` (m×d, the z* of ``facts``) the residuals r_j = scale·(z*_j − h_j), h_j the
    output of block ``z_layer`` at the plain prompt, are accumulated too (``cross``, ``resid_sq``).
    Keys are computed ``batch_size``·T facts at a time (one forward of their rows per template, each
    after the template's shared words: :func:`states_at`) and folded into the Gram matrix by the
    ``cov_accumulate_`` op; the (m×f) keys are kept only when m < f/2 (then smaller than the
    Gram matrix; the LaW solver multiplies through them)."""
    if targets is not None and (z_layer is None or len(targets) != len(facts)):
        raise ValueError("targets need z_layer and one row per fact")
    f = adapter.dims(model, layer)[1]
    device = model_device(model)
    gram = torch.zeros(f, f, dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    cross, resid_sq = None, 0.0
    kept: list[torch.Tensor] | None = [] if 2 * len(facts) < f and not dist.active() else None
    if dist.active():  # under torchrun: this process's share of the facts; the sums are all-reduced below
        mine = dist.shard(range(len(facts)))
        facts = [facts[j] for j in mine]
        targets = targets[mine] if targets is not None else None
    per_call = batch_size * len(templates)  # facts per call: one forward of batch_size·T rows per template
    for start in range(0, len(facts), per_call):
        chunk = facts[start : start + per_call]
        keys, block = compute_keys(
            model,
            adapter,
            tokenizer,
            chunk,
            templates,
            [layer],
            z_layer if targets is not None else None,
            per_call,
        )
        k = keys[layer]
        cov_accumulate_(k.contiguous(), gram, count)
        if kept is not None:
            kept.append(k)
        if targets is not None:
            resid = (targets[start : start + per_call].to(device, torch.float64) - block.double()) * scale
            part = k.double().T @ resid
            cross = part if cross is None else cross + part
            resid_sq += float((resid**2).sum())
    if dist.active():
        dist.all_reduce_sum_(gram)
        dist.all_reduce_sum_(count)
        if targets is not None:
            d = targets.shape[1]
            cross = dist.all_reduce_sum_(cross if cross is not None else gram.new_zeros(f, d))
            resid_sq = float(dist.all_reduce_sum_(torch.tensor(resid_sq, dtype=torch.float64, device=device)))
    return KeyMoments(gram, cross, resid_sq, int(count), torch.cat(kept) if kept else None)


def key_second_moments(model, adapter, tokenizer, facts, templates, layers, batch_size):
    """(layer, Σ_j k_jk_jᵀ / n) of ``facts``' averaged keys for every layer in ``layers``, from one forward
    pass per batch of ``batch_size`` facts (the keys of all layers at once): :func:`key_moments`'s Gram
    matrix, normalised, for several layers and no targets (the keys to keep, washing.retain)."""
    f = {layer: adapter.dims(model, layer)[1] for layer in layers}
    device = model_device(model)
    grams = {layer: torch.zeros(f[layer], f[layer], dtype=torch.float64, device=device) for layer in layers}
    counts = {layer: torch.zeros((), dtype=torch.int64, device=device) for layer in layers}
    per_call = batch_size * len(templates)  # as in key_moments
    for start in range(0, len(facts), per_call):
        chunk = facts[start : start + per_call]
        keys, _ = compute_keys(model, adapter, tokenizer, chunk, templates, layers, None, per_call)
        for layer in layers:
            cov_accumulate_(keys[layer].contiguous(), grams[layer], counts[layer])
    return [(layer, grams[layer] / int(counts[layer])) for layer in layers]
