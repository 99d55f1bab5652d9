"""Text generation used by the pipeline: greedy checks, seeded sampling, context templates.

All generation is batched, left-padded and KV-cached (Hugging Face ``generate``); the
tokenizer's padding side is restored afterwards (the reference mutates it).
"""

from __future__ import annotations

import unicodedata
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .models import model_device
from .tokens import padding_side

TEMPLATE_SEEDS = ("The", "Therefore", "Because", "I", "You")


def _generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int, desc: str | None, **sampling) -> list[str]:
    """Continuations (new tokens only, special tokens skipped) of ``prompts``."""
    out: list[str] = []
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = range(0, len(prompts), batch_size)
    with torch.no_grad(), padding_side(tokenizer, "left"):
        for start in tqdm(batches, desc=desc, disable=desc is None or len(batches) < 2, leave=False):
            chunk = list(prompts[start:start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad_id, **sampling)
            out.extend(tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def greedy_continuations(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 10, batch_size: int = 32,
                         desc: str | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (the reference's prediction rule, §6.2)."""
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
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


def known_facts(model, tokenizer, facts, max_new_tokens: int = 10, batch_size: int = 32,
                desc: str | None = None) -> tuple[list[bool], list[str]]:
    """Which facts the model produces (answer in its greedy continuation of the stripped prompt)."""
    conts = greedy_continuations(model, tokenizer, [f.prompt.strip() for f in facts], max_new_tokens, batch_size, desc)
    return [answer_in(f.answer, c) for f, c in zip(facts, conts)], conts
