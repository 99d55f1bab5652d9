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
A task is one row of :data:`TASKS` (:class:`Task`): its file, its record parser, its scorer
(built on :mod:`law_fast.eval.lm`) and its lm-evaluation-harness config; adding a task is one row.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..corpus import json_lines
from .lm import generate_until, loglikelihoods
from .metrics import gsm8k_exact_match, mean, stderr

log = logging.getLogger(__name__)


class ReasoningDataError(ValueError):
    """A benchmark file that cannot be read (names the file, the line and the field)."""


@dataclass(frozen=True)
class TaskSettings:
    """What shapes a task's scores besides its documents."""

    batch_size: int = 16
    gsm8k_fewshot: int = 8
    gsm8k_max_new_tokens: int = 256


def default_data_dir() -> Path | None:
    """``$LAW_FAST_REASONING_DIR``, else ``shared/data/reasoning`` beside the project checkout
    (or beside the working directory), else None."""
    env = os.environ.get("LAW_FAST_REASONING_DIR")
    if env:
        return Path(env)
    candidates = [
        Path(__file__).resolve().parents[3] / "shared" / "data" / "reasoning",
        Path.cwd().parent / "shared" / "data" / "reasoning",
    ]
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
        raise ReasoningDataError(
            f"{where}: field 'label' must be an index into 'endings' (0..{len(endings) - 1}), "
            f"got {record.get('label')!r}"
        )
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
        raise ReasoningDataError(
            f"{where}: answerKey {key!r} is not one of choices.label {labels} (or text and label differ in length)"
        )
    return {"question": question, "choices": texts, "gold": labels.index(key)}


def _gsm8k_doc(record: dict, where: str) -> dict:
    question = _field(record, "question", str, where)
    answer = _field(record, "answer", str, where)
    if "####" not in answer:
        raise ReasoningDataError(f"{where}: field 'answer' must end with '#### <number>', got {answer[-40:]!r}")
    return {"question": question, "answer": answer}


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
    greedy = [float(s.greedy) for s in scores]
    metrics = {"acc": mean(greedy), "acc_stderr": stderr(greedy), "perplexity": math.exp(-mean(lls)), "n": len(docs)}
    return TaskScores(
        metrics, [{"index": d["index"], "ll": s.logprob, "greedy": s.greedy} for d, s in zip(docs, scores)]
    )


def multiple_choice_requests(task: str, doc: dict) -> tuple[str, list[str]]:
    """(context, choices) of a hellaswag / arc_easy document (the harness's doc_to_text and
    doc_to_choice)."""
    if task == "hellaswag":
        return doc["query"], doc["choices"]
    if task == "arc_easy":
        return f"Question: {doc['question']}\nAnswer:", doc["choices"]
    raise ValueError(f"{task!r} is not a multiple-choice task")


def score_multiple_choice(
    model, tokenizer, task: str, docs: Sequence[dict], batch_size: int = 16, desc: str | None = None
) -> TaskScores:
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
        lls = [s.logprob for s in scores[start : start + count]]
        lengths = [float(len(c)) for c in multiple_choice_requests(task, doc)[1]]
        normed = [ll / n for ll, n in zip(lls, lengths)]
        pick = max(range(count), key=lambda k: (lls[k], -k))
        pick_norm = max(range(count), key=lambda k: (normed[k], -k))
        acc.append(float(pick == doc["gold"]))
        acc_norm.append(float(pick_norm == doc["gold"]))
        items.append({"index": doc["index"], "lls": lls, "gold": doc["gold"]})
    metrics = {
        "acc": mean(acc),
        "acc_stderr": stderr(acc),
        "acc_norm": mean(acc_norm),
        "acc_norm_stderr": stderr(acc_norm),
    }
    return TaskScores({**metrics, "n": len(docs)}, items)


#: The 8 chain-of-thought exemplars of Wei et al. (2022), as in the harness's ``gsm8k_cot`` task.
GSM8K_FEWSHOT: tuple[tuple[str, str], ...] = (
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
        "there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
        "been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
        "they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
        "Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
        "The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
        "The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday to "
        "thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
        "were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
        "balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
        "he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
        "left. 23 - 15 is 8. The answer is 8.",
    ),
)
GSM8K_UNTIL = ("Q:", "</s>", "<|im_end|>")


def gsm8k_prompt(question: str, num_fewshot: int = 8) -> str:
    """``"Q: <exemplar>\\nA: <chain of thought>"`` × num_fewshot, joined by blank lines, then
    ``"\\n\\nQ: <question>\\nA:"`` (the harness's gsm8k_cot prompt)."""
    if not 0 <= num_fewshot <= len(GSM8K_FEWSHOT):
        raise ValueError(f"num_fewshot must be between 0 and {len(GSM8K_FEWSHOT)}, got {num_fewshot}")
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in GSM8K_FEWSHOT[:num_fewshot])
    return f"{shots}Q: {question}\nA:"


