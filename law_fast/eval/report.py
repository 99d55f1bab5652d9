"""The evaluation suite: did the facts go, did everything else stay (docs/evaluation.md).

    report = lf.evaluate(model, tok, facts=facts, corpus="wiki.test.raw",
                         reasoning=["lambada", "hellaswag", "arc_easy"], limit=200, known_only=True)
    report.to_json("before.json")
    ... wash ...
    after = lf.evaluate(model, tok, facts=facts, corpus="wiki.test.raw", reasoning=[...], limit=200,
                        subset=report)          # the same facts as before, known or not now

Blocks of an :class:`EvalReport` (all rates are fractions in [0, 1]):

* ``knowledge[set]`` for ``set`` in ``"facts"`` (the facts washed: forgetting) and
  ``"controls"`` (facts not washed: retention), each with groups ``rewrite`` (the fact's
  prompt), ``paraphrase`` and ``neighbourhood``: ``acc`` (answer substring of the 10-token
  greedy continuation, lower-cased: the reference's rule), ``qa_f1`` (SQuAD token F1 of that
  continuation), ``f1_positive`` (share with F1 > 0), ``nll_first_token`` (mean −log p of the
  answer's first token after the prompt), ``n`` (prompts).
* ``fluency``: ``perplexity`` of a corpus by a sliding window (:func:`perplexity`), and
  ``ngram_entropy`` of sampled generations when asked for.
* ``reasoning[task]``: lm-evaluation-harness metrics (:mod:`law_fast.eval.tasks`).

What shapes the numbers besides the inputs is an :class:`EvalConfig`; ``evaluate`` takes one
(``config=``) or its fields as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..corpus import resolve
from ..facts import Fact, load_facts
from ..hf.adapters import model_name
from ..hf.generate import sample_continuations
from ..info import versions
from .harness import run_lm_eval
from .knowledge import KNOWLEDGE_GROUPS, evaluate_knowledge
from .lm import perplexity
from .metrics import ngram_entropy
from .tasks import resolve_task, run_reasoning

__all__ = ["DEFAULT_ENTROPY_PROMPTS", "EvalConfig", "EvalReport", "evaluate"]

log = logging.getLogger(__name__)

#: Neutral prompts whose sampled continuations give the n-gram entropy (``entropy=True``).
DEFAULT_ENTROPY_PROMPTS = (
    "The weather today is",
    "My favourite book is about",
    "In the morning, I usually",
    "The history of the city",
    "Scientists have discovered that",
    "The best way to learn a language is",
    "Yesterday my friend told me",
    "The main reason people travel is",
    "In the middle of the forest there",
    "The new restaurant downtown",
)
# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalReport:
    """The result of :func:`evaluate`; ``to_json``/``from_json`` round-trip it exactly.

    model:     the model's name (``config._name_or_path``) or a user label.
    label:     a short name for tables and plots (default: the model's directory name).
    knowledge: ``{"facts": block, "controls": block}`` (see :func:`evaluate_knowledge`).
    fluency:   ``{"perplexity", "nll", "tokens", "window", "stride", "corpus"[, "ngram_entropy"]}``.
    reasoning: ``{task: {metric: value, "n": items}}``.
    settings:  the arguments that shape the numbers (limits, seed, window, ...).
    versions:  law_fast, python, torch, transformers, lm_eval.
    timings_s: seconds per block.
    created:   UTC time stamp (ISO 8601).
    """

    model: str
    label: str = ""
    knowledge: dict = field(default_factory=dict)
    fluency: dict = field(default_factory=dict)
    reasoning: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalReport:
        if not isinstance(data, Mapping) or "model" not in data:
            raise ValueError(f"not an EvalReport: expected an object with a 'model' field, got {str(data)[:80]!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EvalReport field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> EvalReport:
        """Read a report from a JSON file path or from JSON text."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"report file not found: {path}")
            text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source if len(str(source)) < 200 else 'report'}: invalid JSON: {err}") from None
        return cls.from_dict(data)

    @property
    def name(self) -> str:
        return self.label or Path(self.model).name or self.model

    def flat(self) -> dict[str, float]:
        """Every metric as ``{"facts.rewrite.acc": 0.93, "fluency.perplexity": 21.3,
        "reasoning.hellaswag.acc_norm": 0.41, ...}`` (counts and missing values left out)."""
        out: dict[str, float] = {}
        for name, block in self.knowledge.items():
            for group in KNOWLEDGE_GROUPS:
                for metric, value in (block.get(group) or {}).items():
                    if metric != "n" and isinstance(value, (int, float)):
                        out[f"{name}.{group}.{metric}"] = float(value)
        for metric in ("perplexity", "ngram_entropy"):
            if isinstance(self.fluency.get(metric), (int, float)):
                out[f"fluency.{metric}"] = float(self.fluency[metric])
        for task, metrics in self.reasoning.items():
            for metric, value in metrics.items():
                if metric != "n" and isinstance(value, (int, float)):
                    out[f"reasoning.{task}.{metric}"] = float(value)
        return out


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN → None, tuples → lists, numpy scalars → floats."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float) or hasattr(value, "__float__"):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    return value


