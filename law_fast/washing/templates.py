"""Context templates (law-reference §2.1): short texts sampled from the unedited model that are
put before every fact prompt when keys and targets are computed."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence

from ..hf.generate import sample_continuations

log = logging.getLogger(__name__)

TEMPLATE_SEEDS = ("The", "Therefore", "Because", "I", "You")


def context_templates(
    model, tokenizer, seed: int = 0, length: int = 10, per_seed: int = 1, seeds: Sequence[str] = TEMPLATE_SEEDS
) -> list[str]:
    """The reference's context templates (law-reference §2.1), but seeded.

    Returns ``["{}"] + [sample + ". {}" for each seed word]``: top-5 sampling from the
    unedited model, ``length`` tokens in total, NFKD-normalised, braces replaced by spaces.
    """
    prompts = [word for word in seeds for _ in range(per_seed)]
    n_prompt = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    texts = sample_continuations(
        model, tokenizer, prompts, max_new_tokens=max(1, length - n_prompt), top_k=5, seed=seed
    )
    templates = ["{}"]
    for prompt, cont in zip(prompts, texts):
        text = unicodedata.normalize("NFKD", prompt + cont).replace("\n\n", " ")
        text = text.replace("{", " ").replace("}", " ")
        templates.append(text + ". {}")
    return templates
