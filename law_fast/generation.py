"""Text generation used by the pipeline: greedy checks, seeded sampling, context templates.

All generation is batched, left-padded and KV-cached (Hugging Face ``generate``, or the checks' own loop); the
tokenizer's padding side is restored afterwards (the reference mutates it).
"""

from __future__ import annotations

import inspect
import unicodedata
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .models import model_device
from .tokens import padding_side

TEMPLATE_SEEDS = ("The", "Therefore", "Because", "I", "You")


def _generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int, desc: str | None,
              stopping=None, return_ids: bool = False, **sampling) -> list:
    """Continuations (new tokens only, special tokens skipped) of ``prompts``; with ``return_ids``
    the new token ids instead (padding after EOS removed).  ``stopping(start, prompt_width)`` may
    return stopping criteria for the batch starting at ``start``."""
    out: list = []
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = range(0, len(prompts), batch_size)
    with torch.no_grad(), padding_side(tokenizer, "left"):
        for start in tqdm(batches, desc=desc, disable=desc is None or len(batches) < 2, leave=False):
            chunk = list(prompts[start:start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            if stopping is not None:
                sampling["stopping_criteria"] = stopping(start, enc["input_ids"].shape[1])
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad_id, **sampling)
            new = ids[:, enc["input_ids"].shape[1]:]
            if return_ids:
                out.extend(_until_end(row, pad_id, model) for row in new.tolist())
            else:
                out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


def _eos_ids(model, fallback: int | None) -> set:
    """The token ids that end generation (the generation config's EOS, else ``fallback``)."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [fallback])


def _until_end(ids: list[int], pad_id: int, model) -> list[int]:
    """New token ids up to and including the first EOS (``generate`` pads finished rows)."""
    eos = _eos_ids(model, pad_id)
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i + 1]
    return ids


def greedy_continuations(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 10, batch_size: int = 32,
                         desc: str | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (the reference's prediction rule, §6.2)."""
    greedy = dict(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
    return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc, **greedy)


def answer_in(answer: str, continuation: str) -> bool:
    """The reference's correctness rule: stripped, lower-cased answer is a substring of the continuation."""
    return answer.strip().lower() in continuation.lower()


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


def sample_continuations(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, top_k: int, seed: int,
                         batch_size: int = 32, desc: str | None = None) -> list[str]:
    """Top-k sampled continuations, reproducible from ``seed`` (the global RNG is not touched)."""
    from transformers import LogitsProcessorList

    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    sampler = LogitsProcessorList([_TopKSampler(top_k, generator)])
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc, logits_processor=sampler, **greedy)


def context_templates(model, tokenizer, seed: int = 0, length: int = 10, per_seed: int = 1,
                      seeds: Sequence[str] = TEMPLATE_SEEDS) -> list[str]:
    """The reference's context templates (law-reference §2.1), but seeded.

    Returns ``["{}"] + [sample + ". {}" for each seed word]``: top-5 sampling from the
    unedited model, ``length`` tokens in total, NFKD-normalised, braces replaced by spaces.
    """
    prompts = [word for word in seeds for _ in range(per_seed)]
    n_prompt = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    texts = sample_continuations(model, tokenizer, prompts, max_new_tokens=max(1, length - n_prompt), top_k=5, seed=seed)
    templates = ["{}"]
    for prompt, cont in zip(prompts, texts):
        text = unicodedata.normalize("NFKD", prompt + cont).replace("\n\n", " ")
        text = text.replace("{", " ").replace("}", " ")
        templates.append(text + ". {}")
    return templates


# generation-config fields that change what greedy decoding emits, with their neutral values
# (None, an empty list and these count as unset); with any of them set, the decided-rows loop
# below defers to ``generate``
_GREEDY_NEUTRAL = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                   "encoder_no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": 0, "num_beams": 1,
                   "guidance_scale": 1.0, "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
                   "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": None,
                   "exponential_decay_length_penalty": None, "watermarking_config": None, "stop_strings": None}


def _plain_greedy(model) -> bool:
    """Whether ``generate``'s greedy decoding is a plain argmax that stops at a known end token."""
    config = model.generation_config
    if config.eos_token_id is None:   # generate would not stop at EOS
        return False
    return all(getattr(config, name, None) in (None, [], (), neutral) for name, neutral in _GREEDY_NEUTRAL.items())


def _decided_greedy(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], max_new_tokens: int,
                    batch_size: int, desc: str | None) -> list[str]:
    """Greedy continuations, each row dropped from its batch as soon as its decision is known.

    A row is decided when it emits an end token (its continuation is complete) or when its answer
    occurs in the decoded new tokens (byte-level decoding of a prefix is a prefix of the decoding,
    up to an incomplete trailing character, so the answer stays in the whole continuation).  The
    KV cache keeps only the undecided rows, so every step costs what the open rows need; the
    continuation returned for a row decided by its answer ends there."""
    from .models import cache_inputs, new_cache

    device = model_device(model)
    eos = _eos_ids(model, tokenizer.eos_token_id)
    wanted = [a.strip().lower() for a in answers]
    keep_logits = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out: list[str] = []
    batches = range(0, len(prompts), batch_size)
    with torch.no_grad(), padding_side(tokenizer, "left"):
        for start in tqdm(batches, desc=desc, disable=desc is None or len(batches) < 2, leave=False):
            enc = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True).to(device)
            mask = enc["attention_mask"]
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            cache = new_cache()
            logits = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions,
                           **cache_inputs(model, cache), **keep_logits).logits[:, -1]
            rows = list(range(len(mask)))              # batch rows still open, in cache order
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
                logits = model(input_ids=torch.tensor([[tokens[k]] for k in still], device=device), attention_mask=mask,
                               position_ids=positions, **cache_inputs(model, cache), **keep_logits).logits[:, -1]
            out.extend(texts)
    return out


def known_facts(model, tokenizer, facts, max_new_tokens: int = 10, batch_size: int = 32,
                desc: str | None = None, stop_when_decided: bool = True) -> tuple[list[bool], list[str]]:
    """Which facts the model produces (answer in its greedy continuation of the stripped prompt).

    With ``stop_when_decided`` (default) every row leaves its batch, and the KV cache, as soon as
    its decision is known — at an end token or once its answer has appeared (the returned
    continuation then ends there; :func:`_decided_greedy`).  The decisions are those of the full
    10-token generation (``stop_when_decided=False``, Hugging Face ``generate``), which is also
    used for tokenizers that clean up spaces when decoding (a prefix's decoding need not be a
    prefix of the whole) and for generation configs whose greedy decoding is not a plain argmax."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    prompts = [f.prompt.strip() for f in facts]
    answers = [f.answer for f in facts]
    if stop_when_decided and _plain_greedy(model) and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        conts = _decided_greedy(model, tokenizer, prompts, answers, max_new_tokens, batch_size, desc)
    else:
        conts = greedy_continuations(model, tokenizer, prompts, max_new_tokens, batch_size, desc)
    return [answer_in(a, c) for a, c in zip(answers, conts)], conts
