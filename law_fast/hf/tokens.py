"""Tokenisation helpers: filling templates and finding the subject's last token.

The reference counts tokens of the prefix, subject and suffix separately (law-reference §2.2),
which is off by one with BOS-adding tokenizers and wrong when BPE merges across the subject
boundary.  We locate the subject by character offsets in the tokenisation of the *whole*
sentence instead (fast tokenizers), falling back to tokenising the text up to the end of the
subject (slow tokenizers).  For GPT-2-style tokenizers both give the reference's index.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .compat import max_length, pad_id

log = logging.getLogger(__name__)

SLOT = "{}"


def fill(template: str, subject: str, suffix: str = "") -> tuple[str, int]:
    """Put ``subject`` into the single ``{}`` of ``template`` and append ``suffix``.

    Returns ``(text, end)`` where ``end`` is the character index just past the subject.
    """
    if template.count(SLOT) != 1:
        raise ValueError(f"template must contain exactly one '{{}}': {template!r}")
    head, tail = template.split(SLOT)
    return head + subject + tail + suffix, len(head) + len(subject)


def encode(tokenizer, text: str) -> list[int]:
    """The token ids of ``text`` with the tokenizer's default special tokens."""
    return list(tokenizer(text)["input_ids"])


def prefix_id(tokenizer) -> int:
    for value in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer defines neither a BOS nor an EOS token; an empty context cannot be scored")


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids (context, continuation) as the harness's ``HFLM._encode_pair``.

    Trailing whitespace of ``context`` is moved to the front of ``continuation``; the joined
    text is tokenised once and split after ``len(tokenize(context))`` tokens, so BPE merges
    across the boundary are those of the joined text. An empty context becomes the BOS (else
    EOS) token, as the harness's ``prefix_token_id``.
    """
    if context == "":
        return [prefix_id(tokenizer)], encode(tokenizer, continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation)
    context_ids = encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


def answer_ids(tokenizer, prompt: str, answer: str) -> list[int]:
    """The token ids of ``answer`` as it follows ``prompt`` after a space: the prompt + " " + answer
    tokenised as one text and split after the prompt's tokens (:func:`encode_pair`).  Tokenised alone,
    " answer" is not that with tokenizers that mark a word's leading space by a prefix (Llama-2's and
    Mistral's "▁": a lone "▁" token, then "▁answer"); for GPT-2's byte-level BPE the two agree."""
    _, ids = encode_pair(tokenizer, prompt.strip(), " " + answer.strip())
    if not answer.strip() or not ids:
        raise ValueError(f"the answer {answer!r} tokenises to nothing after the prompt {prompt!r}")
    return ids


@dataclass
class Encoded:
    """A right-padded batch and, per row, the index of the token holding a marked character."""

    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) int64
    index: torch.Tensor  # (B,) int64: token index of the subject's last token
    lengths: torch.Tensor  # (B,) int64: number of real tokens

    def to(self, device) -> Encoded:
        return Encoded(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.index, self.lengths)))

    @property
    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


TOKENIZE_ROWS = 4096  # texts per tokenizer call: its per-row encodings are large; the rows kept are 4 B a token


def _encodings(tokenizer, texts: Sequence[str], **kwargs) -> Iterator[tuple[int, dict]]:
    """(start, the tokenizer's output for ``texts[start : start + TOKENIZE_ROWS]``): memory does not grow
    with the tokenizer's per-row objects for all of ``texts`` at once."""
    for start in range(0, len(texts), TOKENIZE_ROWS):
        yield start, tokenizer(list(texts[start : start + TOKENIZE_ROWS]), **kwargs)


def token_ids(tokenizer, texts: Sequence[str]) -> Iterator[array]:
    """The token ids of each of ``texts`` (the tokenizer's own special tokens), as compact int32 arrays."""
    for _, enc in _encodings(tokenizer, texts):
        yield from (array("i", ids) for ids in enc["input_ids"])


def tokenize_at(tokenizer, texts: Sequence[str], char_ends: Sequence[int]) -> tuple[list[array], list[int]]:
    """Tokenise ``texts`` (no padding, the tokenizer's own special tokens) and find, per row, the
    index of the token that contains character ``char_ends[i] - 1``.  Rows are int32 arrays
    (``TOKENIZE_ROWS`` texts per tokenizer call)."""
    if len(texts) != len(char_ends):
        raise ValueError("texts and char_ends differ in length")
    if not getattr(tokenizer, "is_fast", False):
        index = [len(tokenizer(text[:end])["input_ids"]) - 1 for text, end in zip(texts, char_ends)]
        return list(token_ids(tokenizer, texts)), index
    rows, index = [], []
    for start, enc in _encodings(tokenizer, texts, return_offsets_mapping=True):
        for k, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            end = char_ends[start + k]
            hit = next((i for i, (s, e) in enumerate(offsets) if s <= end - 1 < e), None)
            if hit is None:
                raise ValueError(f"no token covers character {end - 1} of {texts[start + k]!r}")
            rows.append(array("i", ids))
            index.append(hit)
    return rows, index


def right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) int64: token rows right-padded with ``pad``."""
    width = max((len(row) for row in rows), default=0)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return input_ids, mask


def encode_at(tokenizer, texts: list[str], char_ends: list[int]) -> Encoded:
    """:func:`tokenize_at`, right-padded into an :class:`Encoded` batch."""
    ids, index = tokenize_at(tokenizer, texts, char_ends)
    input_ids, mask = right_pad(ids, pad_id(tokenizer))
    return Encoded(input_ids, mask, torch.tensor(index, dtype=torch.long), mask.sum(1))


def check_fits(model, tokenizer, texts, reserve: int, names, what: str = "prompt") -> None:
    """Refuse texts that, with ``reserve`` more tokens (context template, generated tokens), do not
    fit in the model's context: ValueError naming the first ones (``names[i]`` for ``texts[i]``),
    their length and the limit — instead of an IndexError deep inside the model."""
    limit = max_length(model, tokenizer)
    lengths = [len(ids) for ids in token_ids(tokenizer, texts)]
    too_long = [(name, n) for name, n in zip(names, lengths) if n + reserve > limit]
    if too_long:
        shown = ", ".join(f"{name} ({n} tokens)" for name, n in too_long[:3])
        raise ValueError(
            f"{len(too_long)} {what}(s) do not fit in the model's context of {limit} tokens with the {reserve} more "
            f"that the wash needs: {shown}{' ...' if len(too_long) > 3 else ''}"
        )
