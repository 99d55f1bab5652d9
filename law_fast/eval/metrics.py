"""Pure metric functions (no model, no torch): the evaluation suite's scoring rules.

* :func:`normalize_answer`, :func:`qa_f1`, :func:`exact_match`: SQuAD / LongBench QA metrics,
  as the LaW reference's ``qa_f1_score`` (law-reference §7.1).
* :func:`answer_in`: the reference's Acc rule (re-exported from :mod:`law_fast.facts`).
* :func:`gsm8k_extract`, :func:`gsm8k_exact_match`: lm-evaluation-harness ``gsm8k_cot`` answer
  extraction ("strict-match" and "flexible-extract" filters) and its ``exact_match`` metric.
* :func:`ngram_entropy`: the ROME/MEMIT generation entropy (law-reference §7.4).

Everything here returns plain floats in [0, 1] (or bits, for entropy).
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

from ..facts import answer_in

log = logging.getLogger(__name__)

__all__ = [
    "answer_in",
    "exact_match",
    "gsm8k_exact_match",
    "gsm8k_extract",
    "gsm8k_normalize",
    "mean",
    "ngram_entropy",
    "normalize_answer",
    "qa_f1",
    "text_ngram_entropy",
]

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean; NaN for an empty sequence (a metric over nothing is undefined, not 0)."""
    values = list(values)
    return math.fsum(values) / len(values) if values else float("nan")


def stderr(values: Iterable[float]) -> float:
    """Standard error of the mean, sqrt(sample variance / n) (lm-evaluation-harness's ``*_stderr``);
    NaN for fewer than two values."""
    values = list(values)
    n = len(values)
    if n < 2:
        return float("nan")
    mu = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mu) ** 2 for v in values) / (n - 1) / n)


# ----------------------------------------------------------------------------------------
# SQuAD-style QA metrics
# ----------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop ``string.punctuation``, drop the words a/an/the,
    collapse whitespace.  ``"The  Eiffel-Tower!"`` → ``"eiffeltower"``."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def qa_f1(prediction: str, gold: str) -> float:
    """Token-multiset F1 of the normalised prediction against the normalised gold answer.

    ``common`` = multiset intersection of the whitespace tokens; 0 when it is empty (this
    includes an empty prediction or a gold answer that normalises to nothing, e.g. "The");
    otherwise P = |common|/|pred|, R = |common|/|gold|, F1 = 2PR/(P+R).  Repeated tokens
    count as often as they occur in both (``"paris paris"`` vs ``"paris"``: P = 1/2, R = 1).
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the SQuAD-normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


# ----------------------------------------------------------------------------------------
# GSM8K (lm-evaluation-harness gsm8k_cot)
# ----------------------------------------------------------------------------------------

GSM8K_INVALID = "[invalid]"
_GSM8K_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
_GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_GSM8K_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def gsm8k_extract(generation: str, mode: str = "flexible") -> str:
    """The answer the harness's filters read from a generation.

    ``mode="strict"``: the first ``The answer is N.`` (gsm8k_cot "strict-match");
    ``mode="flexible"``: the last number-like match of ``(-?[$0-9.,]{2,})|(-?[0-9]+)``
    ("flexible-extract").  ``"[invalid]"`` when nothing matches.
    """
    if mode == "strict":
        matches = _GSM8K_STRICT.findall(generation)
        return matches[0].strip() if matches else GSM8K_INVALID
    if mode == "flexible":
        matches = _GSM8K_FLEXIBLE.findall(generation)
        if not matches:
            return GSM8K_INVALID
        groups = [group for group in matches[-1] if group]
        return groups[0].strip() if groups else GSM8K_INVALID
    raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")


def gsm8k_normalize(text: str) -> str:
    """The harness's ``exact_match`` normalisation for gsm8k: remove ``,``, ``$``, anything up to
    ``#### `` and one trailing ``.``, then lower-case."""
    for pattern in _GSM8K_IGNORE:
        text = pattern.sub("", text)
    return text.lower()


def gsm8k_exact_match(generation: str, gold_answer: str, mode: str = "flexible") -> float:
    """1.0 when the number extracted from ``generation`` equals the gold final number.

    ``gold_answer`` is the dataset's full solution (``"... #### 18"``) or just the number.
    """
    gold = gold_answer.split("####")[-1].strip()
    return float(gsm8k_normalize(gsm8k_extract(generation, mode)) == gsm8k_normalize(gold))


# ----------------------------------------------------------------------------------------
# Generation n-gram entropy (ROME / MEMIT)
# ----------------------------------------------------------------------------------------

_WORDS = re.compile(r"\w+|[^\w\s]")


def _entropy_bits(counts: Counter) -> float:
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -math.fsum(c / total * math.log2(c / total) for c in counts.values())


def text_ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's ``compute_n_gram_entropy`` of one text: mean over n of weight_n · H_n, with H_n
    the base-2 entropy of the text's n-gram frequencies.  Words are ``\\w+`` runs and single
    punctuation marks (ROME uses nltk's word_tokenize; the two agree on plain prose)."""
    if len(ns) != len(weights):
        raise ValueError(f"ns and weights differ in length: {len(ns)} vs {len(weights)}")
    words = _WORDS.findall(text)
    values = []
    for n, weight in zip(ns, weights):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        values.append(weight * _entropy_bits(grams))
    return mean(values)


def ngram_entropy(texts: Iterable[str]) -> float:
    """Mean :func:`text_ngram_entropy` over texts (ROME's ``n_gram_entropy(agg="arith")``).
    Low values mean repetitive generations."""
    return mean(text_ngram_entropy(t) for t in texts)
