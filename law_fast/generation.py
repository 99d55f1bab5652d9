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


class _AnswerSeen:
    """A stopping criterion that ends a row as soon as its answer occurs in the decoded new tokens.

    The reference rule looks for the answer in the decoded 10-token continuation; once it occurs
    in a prefix of that continuation it occurs in the whole (byte-level decoding of a prefix is a
    prefix of the decoding, up to an incomplete trailing character), so the decision is final.
    Rows that emit EOS end by themselves, and ``generate`` stops when every row has ended."""

    def __init__(self, tokenizer, answers: Sequence[str], prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len
        self.answers = [a.strip().lower() for a in answers]

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([a in t.lower() for a, t in zip(self.answers, texts)], device=input_ids.device)


def known_facts(model, tokenizer, facts, max_new_tokens: int = 10, batch_size: int = 32,
                desc: str | None = None, stop_when_decided: bool = False) -> tuple[list[bool], list[str]]:
    """Which facts the model produces (answer in its greedy continuation of the stripped prompt).

    With ``stop_when_decided`` the same decisions cost less when most rows are decided by their
    first token — a washed model's facts, whose greedy continuation starts with EOS: one batched
    step gives every row's first token, which decides a row when it is EOS (empty continuation:
    not known) or already contains the answer; only the undecided rows are then generated, packed
    into full batches, each stopping once its answer has appeared (the decision cannot change;
    the returned continuation then ends there).  On an unwashed model most rows are undecided
    after one token and the extra step costs more than it saves (benchmarks/bench_elimination.py),
    so it is off by default and on for the pipeline's elimination and final checks.  Not with
    tokenizers that clean up spaces when decoding, where a prefix's decoding need not be a
    prefix of the whole."""
    from transformers import StoppingCriteriaList

    prompts = [f.prompt.strip() for f in facts]
    answers = [f.answer for f in facts]
    if not stop_when_decided or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        conts = greedy_continuations(model, tokenizer, prompts, max_new_tokens, batch_size, desc)
        return [answer_in(a, c) for a, c in zip(answers, conts)], conts
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    eos = _eos_ids(model, tokenizer.eos_token_id)
    first = _generate(model, tokenizer, prompts, 1, batch_size, desc, return_ids=True, **greedy)
    conts: list[str | None] = [None] * len(prompts)
    for row, ids in enumerate(first):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if not ids or ids[0] in eos or answer_in(answers[row], text):
            conts[row] = text
    todo = [row for row, c in enumerate(conts) if c is None]
    if todo and max_new_tokens > 1:
        def criteria(start, width):
            return StoppingCriteriaList([_AnswerSeen(tokenizer, [answers[r] for r in todo[start:start + batch_size]], width)])
        rest = _generate(model, tokenizer, [prompts[r] for r in todo], max_new_tokens, batch_size, desc,
                         stopping=criteria, **greedy)
        for row, text in zip(todo, rest):
            conts[row] = text
    conts = [c if c is not None else tokenizer.decode(first[r], skip_special_tokens=True) for r, c in enumerate(conts)]
    return [answer_in(a, c) for a, c in zip(answers, conts)], conts
