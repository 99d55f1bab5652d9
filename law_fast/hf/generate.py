"""Batched text generation: greedy continuations, seeded top-k sampling, and a greedy loop that
drops each row as soon as its answer is decided.

All generation is batched, left-padded and KV-cached (Hugging Face ``generate``, or the decided
loop); the tokenizer's padding side is restored afterwards (the reference mutates it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .adapters import model_device
from .compat import cache_inputs, last_logits_only, new_cache, pad_id
from .hooks import padding_side

log = logging.getLogger(__name__)


def _generate(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int, desc: str | None, **generate_kwargs
) -> list[str]:
    """Continuations (new tokens only, special tokens skipped) of ``prompts`` by ``model.generate``."""
    out: list[str] = []
    device = model_device(model)
    batches = range(0, len(prompts), batch_size)
    with torch.no_grad(), padding_side(tokenizer, "left"):
        for start in tqdm(batches, desc=desc, disable=desc is None or len(batches) < 2, leave=False):
            enc = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True).to(device)
            ids = model.generate(
                **enc, max_new_tokens=max_new_tokens, pad_token_id=pad_id(tokenizer), **generate_kwargs
            )
            out.extend(tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def eos_ids(model, fallback: int | None) -> set:
    """The token ids that end generation (the generation config's EOS, else ``fallback``)."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [fallback])


def greedy_continuations(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 10, batch_size: int = 32, desc: str | None = None
) -> list[str]:
    """Greedy continuations of ``prompts`` (the reference's prediction rule, §6.2)."""
    greedy = dict(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
    return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc, **greedy)


class _TopKSampler:
    """A logits processor that draws the next token itself (top-k, renormalised, seeded generator)
    and leaves only that token finite, so greedy decoding emits it.  torch.multinomial over the
    full vocabulary is very slow on CPU; over k candidates it is not."""

    def __init__(self, top_k: int, generator: torch.Generator):
        self.top_k = top_k
        self.generator = generator

    def __call__(self, input_ids, scores):
        values, index = scores.float().topk(self.top_k, dim=-1)
        choice = torch.multinomial(torch.softmax(values, -1), 1, generator=self.generator)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, index.gather(1, choice), 0.0)


def sample_continuations(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    top_k: int,
    seed: int,
    batch_size: int = 32,
    desc: str | None = None,
) -> list[str]:
    """Top-k sampled continuations, reproducible from ``seed`` (the global RNG is not touched)."""
    from transformers import LogitsProcessorList

    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    sampler = LogitsProcessorList([_TopKSampler(top_k, generator)])
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc, logits_processor=sampler, **greedy)


# (None, an empty list and these count as unset); with any of them set, the decided-rows loop
# below defers to ``generate``
_GREEDY_NEUTRAL = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": 0,
    "num_beams": 1,
    "guidance_scale": 1.0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "watermarking_config": None,
    "stop_strings": None,
}


def plain_greedy(model) -> bool:
    """Whether ``generate``'s greedy decoding is a plain argmax that stops at a known end token."""
    config = model.generation_config
    if config.eos_token_id is None:  # generate would not stop at EOS
        return False
    return all(getattr(config, name, None) in (None, [], (), neutral) for name, neutral in _GREEDY_NEUTRAL.items())


def greedy_until_answer(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    desc: str | None,
) -> list[str]:
    """Greedy continuations, each row dropped from its batch as soon as its decision is known.

    A row is decided when it emits an end token (its continuation is complete) or when its answer
    occurs in the decoded new tokens (byte-level decoding of a prefix is a prefix of the decoding,
    up to an incomplete trailing character, so the answer stays in the whole continuation).  The
    KV cache keeps only the undecided rows, so every step costs what the open rows need; the
    continuation returned for a row decided by its answer ends there."""
    device = model_device(model)
    eos = eos_ids(model, tokenizer.eos_token_id)
    wanted = [a.strip().lower() for a in answers]
    keep_logits = last_logits_only(model)
    out: list[str] = []
    batches = range(0, len(prompts), batch_size)
    with torch.no_grad(), padding_side(tokenizer, "left"):
        for start in tqdm(batches, desc=desc, disable=desc is None or len(batches) < 2, leave=False):
            enc = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True).to(device)
            mask = enc["attention_mask"]
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            cache = new_cache()
            logits = model(
                input_ids=enc["input_ids"],
                attention_mask=mask,
                position_ids=positions,
                **cache_inputs(model, cache),
                **keep_logits,
            ).logits[:, -1]
            rows = list(range(len(mask)))  # batch rows still open, in cache order
            new: list[list[int]] = [[] for _ in rows]
            texts: list[str | None] = [None] * len(rows)
            for step in range(max_new_tokens):
                tokens = logits.argmax(-1).tolist()
                still = []
                for k, (row, token) in enumerate(zip(rows, tokens)):
                    if token in eos:
                        texts[row] = tokenizer.decode(new[row], skip_special_tokens=True)
                        continue
                    new[row].append(token)
                    text = tokenizer.decode(new[row], skip_special_tokens=True)
                    if wanted[start + row] in text.lower() or step == max_new_tokens - 1:
                        texts[row] = text
                    else:
                        still.append(k)
                if not still:
                    break
                index = torch.tensor(still, device=device)
                cache.batch_select_indices(index)
                rows = [rows[k] for k in still]
                mask = torch.cat([mask[index], mask.new_ones(len(still), 1)], 1)
                positions = positions[index, -1:] + 1
                logits = model(
                    input_ids=torch.tensor([[tokens[k]] for k in still], device=device),
                    attention_mask=mask,
                    position_ids=positions,
                    **cache_inputs(model, cache),
                    **keep_logits,
                ).logits[:, -1]
            out.extend(texts)
    return out