def score_gsm8k(
    model,
    tokenizer,
    docs: Sequence[dict],
    num_fewshot: int = 8,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    desc: str | None = None,
) -> TaskScores:
    """gsm8k (harness ``gsm8k_cot``): greedy generation after the few-shot prompt, stopped at
    ``Q:``; ``exact_match`` = the last number of the generation equals the gold final number
    (flexible-extract), ``exact_match_strict`` = the number in "The answer is N." does."""
    prompts = [gsm8k_prompt(d["question"], num_fewshot) for d in docs]
    generations = generate_until(model, tokenizer, prompts, GSM8K_UNTIL, max_new_tokens, batch_size, desc)
    flexible = [gsm8k_exact_match(g, d["answer"], "flexible") for g, d in zip(generations, docs)]
    strict = [gsm8k_exact_match(g, d["answer"], "strict") for g, d in zip(generations, docs)]
    items = [{"index": d["index"], "generation": g} for d, g in zip(docs, generations)]
    return TaskScores({"exact_match": mean(flexible), "exact_match_strict": mean(strict), "n": len(docs)}, items)


# ----------------------------------------------------------------------------------------
# lm-evaluation-harness task configs (identical to the harness's own but for the data source)
# ----------------------------------------------------------------------------------------

_HARNESS_MC_METRICS = [
    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
]


def _lambada_harness(settings: TaskSettings) -> dict:  # lambada_openai.yaml
    return dict(
        output_type="loglikelihood",
        doc_to_text="{{text.split(' ')[:-1]|join(' ')}}",
        doc_to_target="{{' '+text.split(' ')[-1]}}",
        metric_list=[
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        ],
    )


def _hellaswag_harness(settings: TaskSettings) -> dict:  # hellaswag.yaml after its process_docs (query/choices/gold)
    return dict(
        output_type="multiple_choice",
        doc_to_text="{{query}}",
        doc_to_target="{{gold}}",
        doc_to_choice="choices",
        metric_list=_HARNESS_MC_METRICS,
    )


def _arc_harness(settings: TaskSettings) -> dict:  # arc_easy.yaml (question/choices/gold)
    return dict(
        output_type="multiple_choice",
        doc_to_text="Question: {{question}}\nAnswer:",
        doc_to_target="{{gold}}",
        doc_to_choice="{{choices}}",
        metric_list=_HARNESS_MC_METRICS,
    )


def _gsm8k_harness(settings: TaskSettings) -> dict:  # gsm8k-cot.yaml
    return dict(
        output_type="generate_until",
        doc_to_text="Q: {{question}}\nA:",
        doc_to_target="{{answer.split('####')[-1].strip() if answer is defined else target}}",
        fewshot_config={"sampler": "first_n", "samples": [{"question": q, "target": a} for q, a in GSM8K_FEWSHOT]},
        num_fewshot=settings.gsm8k_fewshot,
        target_delimiter=" ",
        fewshot_delimiter="\n\n",
        generation_kwargs={
            "until": list(GSM8K_UNTIL),
            "do_sample": False,
            "max_gen_toks": settings.gsm8k_max_new_tokens,
        },
        filter_list=[
            {
                "name": "strict-match",
                "filter": [
                    {"function": "regex", "regex_pattern": r"The answer is (\-?[0-9\.\,]+)."},
                    {"function": "take_first"},
                ],
            },
            {
                "name": "flexible-extract",
                "filter": [
                    {"function": "regex", "group_select": -1, "regex_pattern": r"(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                    {"function": "take_first"},
                ],
            },
        ],
        metric_list=[
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": False,
                "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
            }
        ],
    )


# ----------------------------------------------------------------------------------------
# The tasks: one row each
# ----------------------------------------------------------------------------------------

Scorer = Callable[[Any, Any, Sequence[dict], TaskSettings, "str | None"], TaskScores]


