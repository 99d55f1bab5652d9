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
from ..hf.hooks import capture, run_until
from ..hf.tokens import encode_at, fill
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
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Keys of ``key_layers`` (each (n, f)) and the output of block ``block_layer`` ((n, d)) at the
    token holding character ``ends[i]-1`` of ``texts[i]``.  float32 (float64 for a float64 model), on
    the model's device."""
    device = model_device(model)
    deepest = max(list(key_layers) + ([block_layer] if block_layer is not None else []))
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in key_layers}
    blocks: list[torch.Tensor] = []
    for start in range(0, len(texts), batch_size):
        enc = encode_at(tokenizer, list(texts[start : start + batch_size]), list(ends[start : start + batch_size])).to(
            device
        )
        rows = torch.arange(enc.index.numel(), device=device)
        with capture(
            model,
            adapter,
            key_layers=key_layers,
            block_layers=[block_layer] if block_layer is not None else [],
            stop_after=deepest,
        ) as store:
            run_until(model, **enc.model_inputs)
        for layer in key_layers:
            keys[layer].append(_at_least_float32(store[("key", layer)][rows, enc.index]))
        if block_layer is not None:
            blocks.append(_at_least_float32(store[("block", block_layer)][rows, enc.index]))
    return ({layer: torch.cat(v) for layer, v in keys.items()}, torch.cat(blocks) if block_layer is not None else None)


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
    keys, blocks = states_at(model, adapter, tokenizer, texts, ends, layers, block_layer, batch_size)
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
    Keys are computed ``batch_size`` facts at a time and folded into the Gram matrix by the
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
    for start in range(0, len(facts), batch_size):
        chunk = facts[start : start + batch_size]
        # one forward per chunk: every template sentence of a fact in the same batch
        keys, block = compute_keys(
            model,
            adapter,
            tokenizer,
            chunk,
            templates,
            [layer],
            z_layer if targets is not None else None,
            len(chunk) * len(templates),
        )
        k = keys[layer]
        cov_accumulate_(k.contiguous(), gram, count)
        if kept is not None:
            kept.append(k)
        if targets is not None:
            resid = (targets[start : start + batch_size].to(device, torch.float64) - block.double()) * scale
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
    for start in range(0, len(facts), batch_size):
        chunk = facts[start : start + batch_size]
        keys, _ = compute_keys(model, adapter, tokenizer, chunk, templates, layers, None, len(chunk) * len(templates))
        for layer in layers:
            cov_accumulate_(keys[layer].contiguous(), grams[layer], counts[layer])
    return [(layer, grams[layer] / int(counts[layer])) for layer in layers]