# ----------------------------------------------------------------------------------------
# evaluate()
# ----------------------------------------------------------------------------------------


def _as_facts(value, what: str):
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return load_facts(value)
    facts = list(value)
    for i, fact in enumerate(facts):
        if not isinstance(fact, Fact):
            raise TypeError(f"{what}[{i}] must be a law_fast Fact, got {type(fact).__name__}")
    return facts


def _subset_ids(subset, name: str):
    """Case ids for knowledge set ``name`` from an EvalReport, a {set: ids} mapping or ids."""
    if subset is None:
        return None
    if isinstance(subset, EvalReport):
        block = subset.knowledge.get(name)
        return None if block is None else block["case_ids"]
    if isinstance(subset, Mapping):
        return subset.get(name)
    if isinstance(subset, (str, bytes)):
        raise TypeError("subset must be an EvalReport, a {'facts': ids, 'controls': ids} mapping or a list of case ids")
    return list(subset) if name == "facts" else None


@dataclass(frozen=True)
class EvalConfig:
    """What shapes the numbers of :func:`evaluate` besides its inputs.

    limit:           items per reasoning task, a ``seed``-fixed subset (an int, or ``{task: int}``
                     with ``"default"`` for the others; None: all).
    seed:            the subsets and the entropy samples.
    batch_size:      prompts (or scored continuations) per forward pass; perplexity runs
                     ``max(1, batch_size // 4)`` windows at a time, gsm8k ``batch_size // 2`` prompts.
    max_new_tokens:  length of the greedy continuations of the knowledge prompts (10, as the reference).
    ppl_window, ppl_stride, ppl_max_tokens: the sliding window (:func:`~law_fast.eval.lm.perplexity`).
    entropy:         True (the default prompts) or prompts: n-gram entropy of top-5 sampled
                     continuations of ``entropy_tokens`` tokens.
    reasoning_paths, data_dir: where the reasoning files are (``{task: path}``; a folder).
    gsm8k_fewshot, gsm8k_max_new_tokens: the gsm8k prompt and generation length.
    use_lm_eval:     score the reasoning tasks with lm-evaluation-harness instead of the built-in scorers.
    progress:        progress bars.  label: the model's name in tables and plots.
    """

    limit: int | Mapping[str, int] | None = None
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int = 10
    ppl_window: int | None = None
    ppl_stride: int | None = None
    ppl_max_tokens: int | None = None
    entropy: bool | Sequence[str] = False
    entropy_tokens: int = 64
    reasoning_paths: Mapping[str, str] | None = None
    data_dir: str | os.PathLike | None = None
    gsm8k_fewshot: int = 8
    gsm8k_max_new_tokens: int = 256
    use_lm_eval: bool = False
    progress: bool = True
    label: str = ""

    def replace(self, **changes) -> EvalConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(
                f"unknown evaluate() setting(s) {unknown}; known: {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)


def evaluate(
    model,
    tokenizer,
    facts=None,
    corpus=None,
    reasoning: Sequence[str] = (),
    *,
    controls=None,
    known_only: bool = False,
    subset=None,
    config: EvalConfig | None = None,
    **settings,
) -> EvalReport:
    """Evaluate a model: knowledge of ``facts`` / ``controls``, fluency on ``corpus``, reasoning.

    facts, controls: Facts (or a fact file path) that were washed / that must stay.
    corpus:          a path, a :class:`~law_fast.corpus.Corpus` or a list of texts for the
                     sliding-window perplexity.
    reasoning:       task names (``lambada``, ``hellaswag``, ``arc_easy``, ``gsm8k``).
    known_only:      evaluate only the facts (and controls) this model knows now; use it on
                     the original model.
    subset:          an earlier :class:`EvalReport` (or ``{"facts": ids, "controls": ids}``, or
                     a list of fact case ids): evaluate exactly the facts evaluated there, so
                     that before and after compare the same facts.
    config / settings: an :class:`EvalConfig`, and/or its fields as keywords (``limit=200``).
    """
    cfg = (config or EvalConfig()).replace(**settings)
    if known_only and subset is not None:
        raise ValueError(
            "pass either known_only=True (on the original model) or subset=<its report> (on the washed one), not both"
        )
    start = time.perf_counter()
    timings: dict[str, float] = {}
    knowledge: dict[str, dict] = {}
    for name, value in (("facts", facts), ("controls", controls)):
        fact_list = _as_facts(value, name)
        if fact_list is None:
            continue
        t = time.perf_counter()
        ids = _subset_ids(subset, name)
        knowledge[name] = evaluate_knowledge(
            model,
            tokenizer,
            fact_list,
            case_ids=ids,
            known_only=known_only,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            name=name,
        )
        timings[name] = time.perf_counter() - t
    fluency: dict[str, Any] = {}
    if corpus is not None:
        t = time.perf_counter()
        corp = resolve(corpus)
        fluency = perplexity(
            model,
            tokenizer,
            corp.texts,
            cfg.ppl_window,
            cfg.ppl_stride,
            cfg.ppl_max_tokens,
            max(1, cfg.batch_size // 4),
            cfg.progress,
        )
        fluency["corpus"] = corp.identity
        timings["perplexity"] = time.perf_counter() - t
    if cfg.entropy:
        t = time.perf_counter()
        prompts = list(DEFAULT_ENTROPY_PROMPTS if cfg.entropy is True else cfg.entropy)
        texts = sample_continuations(
            model, tokenizer, prompts, cfg.entropy_tokens, top_k=5, seed=cfg.seed, batch_size=cfg.batch_size
        )
        fluency["ngram_entropy"] = ngram_entropy(texts)
        fluency["entropy_prompts"] = len(prompts)
        timings["ngram_entropy"] = time.perf_counter() - t
    results: dict[str, dict] = {}
    runner = run_lm_eval if cfg.use_lm_eval else run_reasoning
    extra = {} if cfg.use_lm_eval else {"progress": cfg.progress}
    for task in dict.fromkeys(resolve_task(name) for name in reasoning):
        t = time.perf_counter()
        results.update(
            runner(
                model,
                tokenizer,
                [task],
                limit=cfg.limit,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                paths=cfg.reasoning_paths,
                data_dir=cfg.data_dir,
                gsm8k_fewshot=cfg.gsm8k_fewshot,
                gsm8k_max_new_tokens=cfg.gsm8k_max_new_tokens,
                **extra,
            )
        )
        timings[task] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    log.info(
        "evaluated %s in %.1f s (%s)",
        model_name(model),
        timings["total"],
        ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "total"),
    )
    limit = cfg.limit
    settings_out = {
        "limit": dict(limit) if isinstance(limit, Mapping) else limit,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.max_new_tokens,
        "known_only": known_only,
        "subset": subset is not None,
        "ppl_max_tokens": cfg.ppl_max_tokens,
        "entropy_tokens": cfg.entropy_tokens if cfg.entropy else None,
        "gsm8k_fewshot": cfg.gsm8k_fewshot if "gsm8k" in results else None,
        "gsm8k_max_new_tokens": cfg.gsm8k_max_new_tokens if "gsm8k" in results else None,
        "reasoning_backend": ("lm_eval" if cfg.use_lm_eval else "law_fast") if reasoning else None,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    name = model_name(model)
    return EvalReport(
        model=name,
        label=cfg.label or Path(name).name,
        knowledge=_clean(knowledge),
        fluency=_clean(fluency),
        reasoning=_clean(results),
        settings=_clean(settings_out),
        versions=versions(),
        timings_s={k: round(v, 3) for k, v in timings.items()},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
