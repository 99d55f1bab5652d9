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
* ``reasoning[task]``: lm-evaluation-harness metrics (:mod:`law_fast.reasoning`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .metrics import answer_in, mean, ngram_entropy, qa_f1
from .models import model_device, model_name
from .reasoning import (_supports_logits_to_keep, loglikelihoods, max_length, resolve_task, run_lm_eval,
                        run_reasoning)

__all__ = [
    "DEFAULT_ENTROPY_PROMPTS",
    "EvalReport",
    "evaluate",
    "evaluate_knowledge",
    "markdown_table",
    "perplexity",
    "plot_comparison",
    "text_table",
]

log = logging.getLogger(__name__)

#: Neutral prompts whose sampled continuations give the n-gram entropy (``entropy=True``).
DEFAULT_ENTROPY_PROMPTS = (
    "The weather today is", "My favourite book is about", "In the morning, I usually", "The history of the city",
    "Scientists have discovered that", "The best way to learn a language is", "Yesterday my friend told me",
    "The main reason people travel is", "In the middle of the forest there", "The new restaurant downtown",
)
KNOWLEDGE_GROUPS = ("rewrite", "paraphrase", "neighbourhood")


# ----------------------------------------------------------------------------------------
# Knowledge
# ----------------------------------------------------------------------------------------


def _score_prompts(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], max_new_tokens: int,
                   batch_size: int, desc: str | None) -> list[dict]:
    """Per prompt: correct (Acc rule), f1, nll of the answer's first token, the continuation."""
    from .generation import greedy_continuations

    if not prompts:
        return []
    stripped = [p.strip() for p in prompts]
    continuations = greedy_continuations(model, tokenizer, stripped, max_new_tokens, batch_size, desc)
    scores = loglikelihoods(model, tokenizer, [(p, " " + a.strip()) for p, a in zip(stripped, answers)], batch_size,
                            None if desc is None else desc + " (answer NLL)")
    return [{"correct": answer_in(a, c), "f1": qa_f1(c, a), "nll": -s.first_logprob, "continuation": c}
            for a, c, s in zip(answers, continuations, scores)]


def _aggregate(rows: Sequence[dict]) -> dict:
    if not rows:
        return {"n": 0, "acc": None, "qa_f1": None, "f1_positive": None, "nll_first_token": None}
    return {"n": len(rows), "acc": mean(float(r["correct"]) for r in rows), "qa_f1": mean(r["f1"] for r in rows),
            "f1_positive": mean(float(r["f1"] > 0) for r in rows), "nll_first_token": mean(r["nll"] for r in rows)}


