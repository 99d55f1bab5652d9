"""The known-fact check (law-reference §6.2): which facts the model still produces.  It selects
the facts to wash, drives the successive elimination across layers and gives the final check."""

from __future__ import annotations

import logging

from .. import dist
from ..facts import answer_in
from ..hf.generate import greedy_continuations, greedy_until_answer, plain_greedy

log = logging.getLogger(__name__)


def known_facts(
    model,
    tokenizer,
    facts,
    max_new_tokens: int = 10,
    batch_size: int = 32,
    desc: str | None = None,
    stop_when_decided: bool = True,
) -> tuple[list[bool], list[str]]:
    """Which facts the model produces (answer in its greedy continuation of the stripped prompt).

    With ``stop_when_decided`` (default) every row leaves its batch, and the KV cache, as soon as
    its decision is known — at an end token or once its answer has appeared (the returned
    continuation then ends there; :func:`~law_fast.hf.generate.greedy_until_answer`).  The decisions are those of the full
    10-token generation (``stop_when_decided=False``, Hugging Face ``generate``), which is also
    used for tokenizers that clean up spaces when decoding (a prefix's decoding need not be a
    prefix of the whole) and for generation configs whose greedy decoding is not a plain argmax."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")

    def check(share):  # under torchrun each process checks its share (law_fast.dist)
        prompts = [f.prompt.strip() for f in share]
        answers = [f.answer for f in share]
        if stop_when_decided and plain_greedy(model) and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
            conts = greedy_until_answer(model, tokenizer, prompts, answers, max_new_tokens, batch_size, desc)
        else:
            conts = greedy_continuations(model, tokenizer, prompts, max_new_tokens, batch_size, desc)
        return [(answer_in(a, c), c) for a, c in zip(answers, conts)]

    decided = dist.map_sharded(check, list(facts))
    return [k for k, _ in decided], [c for _, c in decided]
