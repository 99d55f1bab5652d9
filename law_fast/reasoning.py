"""Reasoning benchmarks scored the way lm-evaluation-harness scores them, from local files.

Tasks (``TASKS``; aliases ``lambada`` → ``lambada_openai``, ``arc-easy`` → ``arc_easy``):

=================  ============================  =======================================================
task               default file                  metrics (harness names)
=================  ============================  =======================================================
``lambada_openai`` ``lambada_openai_test.jsonl`` ``acc`` (the last word is the greedy continuation),
                                                 ``perplexity`` (exp of minus the mean log-likelihood of
                                                 the last word, per word)
``hellaswag``      ``hellaswag_val.jsonl``       ``acc``, ``acc_norm`` (4 endings)
``arc_easy``       ``ARC-Easy-test.jsonl``       ``acc``, ``acc_norm``
``gsm8k``          ``gsm8k_test.jsonl``          ``exact_match`` (flexible-extract), ``exact_match_strict``
                                                 (as the harness's ``gsm8k_cot``, 8-shot chain of thought)
=================  ============================  =======================================================

The files are read from ``data_dir`` (default: ``$LAW_FAST_REASONING_DIR``, else
``../shared/data/reasoning`` next to the project) or from user-given paths; see
``docs/evaluation.md`` for the formats, the prompts and where we differ from the harness.

Log-likelihood scoring (:func:`loglikelihoods`) follows the harness's ``HFLM``: a request is a
(context, continuation) pair; trailing spaces of the context move to the continuation; the
whole string is tokenised (the tokenizer's default special tokens) and split at the length of
the tokenised context; the sequence is left-truncated to the model's maximum length. Contexts
are left-padded with explicit ``position_ids`` and their KV cache is shared by all the
continuations of the same context, so a batch scores exactly what each request scores alone
(up to floating-point summation order) while each multiple-choice context is computed once.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .corpus import json_lines
from .metrics import gsm8k_exact_match, mean
from .models import model_device

__all__ = [
    "GSM8K_FEWSHOT",
    "TASKS",
    "ReasoningDataError",
    "Score",
    "TaskScores",
    "default_data_dir",
    "encode_pair",
    "generate_until",
    "gsm8k_prompt",
    "load_task",
    "loglikelihoods",
    "max_length",
    "resolve_task",
    "run_lm_eval",
    "run_reasoning",
    "score_gsm8k",
    "score_lambada",
    "score_multiple_choice",
]

log = logging.getLogger(__name__)


class ReasoningDataError(ValueError):
    """A benchmark file that cannot be read (names the file, the line and the field)."""


# ----------------------------------------------------------------------------------------
# Log-likelihood scoring
# ----------------------------------------------------------------------------------------


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


def max_length(model, tokenizer=None, default: int = 2048) -> int:
    """The model's context length, resolved as the harness does: config ``n_positions``,
    ``max_position_embeddings``, ``n_ctx``, else the tokenizer's ``model_max_length`` (when set),
    else ``default``."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**9:
        return limit
    return default


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def _prefix_id(tokenizer) -> int:
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
        return [_prefix_id(tokenizer)], _encode(tokenizer, continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def _supports_logits_to_keep(model) -> bool:
    cached = getattr(model, "_law_fast_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(model.forward).parameters
        try:
            model._law_fast_logits_to_keep = cached
        except AttributeError:  # pragma: no cover - exotic wrappers
            pass
    return cached


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) int64, rows right-aligned."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        attention_mask[i, width - len(r):] = 1
    return input_ids, attention_mask


def _logprobs(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)


def _score_batch(model, contexts: Sequence[tuple[int, ...]], rows: Sequence[tuple[int, list[int]]], pad_id: int,
                 device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row (context index, continuation ids): (token log-probs (n,), argmax ids (n,)).

    Pass 1 runs each distinct context once, left-padded with ``position_ids`` counting real
    tokens only, keeping its KV cache and the logits of its last position (which predict the
    continuation's first token). Pass 2 runs every continuation but its last token on a copy of
    its context's cache (right-padded; positions continue after the context), so contexts shared
    by several continuations (multiple-choice endings) are computed once.
    """
    ctx_ids, ctx_mask = _left_pad(contexts, pad_id)
    ctx_ids, ctx_mask = ctx_ids.to(device), ctx_mask.to(device)
    position_ids = (ctx_mask.cumsum(-1) - 1).clamp(min=0)
    keep = {"logits_to_keep": 1} if _supports_logits_to_keep(model) else {}
    out = model(input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=position_ids, use_cache=True, **keep)
    first = _logprobs(out.logits[:, -1])                                   # (B, V)
    owner = torch.tensor([c for c, _ in rows], device=device)
    first_rows = first.index_select(0, owner)                              # (R, V)
    longest = max(len(cont) for _, cont in rows)
    rest = None
    if longest > 1:
        cache = getattr(out, "cache", None) or out.past_key_values        # transformers >= 5.x names it `cache`
        cache.reorder_cache(owner)                                         # one cache row per continuation
        width = longest - 1
        cont_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (_, cont) in enumerate(rows):
            cont_ids[r, :len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
            cont_mask[r, :len(cont) - 1] = 1
        cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
        lengths = ctx_mask.sum(-1).index_select(0, owner)                  # (R,) real context tokens
        positions = lengths[:, None] + torch.arange(width, device=device)[None, :]
        mask = torch.cat([ctx_mask.index_select(0, owner), cont_mask], dim=1)
        cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        rest = _logprobs(model(input_ids=cont_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                               **{cache_arg: cache}).logits)               # (R, width, V)
    results = []
    for r, (_, cont) in enumerate(rows):
        lp = first_rows[r:r + 1] if rest is None else torch.cat([first_rows[r:r + 1], rest[r, :len(cont) - 1]])
        target = torch.tensor(cont, device=device)
        results.append((lp.gather(-1, target[:, None])[:, 0], lp.argmax(-1)))
    return results


def loglikelihoods(model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16,
                   desc: str | None = None) -> list[Score]:
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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _prefix_id(tokenizer)
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}  # context ids → [(request index, continuation)]
    for i, pair in enumerate(requests):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise TypeError(f"requests[{i}] must be a (context, continuation) pair of strings, got {pair!r}")
        context_ids, continuation_ids = encode_pair(tokenizer, *pair)
        if not continuation_ids:
            raise ValueError(f"requests[{i}]: the continuation {pair[1]!r} encodes to no tokens")
        if len(continuation_ids) > limit:
            raise ValueError(f"requests[{i}]: the continuation has {len(continuation_ids)} tokens, more than the "
                             f"model's context length {limit}")
        full = (context_ids + continuation_ids)[-(limit + 1):]              # the harness's left truncation
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
            for i, (_, cont), (token_lp, argmax) in zip(indices, rows, _score_batch(model, batch, rows, pad_id, device)):
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
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


def generate_until(model, tokenizer, prompts: Sequence[str], until: Sequence[str], max_new_tokens: int = 256,
                   batch_size: int = 8, desc: str | None = None) -> list[str]:
    """Greedy continuations of ``prompts``, each cut before the first of ``until`` (the decoded
    EOS token is added to the stop strings, as the harness does).

    Prompts are left-truncated to ``max_length - max_new_tokens`` tokens, batched longest
    first and left-padded; generation of a batch ends when every row has hit a stop string
    or EOS, or after ``max_new_tokens``.
    """
    from transformers import StoppingCriteriaList

    limit = max_length(model, tokenizer) - max_new_tokens
    if limit <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the model's "
                         f"context of {max_length(model, tokenizer)} tokens")
    stops = list(until)
    eos = tokenizer.eos_token
    if eos and eos not in stops:
        stops.append(eos)
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _prefix_id(tokenizer)
    encoded = [_encode(tokenizer, p)[-limit:] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    batches = range(0, len(order), batch_size)
    with torch.no_grad():
        for start in tqdm(batches, desc=desc, disable=desc is None, leave=False):
            rows = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                input_ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
                attention_mask[r, width - len(encoded[i]):] = 1
            criteria = StoppingCriteriaList([_StopOnStrings(tokenizer, stops, width)])
            ids = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_id, stopping_criteria=criteria,
                                 **greedy)
            for r, i in enumerate(rows):
                text = tokenizer.decode(ids[r, width:], skip_special_tokens=True)
                for stop in stops:
                    if stop:
                        text = text.split(stop)[0]
                out[i] = text
    return out


# ----------------------------------------------------------------------------------------
# Data files
# ----------------------------------------------------------------------------------------


def default_data_dir() -> Path | None:
    """``$LAW_FAST_REASONING_DIR``, else ``shared/data/reasoning`` beside the project checkout
    (or beside the working directory), else None."""
    env = os.environ.get("LAW_FAST_REASONING_DIR")
    if env:
        return Path(env)
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "data" / "reasoning",
                  Path.cwd().parent / "shared" / "data" / "reasoning"]
    for path in candidates:
        if path.is_dir():
            return path
    return None


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """[(line number, record)] of a JSON Lines file; errors name the file and the line."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    records = []
    for lineno, record in json_lines(path.read_text(encoding="utf-8-sig"), path, ReasoningDataError):
        if not isinstance(record, dict):
            raise ReasoningDataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append((lineno, record))
    if not records:
        raise ReasoningDataError(f"{path}: the file holds no records")
    return records


def _field(record: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in record:
        raise ReasoningDataError(f"{where}: missing field {key!r} (keys present: {sorted(record)})")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ReasoningDataError(f"{where}: field {key!r} must be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _string_list(record: dict, key: str, where: str) -> list[str]:
    value = _field(record, key, list, where)
    if len(value) < 2 or not all(isinstance(v, str) for v in value):
        raise ReasoningDataError(f"{where}: field {key!r} must be a list of at least 2 strings, got {value!r:.80}")
    return value


def _lambada_doc(record: dict, where: str) -> dict:
    text = _field(record, "text", str, where)
    if " " not in text.strip():
        raise ReasoningDataError(f"{where}: field 'text' needs at least two words, got {text!r:.60}")
    return {"text": text}


def hellaswag_preprocess(text: str) -> str:
    """The harness's HellaSwag ``preprocess``: strip, ``" [title]"`` → ``". "``, drop ``[...]``
    markup, collapse double spaces."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


_LAST_FRAGMENT = re.compile(r"^(.*[.!?] )([a-z][^.!?]*)$", re.S)


def _capitalize_last_fragment(query: str) -> str:
    """Reconstruct the harness's ``ctx_b.capitalize()`` on a joined ``query``: the fragment after
    the last sentence end, when it starts with a lower-case letter, is ``str.capitalize``-d."""
    match = _LAST_FRAGMENT.match(query)
    return match.group(1) + match.group(2).capitalize() if match else query


def _hellaswag_doc(record: dict, where: str) -> dict:
    endings = _string_list(record, "endings", where)
    label = record.get("label")
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(endings):
        raise ReasoningDataError(f"{where}: field 'label' must be an index into 'endings' (0..{len(endings) - 1}), "
                                 f"got {record.get('label')!r}")
    if "ctx_a" in record:  # the original HellaSwag schema: exactly the harness's process_docs
        ctx = _field(record, "ctx_a", str, where) + " " + _field(record, "ctx_b", str, where).capitalize()
        query = hellaswag_preprocess(_field(record, "activity_label", str, where) + ": " + ctx)
    else:  # {"query", "endings", "label"}: ctx already joined (ctx_b not capitalised)
        query = _capitalize_last_fragment(hellaswag_preprocess(_field(record, "query", str, where)))
    return {"query": query, "choices": [hellaswag_preprocess(e) for e in endings], "gold": label}


def _arc_doc(record: dict, where: str) -> dict:
    question = _field(record, "question", str, where)
    choices = _field(record, "choices", dict, where)
    texts = _string_list(choices, "text", where + " choices")
    labels = _string_list(choices, "label", where + " choices")
    key = _field(record, "answerKey", str, where)
    if len(texts) != len(labels) or key not in labels:
        raise ReasoningDataError(f"{where}: answerKey {key!r} is not one of choices.label {labels} "
                                 f"(or text and label differ in length)")
    return {"question": question, "choices": texts, "gold": labels.index(key)}


def _gsm8k_doc(record: dict, where: str) -> dict:
    question = _field(record, "question", str, where)
    answer = _field(record, "answer", str, where)
    if "####" not in answer:
        raise ReasoningDataError(f"{where}: field 'answer' must end with '#### <number>', got {answer[-40:]!r}")
    return {"question": question, "answer": answer}


@dataclass(frozen=True)
class _Task:
    name: str
    filename: str
    parse: Callable[[dict, str], dict]


TASKS: dict[str, _Task] = {
    "lambada_openai": _Task("lambada_openai", "lambada_openai_test.jsonl", _lambada_doc),
    "hellaswag": _Task("hellaswag", "hellaswag_val.jsonl", _hellaswag_doc),
    "arc_easy": _Task("arc_easy", "ARC-Easy-test.jsonl", _arc_doc),
    "gsm8k": _Task("gsm8k", "gsm8k_test.jsonl", _gsm8k_doc),
}
_ALIASES = {"lambada": "lambada_openai", "arc-easy": "arc_easy", "arc": "arc_easy", "gsm8k_cot": "gsm8k"}


def resolve_task(name: str) -> str:
    """The canonical task name of ``name`` (an alias or a task name)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(f"unknown reasoning task {name!r}; known: {', '.join(TASKS)} "
                         f"(aliases: {', '.join(f'{a}={t}' for a, t in _ALIASES.items())})")
    return key


def _subset(count: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a fixed-seed random subset of ``limit`` items (all items when None/too big),
    in file order."""
    if limit is None or limit >= count:
        return list(range(count))
    if limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    return sorted(random.Random(seed).sample(range(count), limit))


def load_task(name: str, path: str | os.PathLike | None = None, limit: int | None = None, seed: int = 0,
              data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The documents of a task, normalised (see the module docstring), a fixed-seed subset of
    ``limit`` of them when given. ``path`` overrides ``data_dir / <default file>``."""
    task = TASKS[resolve_task(name)]
    if path is None:
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        if root is None:
            raise FileNotFoundError(f"no data folder for reasoning task {task.name!r}: pass a path, data_dir, or set "
                                    f"LAW_FAST_REASONING_DIR to a folder holding {task.filename}")
        path = root / task.filename
    path = Path(path)
    records = _read_jsonl(path)
    chosen = _subset(len(records), limit, seed)
    docs = []
    for index in chosen:
        lineno, record = records[index]
        doc = task.parse(record, f"{path}:{lineno}")
        doc["index"] = index
        docs.append(doc)
    return docs


# ----------------------------------------------------------------------------------------
# Scorers
# ----------------------------------------------------------------------------------------


@dataclass
class TaskScores:
    """Aggregate metrics (fractions in [0, 1]; perplexity as a number) and per-item details."""

    metrics: dict[str, float]
    items: list[dict] = field(default_factory=list)


def lambada_request(doc: dict) -> tuple[str, str]:
    words = doc["text"].split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def score_lambada(model, tokenizer, docs: Sequence[dict], batch_size: int = 16, desc: str | None = None) -> TaskScores:
    """lambada_openai: ``acc`` = the last word (with its leading space) is the greedy
    continuation; ``perplexity`` = exp(-mean over documents of its summed log-likelihood)."""
    scores = loglikelihoods(model, tokenizer, [lambada_request(d) for d in docs], batch_size, desc)
    lls = [s.logprob for s in scores]
    metrics = {"acc": mean(float(s.greedy) for s in scores), "perplexity": math.exp(-mean(lls)),
               "n": len(docs)}
    return TaskScores(metrics, [{"index": d["index"], "ll": s.logprob, "greedy": s.greedy} for d, s in zip(docs, scores)])


def multiple_choice_requests(task: str, doc: dict) -> tuple[str, list[str]]:
    """(context, choices) of a hellaswag / arc_easy document (the harness's doc_to_text and
    doc_to_choice)."""
    if task == "hellaswag":
        return doc["query"], doc["choices"]
    if task == "arc_easy":
        return f"Question: {doc['question']}\nAnswer:", doc["choices"]
    raise ValueError(f"{task!r} is not a multiple-choice task")


def score_multiple_choice(model, tokenizer, task: str, docs: Sequence[dict], batch_size: int = 16,
                          desc: str | None = None) -> TaskScores:
    """hellaswag / arc_easy: each choice is scored as the continuation ``" " + choice``;
    ``acc`` = argmax of the log-likelihoods is the gold choice; ``acc_norm`` = argmax of the
    log-likelihood divided by the choice's length in characters (the harness's rule)."""
    requests, spans = [], []
    for doc in docs:
        context, choices = multiple_choice_requests(task, doc)
        spans.append((len(requests), len(choices)))
        requests.extend((context, " " + c) for c in choices)
    scores = loglikelihoods(model, tokenizer, requests, batch_size, desc)
    acc, acc_norm, items = [], [], []
    for doc, (start, count) in zip(docs, spans):
        lls = [s.logprob for s in scores[start:start + count]]
        lengths = [float(len(c)) for c in multiple_choice_requests(task, doc)[1]]
        normed = [ll / n for ll, n in zip(lls, lengths)]
        pick = max(range(count), key=lambda k: (lls[k], -k))
        pick_norm = max(range(count), key=lambda k: (normed[k], -k))
        acc.append(float(pick == doc["gold"]))
        acc_norm.append(float(pick_norm == doc["gold"]))
        items.append({"index": doc["index"], "lls": lls, "gold": doc["gold"]})
    return TaskScores({"acc": mean(acc), "acc_norm": mean(acc_norm), "n": len(docs)}, items)


#: The 8 chain-of-thought exemplars of Wei et al. (2022), as in the harness's ``gsm8k_cot`` task.
GSM8K_FEWSHOT: tuple[tuple[str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
)
GSM8K_UNTIL = ("Q:", "</s>", "<|im_end|>")


def gsm8k_prompt(question: str, num_fewshot: int = 8) -> str:
    """``"Q: <exemplar>\\nA: <chain of thought>"`` × num_fewshot, joined by blank lines, then
    ``"\\n\\nQ: <question>\\nA:"`` (the harness's gsm8k_cot prompt)."""
    if not 0 <= num_fewshot <= len(GSM8K_FEWSHOT):
        raise ValueError(f"num_fewshot must be between 0 and {len(GSM8K_FEWSHOT)}, got {num_fewshot}")
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in GSM8K_FEWSHOT[:num_fewshot])
    return f"{shots}Q: {question}\nA:"


def score_gsm8k(model, tokenizer, docs: Sequence[dict], num_fewshot: int = 8, max_new_tokens: int = 256,
                batch_size: int = 8, desc: str | None = None) -> TaskScores:
    """gsm8k (harness ``gsm8k_cot``): greedy generation after the few-shot prompt, stopped at
    ``Q:``; ``exact_match`` = the last number of the generation equals the gold final number
    (flexible-extract), ``exact_match_strict`` = the number in "The answer is N." does."""
    prompts = [gsm8k_prompt(d["question"], num_fewshot) for d in docs]
    generations = generate_until(model, tokenizer, prompts, GSM8K_UNTIL, max_new_tokens, batch_size, desc)
    flexible = [gsm8k_exact_match(g, d["answer"], "flexible") for g, d in zip(generations, docs)]
    strict = [gsm8k_exact_match(g, d["answer"], "strict") for g, d in zip(generations, docs)]
    items = [{"index": d["index"], "generation": g} for d, g in zip(docs, generations)]
    return TaskScores({"exact_match": mean(flexible), "exact_match_strict": mean(strict), "n": len(docs)}, items)


def _task_limit(limit: int | Mapping[str, int] | None, task: str) -> int | None:
    if isinstance(limit, Mapping):
        for key, value in limit.items():
            if key != "default" and resolve_task(key) == task:
                return value
        return limit.get("default")
    return limit


def run_reasoning(model, tokenizer, tasks: Sequence[str], limit: int | Mapping[str, int] | None = None,
                  seed: int = 0, batch_size: int = 16, paths: Mapping[str, str | os.PathLike] | None = None,
                  data_dir: str | os.PathLike | None = None, gsm8k_fewshot: int = 8,
                  gsm8k_max_new_tokens: int = 256, progress: bool = True,
                  details: bool = False) -> dict[str, dict]:
    """Run the built-in scorers on ``tasks``; returns ``{task: metrics}`` (plus ``"items"``
    per task when ``details``). ``limit`` is an int for every task or ``{task: int}``
    (key ``"default"`` for the others); ``paths`` maps tasks to their files."""
    paths = {resolve_task(k): v for k, v in (paths or {}).items()}
    results: dict[str, dict] = {}
    for name in dict.fromkeys(resolve_task(t) for t in tasks):
        docs = load_task(name, paths.get(name), _task_limit(limit, name), seed, data_dir)
        desc = name if progress else None
        if name == "lambada_openai":
            scores = score_lambada(model, tokenizer, docs, batch_size, desc)
        elif name == "gsm8k":
            scores = score_gsm8k(model, tokenizer, docs, gsm8k_fewshot, gsm8k_max_new_tokens,
                                 max(1, batch_size // 2), desc)
        else:
            scores = score_multiple_choice(model, tokenizer, name, docs, batch_size, desc)
        results[name] = dict(scores.metrics, **({"items": scores.items} if details else {}))
        log.info("%s: %s", name, scores.metrics)
    return results


# ----------------------------------------------------------------------------------------
# lm-evaluation-harness adapter
# ----------------------------------------------------------------------------------------


def _lm_eval_config(name: str, data_file: str, gsm8k_fewshot: int, gsm8k_max_new_tokens: int) -> dict:
    """An lm_eval task config reading our normalised documents from ``data_file``."""
    base = {"task": f"law_fast_{name}", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": data_file}},
            "test_split": "test", "metadata": {"version": 1.0}}
    if name == "lambada_openai":  # identical to the harness's lambada_openai.yaml
        return dict(base, output_type="loglikelihood", doc_to_text="{{text.split(' ')[:-1]|join(' ')}}",
                    doc_to_target="{{' '+text.split(' ')[-1]}}",
                    metric_list=[{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                 {"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    mc_metrics = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                  {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]
    if name == "hellaswag":  # hellaswag.yaml after its process_docs (we wrote query/choices/gold)
        return dict(base, output_type="multiple_choice", doc_to_text="{{query}}", doc_to_target="{{gold}}",
                    doc_to_choice="choices", metric_list=mc_metrics)
    if name == "arc_easy":  # arc_easy.yaml (we wrote question/choices/gold)
        return dict(base, output_type="multiple_choice", doc_to_text="Question: {{question}}\nAnswer:",
                    doc_to_target="{{gold}}", doc_to_choice="{{choices}}", metric_list=mc_metrics)
    if name == "gsm8k":  # gsm8k-cot.yaml
        return dict(
            base, output_type="generate_until", doc_to_text="Q: {{question}}\nA:",
            doc_to_target="{{answer.split('####')[-1].strip() if answer is defined else target}}",
            fewshot_config={"sampler": "first_n", "samples": [{"question": q, "target": a} for q, a in GSM8K_FEWSHOT]},
            num_fewshot=gsm8k_fewshot, target_delimiter=" ", fewshot_delimiter="\n\n",
            generation_kwargs={"until": list(GSM8K_UNTIL), "do_sample": False, "max_gen_toks": gsm8k_max_new_tokens},
            filter_list=[
                {"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": r"The answer is (\-?[0-9\.\,]+)."},
                                                    {"function": "take_first"}]},
                {"name": "flexible-extract", "filter": [{"function": "regex", "group_select": -1,
                                                         "regex_pattern": r"(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                                                        {"function": "take_first"}]}],
            metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
                          "ignore_punctuation": False, "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}])
    raise ValueError(name)


def run_lm_eval(model, tokenizer, tasks: Sequence[str], limit: int | Mapping[str, int] | None = None, seed: int = 0,
                batch_size: int = 16, paths: Mapping[str, str | os.PathLike] | None = None,
                data_dir: str | os.PathLike | None = None, gsm8k_fewshot: int = 8, gsm8k_max_new_tokens: int = 256,
                details: bool = False) -> dict[str, dict]:
    """Run the same tasks through lm-evaluation-harness (``pip install lm-eval``) on the in-memory
    model, offline: the selected documents (the same fixed-seed subset as :func:`run_reasoning`)
    are written to temporary JSON Lines files and read by task configs equal to the harness's own
    (``lambada_openai``, ``hellaswag``, ``arc_easy``, ``gsm8k_cot``) except for the dataset source.
    Returns ``{task: metrics}`` with our metric names (plus ``"items"`` when ``details``)."""
    import tempfile

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.api.task import ConfigurableTask
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        raise ModuleNotFoundError("the lm-evaluation-harness adapter needs `pip install lm-eval`") from err

    paths = {resolve_task(k): v for k, v in (paths or {}).items()}
    names = list(dict.fromkeys(resolve_task(t) for t in tasks))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model_device(model)))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="law_fast_lm_eval_") as tmp:
        task_objects, docs_of = [], {}
        for name in names:
            docs = load_task(name, paths.get(name), _task_limit(limit, name), seed, data_dir)
            docs_of[name] = docs
            data_file = os.path.join(tmp, f"{name}.jsonl")
            with open(data_file, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
            config = _lm_eval_config(name, data_file, gsm8k_fewshot, gsm8k_max_new_tokens)
            task_objects.append(ConfigurableTask(config=config))
        output = simple_evaluate(model=lm, tasks=task_objects, log_samples=details, random_seed=seed,
                                 numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                 bootstrap_iters=0)
    for name in names:
        raw = output["results"][f"law_fast_{name}"]
        if name == "gsm8k":
            metrics = {"exact_match": float(raw["exact_match,flexible-extract"]),
                       "exact_match_strict": float(raw["exact_match,strict-match"])}
        else:
            metrics = {k.split(",")[0]: float(v) for k, v in raw.items() if k.endswith(",none") and "stderr" not in k}
        metrics["n"] = len(docs_of[name])
        if details:  # one sample per document (generate_until tasks log one per filter: keep the first)
            samples = {}
            for sample in output["samples"][f"law_fast_{name}"]:
                samples.setdefault(sample["doc_id"], sample)
            metrics["items"] = [samples[k] for k in sorted(samples)]
        results[name] = metrics
    return results