def evaluate_knowledge(model, tokenizer, facts: Sequence, case_ids: Iterable | None = None, known_only: bool = False,
                       max_new_tokens: int = 10, batch_size: int = 32, progress: bool = True,
                       name: str = "facts") -> dict:
    """Knowledge metrics of ``facts`` (a sequence of :class:`~law_fast.facts.Fact`).

    Which facts are evaluated:
      * ``case_ids`` given: exactly those (e.g. the ones the original model knew, taken from
        an earlier report), in the order of ``facts``; an id not among the facts is an error;
      * else ``known_only=True``: the facts this model knows now (Acc rule on the prompt);
      * else all of them.
    The paraphrase and neighbourhood groups use the evaluated facts' prompts. Returns
    ``{"n_facts", "selection", "case_ids", "known_case_ids", "rewrite", "paraphrase",
    "neighbourhood"}``; ``known_case_ids`` are the evaluated facts this model knows.
    """
    facts = list(facts)
    if case_ids is not None and known_only:
        raise ValueError("pass either case_ids (a fixed subset, e.g. from the original model's report) or "
                         "known_only=True, not both")
    by_id = {f.case_id: i for i, f in enumerate(facts)}
    if case_ids is not None:
        wanted = list(case_ids)
        missing = [c for c in wanted if c not in by_id]
        if missing:
            raise ValueError(f"{name}: {len(missing)} case id(s) of the subset are not among the {len(facts)} facts "
                             f"given, e.g. {missing[:5]}; evaluate the same fact file as the earlier report")
        wanted_set = set(wanted)
        chosen = [i for i, f in enumerate(facts) if f.case_id in wanted_set]
        selection = "subset"
    else:
        chosen = list(range(len(facts)))
        selection = "known_only" if known_only else "all"
    desc = f"{name}: prompts" if progress else None
    rewrite = _score_prompts(model, tokenizer, [facts[i].prompt for i in chosen], [facts[i].answer for i in chosen],
                             max_new_tokens, batch_size, desc)
    if known_only:
        keep = [k for k, row in enumerate(rewrite) if row["correct"]]
        chosen, rewrite = [chosen[k] for k in keep], [rewrite[k] for k in keep]
    paraphrases = [(p, facts[i].answer) for i in chosen for p in facts[i].paraphrases]
    neighbours = [(p, a) for i in chosen for p, a in facts[i].neighbourhood]
    groups = {"rewrite": rewrite}
    for group, pairs in (("paraphrase", paraphrases), ("neighbourhood", neighbours)):
        groups[group] = _score_prompts(model, tokenizer, [p for p, _ in pairs], [a for _, a in pairs], max_new_tokens,
                                       batch_size, f"{name}: {group}" if progress else None)
    return {"n_facts": len(facts), "selection": selection, "case_ids": [facts[i].case_id for i in chosen],
            "known_case_ids": [facts[i].case_id for i, row in zip(chosen, rewrite) if row["correct"]],
            **{group: _aggregate(rows) for group, rows in groups.items()}}


# ----------------------------------------------------------------------------------------
# Fluency
# ----------------------------------------------------------------------------------------


