"""The one scoring engine of the evaluation: log-likelihoods of (context, continuation) pairs,
greedy generation with stop strings, and sliding-window perplexity — the way
lm-evaluation-harness's ``HFLM`` computes them.

Log-likelihood scoring (:func:`loglikelihoods`) follows ``HFLM``: a request is a
(context, continuation) pair; trailing spaces of the context move to the continuation; the
whole string is tokenised (the tokenizer's default special tokens) and split at the length of
the tokenised context; the sequence is left-truncated to the model's maximum length. Contexts
are left-padded with explicit ``position_ids`` and their KV cache is shared by all the
continuations of the same context, so a batch scores exactly what each request scores alone
(up to floating-point summation order) while each multiple-choice context is computed once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..hf.adapters import model_device
from ..hf.compat import cache_inputs, last_logits_only, log_probs, max_length, output_cache, pad_id
from ..hf.tokens import encode, encode_pair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    """Log-likelihood of one continuation given its context.

    logprob:       sum over the continuation's tokens of log p(token | everything before), nats.
    greedy:        every continuation token is the argmax of its logits (harness ``is_greedy``).
    n_tokens:      number of continuation tokens.
    first_logprob: log p of the continuation's first token (its NLL is ``-first_logprob``).
    """

    logprob: float
    greedy: bool
    n_tokens: int
    first_logprob: float


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) int64, rows right-aligned."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        attention_mask[i, width - len(r) :] = 1
    return input_ids, attention_mask


def _score_batch(
    model, contexts: Sequence[tuple[int, ...]], rows: Sequence[tuple[int, list[int]]], pad: int, device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row (context index, continuation ids): (token log-probs (n,), argmax ids (n,)).

    Pass 1 runs each distinct context once, left-padded with ``position_ids`` counting real
    tokens only, keeping its KV cache and the logits of its last position (which predict the
    continuation's first token). Pass 2 runs every continuation but its last token on a copy of
    its context's cache (right-padded; positions continue after the context), so contexts shared
    by several continuations (multiple-choice endings) are computed once.
    """
    ctx_ids, ctx_mask = _left_pad(contexts, pad)
    ctx_ids, ctx_mask = ctx_ids.to(device), ctx_mask.to(device)
    position_ids = (ctx_mask.cumsum(-1) - 1).clamp(min=0)
    keep = last_logits_only(model)
    out = model(input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=position_ids, use_cache=True, **keep)
    first = log_probs(out.logits[:, -1])  # (B, V)
    owner = torch.tensor([c for c, _ in rows], device=device)
    first_rows = first.index_select(0, owner)  # (R, V)
    longest = max(len(cont) for _, cont in rows)
    rest = None
    if longest > 1:
        cache = output_cache(out)
        cache.reorder_cache(owner)  # one cache row per continuation
        width = longest - 1
        cont_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        cont_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (_, cont) in enumerate(rows):
            cont_ids[r, : len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
            cont_mask[r, : len(cont) - 1] = 1
        cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
        lengths = ctx_mask.sum(-1).index_select(0, owner)  # (R,) real context tokens
        positions = lengths[:, None] + torch.arange(width, device=device)[None, :]
        mask = torch.cat([ctx_mask.index_select(0, owner), cont_mask], dim=1)
        rest = log_probs(
            model(input_ids=cont_ids, attention_mask=mask, position_ids=positions, **cache_inputs(model, cache)).logits
        )  # (R, width, V)
    results = []
    for r, (_, cont) in enumerate(rows):
        lp = first_rows[r : r + 1] if rest is None else torch.cat([first_rows[r : r + 1], rest[r, : len(cont) - 1]])
        target = torch.tensor(cont, device=device)
        results.append((lp.gather(-1, target[:, None])[:, 0], lp.argmax(-1)))
    return results


def loglikelihoods(
    model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16, desc: str | None = None
) -> list[Score]:
    """Score (context, continuation) pairs; returns one :class:`Score` per request, in order.

    Requests are tokenised by :func:`encode_pair` and left-truncated to the model's context;
    requests with the same context tokens share one forward pass over the context. Distinct
    contexts are taken longest first (as the harness sorts), ``batch_size`` continuations at
    a time (a context with more continuations than that forms its own batch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = max_length(model, tokenizer)
    device = model_device(model)
    pad = pad_id(tokenizer)
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}  # context ids → [(request index, continuation)]
    for i, pair in enumerate(requests):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise TypeError(f"requests[{i}] must be a (context, continuation) pair of strings, got {pair!r}")
        context_ids, continuation_ids = encode_pair(tokenizer, *pair)
        if not continuation_ids:
            raise ValueError(f"requests[{i}]: the continuation {pair[1]!r} encodes to no tokens")
        if len(continuation_ids) > limit:
            raise ValueError(
                f"requests[{i}]: the continuation has {len(continuation_ids)} tokens, more than the "
                f"model's context length {limit}"
            )
        full = (context_ids + continuation_ids)[-(limit + 1) :]  # the harness's left truncation
        n = len(continuation_ids)
        groups.setdefault(tuple(full[:-n]), []).append((i, full[-n:]))
    order = sorted(groups, key=lambda c: -(len(c) + max(len(cont) for _, cont in groups[c])))
    batches: list[list[tuple[int, ...]]] = []
    for context in order:
        if batches and sum(len(groups[c]) for c in batches[-1]) + len(groups[context]) <= batch_size:
            batches[-1].append(context)
        else:
            batches.append([context])
    scores: list[Score | None] = [None] * len(requests)
    with torch.no_grad():
        for batch in tqdm(batches, desc=desc, disable=desc is None or len(batches) < 2, leave=False):
            rows = [(c, cont) for c, context in enumerate(batch) for _, cont in groups[context]]
            indices = [i for context in batch for i, _ in groups[context]]
            for i, (_, cont), (token_lp, argmax) in zip(indices, rows, _score_batch(model, batch, rows, pad, device)):
                greedy = bool((argmax == torch.tensor(cont, device=device)).all())
                scores[i] = Score(float(token_lp.double().sum()), greedy, len(cont), float(token_lp[0]))
    return scores  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------
# Greedy generation with stop strings (the harness's generate_until)
# ----------------------------------------------------------------------------------------


class _StopOnStrings:
    """Per-row stopping: a row is done once its decoded new text contains a stop string."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_width: int):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


def generate_until(
    model,
    tokenizer,
    prompts: Sequence[str],
    until: Sequence[str],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    desc: str | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts``, each cut before the first of ``until`` (the decoded
    EOS token is added to the stop strings, as the harness does).

    Prompts are left-truncated to ``max_length - max_new_tokens`` tokens, batched longest
    first and left-padded; generation of a batch ends when every row has hit a stop string
    or EOS, or after ``max_new_tokens``.
    """
    from transformers import StoppingCriteriaList

    limit = max_length(model, tokenizer) - max_new_tokens
    if limit <= 0:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the model's "
            f"context of {max_length(model, tokenizer)} tokens"
        )
    stops = list(until)
    eos = tokenizer.eos_token
    if eos and eos not in stops:
        stops.append(eos)
    device = model_device(model)
    pad = pad_id(tokenizer)
    encoded = [encode(tokenizer, p)[-limit:] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    batches = range(0, len(order), batch_size)
    with torch.no_grad():
        for start in tqdm(batches, desc=desc, disable=desc is None, leave=False):
            rows = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                input_ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                attention_mask[r, width - len(encoded[i]) :] = 1
            criteria = StoppingCriteriaList([_StopOnStrings(tokenizer, stops, width)])
            ids = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                stopping_criteria=criteria,
                **greedy,
            )
            for r, i in enumerate(rows):
                text = tokenizer.decode(ids[r, width:], skip_special_tokens=True)
                for stop in stops:
                    if stop:
                        text = text.split(stop)[0]
                out[i] = text
    return out


def _windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window: the window is ids[begin:end] and its last ``scored``
    tokens are scored. Every token but the first is scored exactly once; a token scored in a
    later window has at least ``window - stride`` tokens of context."""
    out, prev_end = [], 1  # token 0 has no context and is never scored
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        if end > prev_end:
            out.append((begin, end, end - prev_end))
            prev_end = end
        if end == n_tokens:
            break
    return out


def perplexity(
    model,
    tokenizer,
    texts: Sequence[str] | str,
    window: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> dict:
    """Token-level perplexity of a text stream by a sliding window.

    The texts are joined with ``"\\n\\n"`` (WikiText convention) and tokenised once (the
    tokenizer's default special tokens), truncated to ``max_tokens``. Windows of ``window``
    tokens (default: min(1024, the model's context)) start every ``stride`` tokens (default
    ``window // 2``; ``stride < window``); each window scores only the tokens no earlier window
    scored, so every token after the first is scored exactly once, token t with the context
    ``ids[k·stride : t]`` where k = max(0, ⌊(t − window)/stride⌋ + 1), i.e. at least
    ``window − stride`` tokens once past the first window. PPL = exp(Σ NLL / (N − 1)) for N
    tokens.

    Returns ``{"perplexity", "nll" (mean per token, nats), "tokens" (scored), "window", "stride"}``.
    """
    text = texts if isinstance(texts, str) else "\n\n".join(texts)
    ids = list(tokenizer(text)["input_ids"])
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"perplexity needs at least 2 tokens of text, got {len(ids)}")
    window = window or min(1024, max_length(model, tokenizer))
    stride = stride or max(1, window // 2)
    if window < 2 or not 1 <= stride < window:  # a window's first token has no context: it cannot be scored
        raise ValueError(f"need window >= 2 and 1 <= stride < window, got window={window}, stride={stride}")
    if window > max_length(model, tokenizer):
        raise ValueError(f"window={window} exceeds the model's context length {max_length(model, tokenizer)}")
    spans = _windows(len(ids), window, stride)
    device = model_device(model)
    total, count = torch.zeros((), dtype=torch.float64), 0
    batches = range(0, len(spans), batch_size)
    with torch.no_grad():
        for start in tqdm(batches, desc="perplexity", disable=not progress or len(batches) < 2, leave=False):
            chunk = spans[start : start + batch_size]
            for length in sorted({end - begin for begin, end, _ in chunk}, reverse=True):  # equal lengths: no padding
                rows = [s for s in chunk if s[1] - s[0] == length]
                input_ids = torch.tensor([ids[b:e] for b, e, _ in rows], device=device)
                keep = max(n for _, _, n in rows) + 1
                logits = model(input_ids=input_ids, use_cache=False, **last_logits_only(model, keep)).logits[:, -keep:]
                logprobs = log_probs(logits)
                for r, (_, _, n) in enumerate(rows):
                    target = input_ids[r, -n:]
                    lp = logprobs[r, keep - 1 - n : keep - 1].gather(-1, target[:, None])
                    total -= lp.double().sum().cpu()
                    count += n
    nll = float(total) / count
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": count, "window": window, "stride": stride}