@dataclass(frozen=True)
class Task:
    """One reasoning task.

    filename: its file in the data folder; parse(record, where) → a normalised document;
    score(model, tokenizer, docs, settings, desc) → :class:`TaskScores`; harness(settings) → the
    lm-evaluation-harness task config (without its data source); harness_metrics: our metric
    name → the harness's result key, where the generic ``"<metric>,none"`` does not apply;
    aliases: other names that select it."""

    name: str
    filename: str
    parse: Callable[[dict, str], dict]
    score: Scorer
    harness: Callable[[TaskSettings], dict]
    harness_metrics: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "lambada_openai",
            "lambada_openai_test.jsonl",
            _lambada_doc,
            lambda model, tok, docs, s, desc: score_lambada(model, tok, docs, s.batch_size, desc),
            _lambada_harness,
            aliases=("lambada",),
        ),
        Task(
            "hellaswag",
            "hellaswag_val.jsonl",
            _hellaswag_doc,
            lambda model, tok, docs, s, desc: score_multiple_choice(model, tok, "hellaswag", docs, s.batch_size, desc),
            _hellaswag_harness,
        ),
        Task(
            "arc_easy",
            "ARC-Easy-test.jsonl",
            _arc_doc,
            lambda model, tok, docs, s, desc: score_multiple_choice(model, tok, "arc_easy", docs, s.batch_size, desc),
            _arc_harness,
            aliases=("arc-easy", "arc"),
        ),
        Task(
            "gsm8k",
            "gsm8k_test.jsonl",
            _gsm8k_doc,
            lambda model, tok, docs, s, desc: score_gsm8k(
                model, tok, docs, s.gsm8k_fewshot, s.gsm8k_max_new_tokens, max(1, s.batch_size // 2), desc
            ),
            _gsm8k_harness,
            harness_metrics={
                "exact_match": "exact_match,flexible-extract",
                "exact_match_strict": "exact_match,strict-match",
            },
            aliases=("gsm8k_cot",),
        ),
    )
}
_ALIASES = {alias: task.name for task in TASKS.values() for alias in task.aliases}


def resolve_task(name: str) -> str:
    """The canonical task name of ``name`` (an alias or a task name)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(
            f"unknown reasoning task {name!r}; known: {', '.join(TASKS)} "
            f"(aliases: {', '.join(f'{a}={t}' for a, t in _ALIASES.items())})"
        )
    return key


def _subset(count: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a fixed-seed random subset of ``limit`` items (all items when None/too big),
    in file order."""
    if limit is None or limit >= count:
        return list(range(count))
    if limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    return sorted(random.Random(seed).sample(range(count), limit))


def load_task(
    name: str,
    path: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """The documents of a task, normalised (see the module docstring), a fixed-seed subset of
    ``limit`` of them when given. ``path`` overrides ``data_dir / <default file>``."""
    task = TASKS[resolve_task(name)]
    if path is None:
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        if root is None:
            raise FileNotFoundError(
                f"no data folder for reasoning task {task.name!r}: pass a path, data_dir, or set "
                f"LAW_FAST_REASONING_DIR to a folder holding {task.filename}"
            )
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


def selected_docs(
    tasks: Sequence[str],
    limit: int | Mapping[str, int] | None,
    seed: int,
    paths: Mapping[str, str | os.PathLike] | None,
    data_dir: str | os.PathLike | None,
) -> dict[str, list[dict]]:
    """{task: its fixed-seed subset of documents} for the distinct tasks named in ``tasks`` — the
    documents both the built-in scorers and the harness adapter score."""
    paths = {resolve_task(k): v for k, v in (paths or {}).items()}
    return {
        name: load_task(name, paths.get(name), _task_limit(limit, name), seed, data_dir)
        for name in dict.fromkeys(resolve_task(t) for t in tasks)
    }


def _task_limit(limit: int | Mapping[str, int] | None, task: str) -> int | None:
    if isinstance(limit, Mapping):
        for key, value in limit.items():
            if key != "default" and resolve_task(key) == task:
                return value
        return limit.get("default")
    return limit


def run_reasoning(
    model,
    tokenizer,
    tasks: Sequence[str],
    limit: int | Mapping[str, int] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    paths: Mapping[str, str | os.PathLike] | None = None,
    data_dir: str | os.PathLike | None = None,
    gsm8k_fewshot: int = 8,
    gsm8k_max_new_tokens: int = 256,
    progress: bool = True,
    details: bool = False,
) -> dict[str, dict]:
    """Run the built-in scorers on ``tasks``; returns ``{task: metrics}`` (plus ``"items"``
    per task when ``details``). ``limit`` is an int for every task or ``{task: int}``
    (key ``"default"`` for the others); ``paths`` maps tasks to their files."""
    settings = TaskSettings(batch_size, gsm8k_fewshot, gsm8k_max_new_tokens)
    results: dict[str, dict] = {}
    for name, docs in selected_docs(tasks, limit, seed, paths, data_dir).items():
        scores = TASKS[name].score(model, tokenizer, docs, settings, name if progress else None)
        results[name] = dict(scores.metrics, **({"items": scores.items} if details else {}))
        log.info("%s: %s", name, scores.metrics)
    return results
