"""Knowledge metrics: did the washed facts go, did the controls stay (Acc, QA-F1, first-token
NLL on the fact prompts, their paraphrases and neighbourhood prompts)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from ..facts import answer_in
from ..hf.generate import greedy_continuations
from ..hf.tokens import check_fits
from .lm import loglikelihoods
from .metrics import mean, qa_f1

log = logging.getLogger(__name__)

KNOWLEDGE_GROUPS = ("rewrite", "paraphrase", "neighbourhood")


def _score_prompts(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    desc: str | None,
) -> list[dict]:
    """Per prompt: correct (Acc rule), f1, nll of the answer's first token, the continuation."""
    if not prompts:
        return []
    stripped = [p.strip() for p in prompts]
    check_fits(model, tokenizer, stripped, max_new_tokens, [repr(p[:40]) for p in stripped], "evaluation prompt")
    continuations = greedy_continuations(model, tokenizer, stripped, max_new_tokens, batch_size, desc)
    scores = loglikelihoods(
        model,
        tokenizer,
        [(p, " " + a.strip()) for p, a in zip(stripped, answers)],
        batch_size,
        None if desc is None else desc + " (answer NLL)",
    )
    return [
        {"correct": answer_in(a, c), "f1": qa_f1(c, a), "nll": -s.first_logprob, "continuation": c}
        for a, c, s in zip(answers, continuations, scores)
    ]


def _aggregate(rows: Sequence[dict]) -> dict:
    if not rows:
        return {"n": 0, "acc": None, "qa_f1": None, "f1_positive": None, "nll_first_token": None}
    return {
        "n": len(rows),
        "acc": mean(float(r["correct"]) for r in rows),
        "qa_f1": mean(r["f1"] for r in rows),
        "f1_positive": mean(float(r["f1"] > 0) for r in rows),
        "nll_first_token": mean(r["nll"] for r in rows),
    }


def evaluate_knowledge(
    model,
    tokenizer,
    facts: Sequence,
    case_ids: Iterable | None = None,
    known_only: bool = False,
    max_new_tokens: int = 10,
    batch_size: int = 32,
    progress: bool = True,
    name: str = "facts",
) -> dict:
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
        raise ValueError(
            "pass either case_ids (a fixed subset, e.g. from the original model's report) or known_only=True, not both"
        )
    by_id = {f.case_id: i for i, f in enumerate(facts)}
    if case_ids is not None:
        wanted = list(case_ids)
        missing = [c for c in wanted if c not in by_id]
        if missing:
            raise ValueError(
                f"{name}: {len(missing)} case id(s) of the subset are not among the {len(facts)} facts "
                f"given, e.g. {missing[:5]}; evaluate the same fact file as the earlier report"
            )
        wanted_set = set(wanted)
        chosen = [i for i, f in enumerate(facts) if f.case_id in wanted_set]
        selection = "subset"
    else:
        chosen = list(range(len(facts)))
        selection = "known_only" if known_only else "all"
    desc = f"{name}: prompts" if progress else None
    rewrite = _score_prompts(
        model,
        tokenizer,
        [facts[i].prompt for i in chosen],
        [facts[i].answer for i in chosen],
        max_new_tokens,
        batch_size,
        desc,
    )
    if known_only:
        keep = [k for k, row in enumerate(rewrite) if row["correct"]]
        chosen, rewrite = [chosen[k] for k in keep], [rewrite[k] for k in keep]
    paraphrases = [(p, facts[i].answer) for i in chosen for p in facts[i].paraphrases]
    neighbours = [(p, a) for i in chosen for p, a in facts[i].neighbourhood]
    groups = {"rewrite": rewrite}
    for group, pairs in (("paraphrase", paraphrases), ("neighbourhood", neighbours)):
        groups[group] = _score_prompts(
            model,
            tokenizer,
            [p for p, _ in pairs],
            [a for _, a in pairs],
            max_new_tokens,
            batch_size,
            f"{name}: {group}" if progress else None,
        )
    return {
        "n_facts": len(facts),
        "selection": selection,
        "case_ids": [facts[i].case_id for i in chosen],
        "known_case_ids": [facts[i].case_id for i, row in zip(chosen, rewrite) if row["correct"]],
        **{group: _aggregate(rows) for group, rows in groups.items()},
    }