def _windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window: the window is ids[begin:end] and its last ``scored``
    tokens are scored. Every token but the first is scored exactly once; a token scored in a
    later window has at least ``window - stride`` tokens of context."""
    out, prev_end = [], 1  # token 0 has no context and is never scored
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        if end > prev_end:
            out.append((begin, end, end - prev_end))
            prev_end = end
        if end == n_tokens:
            break
    return out


def perplexity(model, tokenizer, texts: Sequence[str] | str, window: int | None = None, stride: int | None = None,
               max_tokens: int | None = None, batch_size: int = 4, progress: bool = True) -> dict:
    """Token-level perplexity of a text stream by a sliding window.

    The texts are joined with ``"\\n\\n"`` (WikiText convention) and tokenised once (the
    tokenizer's default special tokens), truncated to ``max_tokens``. Windows of ``window``
    tokens (default: min(1024, the model's context)) start every ``stride`` tokens (default
    ``window // 2``; ``stride < window``); each window scores only the tokens no earlier window
    scored, so every token after the first is scored exactly once, token t with the context
    ``ids[k·stride : t]`` where k = max(0, ⌊(t − window)/stride⌋ + 1), i.e. at least
    ``window − stride`` tokens once past the first window. PPL = exp(Σ NLL / (N − 1)) for N
    tokens.

    Returns ``{"perplexity", "nll" (mean per token, nats), "tokens" (scored), "window", "stride"}``.
    """
    text = texts if isinstance(texts, str) else "\n\n".join(texts)
    ids = list(tokenizer(text)["input_ids"])
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"perplexity needs at least 2 tokens of text, got {len(ids)}")
    window = window or min(1024, max_length(model, tokenizer))
    stride = stride or max(1, window // 2)
    if window < 2 or not 1 <= stride < window:  # a window's first token has no context: it cannot be scored
        raise ValueError(f"need window >= 2 and 1 <= stride < window, got window={window}, stride={stride}")
    if window > max_length(model, tokenizer):
        raise ValueError(f"window={window} exceeds the model's context length {max_length(model, tokenizer)}")
    spans = _windows(len(ids), window, stride)
    device = model_device(model)
    total, count = torch.zeros((), dtype=torch.float64), 0
    batches = range(0, len(spans), batch_size)
    with torch.no_grad():
        for start in tqdm(batches, desc="perplexity", disable=not progress or len(batches) < 2, leave=False):
            chunk = spans[start:start + batch_size]
            for length in sorted({end - begin for begin, end, _ in chunk}, reverse=True):  # equal lengths: no padding
                rows = [s for s in chunk if s[1] - s[0] == length]
                input_ids = torch.tensor([ids[b:e] for b, e, _ in rows], device=device)
                keep = max(n for _, _, n in rows) + 1
                kwargs = {"logits_to_keep": keep} if _supports_logits_to_keep(model) else {}
                logits = model(input_ids=input_ids, use_cache=False, **kwargs).logits[:, -keep:]
                logprobs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
                for r, (_, _, n) in enumerate(rows):
                    target = input_ids[r, -n:]
                    lp = logprobs[r, keep - 1 - n:keep - 1].gather(-1, target[:, None])
                    total -= lp.double().sum().cpu()
                    count += n
    nll = float(total) / count
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": count, "window": window, "stride": stride}


# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------


def _versions() -> dict:
    from importlib import metadata

    import law_fast

    out = {"law_fast": law_fast.__version__, "python": platform.python_version(), "torch": torch.__version__}
    for package in ("transformers", "lm_eval"):
        try:
            out[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


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
    def from_dict(cls, data: Mapping[str, Any]) -> "EvalReport":
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
    def from_json(cls, source: str | os.PathLike) -> "EvalReport":
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
        from .facts import load_facts

        return load_facts(value)
    facts = list(value)
    from .facts import Fact

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


def evaluate(model, tokenizer, facts=None, corpus=None, reasoning: Sequence[str] = (),
             limit: int | Mapping[str, int] | None = None, seed: int = 0, batch_size: int = 16,
             progress: bool = True, *, controls=None, known_only: bool = False, subset=None,
             max_new_tokens: int = 10, ppl_window: int | None = None, ppl_stride: int | None = None,
             ppl_max_tokens: int | None = None, entropy: bool | Sequence[str] = False, entropy_tokens: int = 64,
             reasoning_paths: Mapping[str, str] | None = None, data_dir: str | os.PathLike | None = None,
             gsm8k_fewshot: int = 8, gsm8k_max_new_tokens: int = 256, use_lm_eval: bool = False,
             label: str = "") -> EvalReport:
    """Evaluate a model: knowledge of ``facts`` / ``controls``, fluency on ``corpus``, reasoning.

    facts, controls: Facts (or a fact file path) that were washed / that must stay.
    known_only:      evaluate only the facts (and controls) this model knows now; use it on
                     the original model.
    subset:          an earlier :class:`EvalReport` (or ``{"facts": ids, "controls": ids}``, or
                     a list of fact case ids): evaluate exactly the facts evaluated there, so
                     that before and after compare the same facts.
    corpus:          a path, a :class:`~law_fast.corpus.Corpus` or a list of texts for the
                     sliding-window perplexity (``ppl_window``, ``ppl_stride``,
                     ``ppl_max_tokens``: see :func:`perplexity`).
    entropy:         True (the default prompts) or prompts: n-gram entropy of top-5 sampled
                     continuations of ``entropy_tokens`` tokens (seeded with ``seed``).
    reasoning:       task names (``lambada``, ``hellaswag``, ``arc_easy``, ``gsm8k``), scored on a
                     ``seed``-fixed subset of ``limit`` items (an int, or ``{task: int}``), from
                     ``reasoning_paths`` / ``data_dir`` / the shared data folder;
                     ``use_lm_eval=True`` runs them through lm-evaluation-harness instead.
    batch_size:      prompts (or scored continuations) per forward pass; perplexity runs
                     ``max(1, batch_size // 4)`` windows at a time, gsm8k ``batch_size // 2`` prompts.
    max_new_tokens:  length of the greedy continuations of the knowledge prompts (10, as the reference).
    """
    if known_only and subset is not None:
        raise ValueError("pass either known_only=True (on the original model) or subset=<its report> (on the washed "
                         "one), not both")
    start = time.perf_counter()
    timings: dict[str, float] = {}
    knowledge: dict[str, dict] = {}
    for name, value in (("facts", facts), ("controls", controls)):
        fact_list = _as_facts(value, name)
        if fact_list is None:
            continue
        t = time.perf_counter()
        ids = _subset_ids(subset, name)
        knowledge[name] = evaluate_knowledge(model, tokenizer, fact_list, case_ids=ids,
                                             known_only=known_only, max_new_tokens=max_new_tokens,
                                             batch_size=batch_size, progress=progress, name=name)
        timings[name] = time.perf_counter() - t
    fluency: dict[str, Any] = {}
    if corpus is not None:
        from .corpus import Corpus, load_corpus

        t = time.perf_counter()
        corp = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
        fluency = perplexity(model, tokenizer, corp.texts, ppl_window, ppl_stride, ppl_max_tokens,
                             max(1, batch_size // 4), progress)
        fluency["corpus"] = corp.identity
        timings["perplexity"] = time.perf_counter() - t
    if entropy:
        from .generation import sample_continuations

        t = time.perf_counter()
        prompts = list(DEFAULT_ENTROPY_PROMPTS if entropy is True else entropy)
        texts = sample_continuations(model, tokenizer, prompts, entropy_tokens, top_k=5, seed=seed,
                                     batch_size=batch_size)
        fluency["ngram_entropy"] = ngram_entropy(texts)
        fluency["entropy_prompts"] = len(prompts)
        timings["ngram_entropy"] = time.perf_counter() - t
    results: dict[str, dict] = {}
    runner = run_lm_eval if use_lm_eval else run_reasoning
    extra = {} if use_lm_eval else {"progress": progress}
    for task in dict.fromkeys(resolve_task(name) for name in reasoning):
        t = time.perf_counter()
        results.update(runner(model, tokenizer, [task], limit=limit, seed=seed, batch_size=batch_size,
                              paths=reasoning_paths, data_dir=data_dir, gsm8k_fewshot=gsm8k_fewshot,
                              gsm8k_max_new_tokens=gsm8k_max_new_tokens, **extra))
        timings[task] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    log.info("evaluated %s in %.1f s (%s)", model_name(model), timings["total"],
             ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "total"))
    settings = {"limit": dict(limit) if isinstance(limit, Mapping) else limit, "seed": seed, "batch_size": batch_size,
                "max_new_tokens": max_new_tokens, "known_only": known_only, "subset": subset is not None,
                "ppl_max_tokens": ppl_max_tokens, "entropy_tokens": entropy_tokens if entropy else None,
                "gsm8k_fewshot": gsm8k_fewshot if "gsm8k" in results else None,
                "gsm8k_max_new_tokens": gsm8k_max_new_tokens if "gsm8k" in results else None,
                "reasoning_backend": ("lm_eval" if use_lm_eval else "law_fast") if reasoning else None,
                "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    name = model_name(model)
    return EvalReport(model=name, label=label or Path(name).name, knowledge=_clean(knowledge), fluency=_clean(fluency),
                      reasoning=_clean(results), settings=_clean(settings), versions=_versions(),
                      timings_s={k: round(v, 3) for k, v in timings.items()},
                      created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


# ----------------------------------------------------------------------------------------
# Comparing reports
# ----------------------------------------------------------------------------------------

#: (section, title, metric keys in :meth:`EvalReport.flat` order, "lower is the goal")
_SECTIONS = (
    ("forgetting", "Forgetting (washed facts: lower is better)", ("facts.",)),
    ("retention", "Retention (controls, neighbourhood, fluency)", ("controls.", "fluency.")),
    ("reasoning", "Reasoning", ("reasoning.",)),
)
_RATE_METRICS = ("acc", "acc_norm", "qa_f1", "f1_positive", "exact_match", "exact_match_strict")


def _section(key: str) -> str:
    if key.startswith("facts.neighbourhood."):
        return "retention"  # neighbourhood prompts of washed facts must keep working
    for section, _, prefixes in _SECTIONS:
        if key.startswith(prefixes):
            return section
    return "other"


def _format(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    if key.rsplit(".", 1)[-1] in _RATE_METRICS:
        return f"{100 * value:.1f}%"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _rows(reports: Sequence[EvalReport]) -> list[tuple[str, str, list[float | None]]]:
    """(section, metric key, value per report) for every metric any report has, by section."""
    flats = [r.flat() for r in reports]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    order = {s: i for i, (s, _, _) in enumerate(_SECTIONS)}
    keys.sort(key=lambda k: order.get(_section(k), len(order)))
    return [(_section(k), k, [f.get(k) for f in flats]) for k in keys]


def _names(reports: Sequence[EvalReport], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(reports):
            raise ValueError(f"{len(labels)} labels for {len(reports)} reports")
        return list(labels)
    return [r.name for r in reports]


def text_table(reports: Sequence[EvalReport], labels: Sequence[str] | None = None) -> str:
    """A side-by-side plain-text table of the reports' metrics (rates in %)."""
    names = _names(reports, labels)
    rows = _rows(reports)
    width = max([len(k) for _, k, _ in rows] + [6])
    cols = [max(len(n), 8) for n in names]
    lines = [" " * width + "".join(f"  {n:>{c}}" for n, c in zip(names, cols))]
    current = None
    for section, key, values in rows:
        if section != current:
            lines.append(f"[{section}]")
            current = section
        lines.append(f"{key:<{width}}" + "".join(f"  {_format(key, v):>{c}}" for v, c in zip(values, cols)))
    return "\n".join(lines)


def markdown_table(reports: Sequence[EvalReport], labels: Sequence[str] | None = None) -> str:
    """The same table in Markdown, with the settings that shape the numbers underneath."""
    names = _names(reports, labels)
    out = ["| section | metric | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for section, key, values in _rows(reports):
        out.append(f"| {section} | `{key}` | " + " | ".join(_format(key, v) for v in values) + " |")
    out.append("")
    for name, report in zip(names, reports):
        s = report.settings
        out.append(f"- **{name}**: model `{report.model}`, limit {s.get('limit')}, seed {s.get('seed')}, "
                   f"reasoning by {s.get('reasoning_backend')}, {report.created}")
    return "\n".join(out) + "\n"


def plot_comparison(reports: Sequence[EvalReport], path: str | os.PathLike, labels: Sequence[str] | None = None) -> Path:
    """A PNG bar chart: forgetting (washed facts' Acc / QA-F1), retention (controls,
    neighbourhood), reasoning (task accuracies), fluency (perplexity), one colour per report.
    Needs matplotlib (``pip install law-fast[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ModuleNotFoundError("plotting needs matplotlib: pip install 'law-fast[plot]' (or matplotlib)") from err
    names = _names(reports, labels)
    rows = _rows(reports)
    panels = []
    plotted = ("acc", "acc_norm", "qa_f1", "exact_match")  # f1_positive and the strict gsm8k rate: tables only
    for section, title, _ in _SECTIONS:
        keys = [(k, v) for s, k, v in rows if s == section and k.rsplit(".", 1)[-1] in plotted]
        if keys:
            panels.append((title, keys, True))
    ppl = [(k, v) for _, k, v in rows if k == "fluency.perplexity"]
    if ppl:
        panels.append(("Perplexity (lower is better)", ppl, False))
    if not panels:
        raise ValueError("the reports hold no metric to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 4.2 * len(panels)), 4.6), squeeze=False,
                             gridspec_kw={"width_ratios": [max(2, len(k)) for _, k, _ in panels]})
    bar = 0.8 / len(reports)
    for ax, (title, keys, rate) in zip(axes[0], panels):
        for j, name in enumerate(names):
            values = [(v[j] if v[j] is not None else float("nan")) * (100 if rate else 1) for _, v in keys]
            ax.bar([i + (j - (len(names) - 1) / 2) * bar for i in range(len(keys))], values, bar, label=name)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([k.removeprefix("facts.").removeprefix("reasoning.") if k.startswith(("facts.", "reasoning."))
                            and not k.startswith("facts.neighbourhood") else k for k, _ in keys],
                           rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("%" if rate else "perplexity")
        if rate:
            ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    handles, names_shown = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names_shown, loc="upper center", ncol=min(len(names), 6), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
