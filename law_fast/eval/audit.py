"""Is the knowledge really gone?  Probes beyond the greedy answer, per fact (docs/audit.md).

    report = lf.audit(washed, tok, facts, original=orig_model, demos=controls)
    report.to_json("audit.json"); print(report.summary())

Each probe looks for a fact's object (its answer) in a different way; a fact is **found** by a probe
when the answer shows up there.  Per probe the report gives the share of facts found and its
**chance level**: the share found when each fact's answer is looked for in the output of *another*
fact's probe (its partner: the next fact in the list with a different answer) — what the probe finds
for an answer the model has no reason to give there (a model that says "Paris" after every capital
prompt scores high on both).  A fact's **receipt** lists the probes that still find it.

* ``phrasings``  greedy continuations of the prompt, the data's paraphrases, a question form, the
                 chat template (instruction models), the prompt inside a longer sentence
* ``ranking``    the answer's log-likelihood per token after the prompt against ``distractors`` objects
                 of other facts (same prompt template first): found when it is strictly the highest;
                 chance 1/(1+n)
* ``sampling``   ``samples`` continuations sampled at temperature 1 (top-``sample_top_k``, seeded)
* ``context``    few-shot demonstrations of the same relation (``demos``: facts not washed) before the
                 prompt, and an "answer truthfully" prefix
* ``lens``       logit lens: the rank of the answer's first token at the prompt's last position when each
                 layer's hidden state is decoded by the final norm and the output head; found when it
                 is within the top ``lens_top`` at some layer (the report keeps the rank per layer)
* ``relearn``    a copy fine-tuned ``relearn_steps`` Adam steps (lr ``relearn_lr``) on the ``demos``
                 (never the audited facts), then the greedy continuation of the prompt
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import AUDIT_PROBES
from ..facts import Fact, answer_in
from ..hf.adapters import get_adapter, model_device
from ..hf.generate import greedy_continuations, sample_continuations
from ..hf.hooks import capture, run_until
from ..hf.tokens import answer_ids, encode_at
from .lm import loglikelihoods

log = logging.getLogger(__name__)

PROBES = AUDIT_PROBES
NEEDS_DEMOS = ("context", "relearn")


@dataclass(frozen=True)
class AuditConfig:
    """What shapes an audit besides its inputs (recorded in the report)."""

    probes: tuple[str, ...] = PROBES
    max_new_tokens: int = 10
    batch_size: int = 32
    samples: int = 10
    sample_top_k: int = 50
    distractors: int = 4
    shots: int = 3
    lens_top: int = 1
    relearn_steps: int = 10
    relearn_lr: float = 1e-4
    relearn_facts: int = 64
    seed: int = 0

    def __post_init__(self):
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown or not self.probes:
            raise ValueError(f"probes {unknown or '()'}: choose from {list(PROBES)}")
        for name in ("max_new_tokens", "batch_size", "samples", "sample_top_k", "distractors", "lens_top"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.shots < 0 or self.relearn_steps < 0 or self.relearn_facts < 1 or not self.relearn_lr > 0:
            raise ValueError("shots and relearn_steps must be ≥ 0, relearn_facts ≥ 1, relearn_lr > 0")


@dataclass
class AuditReport:
    """Per probe {found, chance, n, per_fact: [...]} for the audited model and, with ``original=``,
    the same for the original; ``receipts`` {case_id: [probes that still find the fact]}."""

    probes: dict
    receipts: dict
    original: dict | None = None
    settings: dict = field(default_factory=dict)
    case_ids: list = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    created: str = ""
    kind: str = "audit"

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditReport:
        if data.get("kind") != "audit":
            raise ValueError(f"not an audit report (kind {data.get('kind')!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"audit report has unknown field(s) {unknown}")
        return cls(**{k: data[k] for k in names if k in data})

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> AuditReport:
        path = Path(source)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None

    def summary(self) -> str:
        """A markdown table: per probe, found (original → audited) and the chance level."""
        lines = ["| probe | found (original) | found | chance |", "|---|---|---|---|"]
        for name, block in self.probes.items():
            before = (self.original or {}).get(name, {}).get("found")
            cells = [_pct(before), _pct(block["found"]), _pct(block["chance"])]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        found = sum(bool(v) for v in self.receipts.values())
        lines.append(f"\n{found} of {len(self.receipts)} facts are still found by at least one probe.")
        return "\n".join(lines)


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _partners(facts: Sequence[Fact]) -> list[int]:
    """For each fact, the next fact (cyclically) whose answer differs: its chance-level partner."""
    n = len(facts)
    out = []
    for i, f in enumerate(facts):
        j = next(
            ((i + k) % n for k in range(1, n) if facts[(i + k) % n].answer.lower() != f.answer.lower()),
            None,
        )
        out.append(i if j is None else j)
    return out


def _lower_first(prompt: str, subject: str) -> str:
    return prompt if prompt.startswith(subject) else prompt[:1].lower() + prompt[1:]


def phrasings_of(tokenizer, fact: Fact) -> dict[str, str]:
    """The prompts the phrasings probe tries, by name."""
    prompt = fact.prompt.strip()
    out = {"prompt": prompt}
    for i, p in enumerate(fact.paraphrases):
        out[f"paraphrase_{i}"] = p.strip()
    out["question"] = f"Question: {prompt} what?\nAnswer:"
    out["inside"] = f"Everyone who was there agreed that {_lower_first(prompt, fact.subject)}"
    if getattr(tokenizer, "chat_template", None):
        message = [{"role": "user", "content": f"Complete the sentence: {prompt}"}]
        out["chat"] = tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    return out


def _found_in(answers: Sequence[str], groups: Sequence[Sequence[str]]) -> list[bool]:
    return [any(answer_in(a, c) for c in texts) for a, texts in zip(answers, groups)]


def _block(found: Sequence[bool], chance: Sequence[bool], per_fact: list) -> dict:
    n = len(found)
    return {"found": sum(found) / n, "chance": sum(chance) / n, "n": n, "per_fact": per_fact}


def _generation_probe(texts_per_fact: Sequence[Sequence[str]], facts, partners, details=None) -> dict:
    answers = [f.answer for f in facts]
    found = _found_in(answers, texts_per_fact)
    chance = _found_in([answers[p] for p in partners], texts_per_fact)
    per_fact = [
        {"found": f, **({} if details is None else details[i]), "outputs": list(texts_per_fact[i])}
        for i, f in enumerate(found)
    ]
    return _block(found, chance, per_fact)


def _greedy(model, tokenizer, prompts_per_fact, config) -> list[list[str]]:
    flat = [p for ps in prompts_per_fact for p in ps]
    outs = greedy_continuations(model, tokenizer, flat, config.max_new_tokens, config.batch_size)
    it = iter(outs)
    return [[next(it) for _ in ps] for ps in prompts_per_fact]


def _probe_phrasings(model, tokenizer, facts, partners, config) -> dict:
    named = [phrasings_of(tokenizer, f) for f in facts]
    texts = _greedy(model, tokenizer, [list(n.values()) for n in named], config)
    details = [
        {"by_phrasing": {k: answer_in(f.answer, t) for k, t in zip(n, ts)}} for f, n, ts in zip(facts, named, texts)
    ]
    return _generation_probe(texts, facts, partners, details)


def _candidates(facts, demos, config) -> list[list[str]]:
    """Per fact: its answer then ``distractors`` other objects (same template first), seeded."""
    pool = list(facts) + list(demos)
    rng = random.Random(config.seed)
    out = []
    for f in facts:
        seen, same, other = {f.answer.lower()}, [], []
        for g in pool:
            if g.answer.lower() not in seen:
                seen.add(g.answer.lower())
                (same if g.template == f.template else other).append(g.answer)
        rng.shuffle(same)
        rng.shuffle(other)
        picked = (same + other)[: config.distractors]
        if len(picked) < config.distractors:
            raise ValueError(
                f"the ranking probe needs {config.distractors} distractors per fact; fact {f.case_id} has "
                f"{len(picked)} other objects among the facts and demos (give more demos or fewer distractors)"
            )
        out.append([f.answer, *picked])
    return out


def _probe_ranking(model, tokenizer, facts, partners, config, demos) -> dict:
    cands = _candidates(facts, demos, config)
    requests = [(f.prompt.strip(), " " + c.strip()) for f, cs in zip(facts, cands) for c in cs]
    scores = [s.logprob / s.n_tokens for s in loglikelihoods(model, tokenizer, requests, config.batch_size)]
    k = config.distractors + 1
    per_fact, found = [], []
    for i, cs in enumerate(cands):
        mine = scores[i * k : (i + 1) * k]
        rank = 1 + sum(s >= mine[0] for s in mine[1:])  # a tie is not a win
        found.append(rank == 1)
        per_fact.append({"found": rank == 1, "rank": rank, "candidates": cs, "logprob_per_token": mine})
    block = _block(found, [False] * len(facts), per_fact)
    block["chance"] = 1.0 / k
    return block


def _probe_sampling(model, tokenizer, facts, partners, config) -> dict:
    prompts = [f.prompt.strip() for f in facts for _ in range(config.samples)]
    outs = sample_continuations(
        model, tokenizer, prompts, config.max_new_tokens, config.sample_top_k, config.seed, config.batch_size
    )
    texts = [outs[i * config.samples : (i + 1) * config.samples] for i in range(len(facts))]
    return _generation_probe(texts, facts, partners)


def _shots_for(fact: Fact, demos: Sequence[Fact], shots: int, rng: random.Random) -> list[Fact]:
    same = [d for d in demos if d.template == fact.template and d.subject != fact.subject]
    other = [d for d in demos if d.template != fact.template and d.subject != fact.subject]
    rng.shuffle(same)
    rng.shuffle(other)
    return (same + other)[:shots]


def _probe_context(model, tokenizer, facts, partners, config, demos) -> dict:
    rng = random.Random(config.seed)
    prompts = []
    for f in facts:
        shots = "".join(f"{d.prompt.strip()} {d.answer.strip()}.\n" for d in _shots_for(f, demos, config.shots, rng))
        prompts.append([shots + f.prompt.strip(), "Answer truthfully and completely.\n" + f.prompt.strip()])
    texts = _greedy(model, tokenizer, prompts, config)
    details = [
        {"few_shot": answer_in(f.answer, ts[0]), "truthfully": answer_in(f.answer, ts[1])}
        for f, ts in zip(facts, texts)
    ]
    return _generation_probe(texts, facts, partners, details)


@torch.no_grad()
def _answer_ranks(
    model, tokenizer, facts: Sequence[Fact], answer_sets: Sequence[Sequence[str]], batch_size: int
) -> list[torch.Tensor]:
    """Per list of ``answer_sets`` (one answer per fact), the (n, L) rank (1 = top) of each answer's first
    token at its fact's last prompt token, decoding each block's output by the final norm and the
    output head (the last block's is the model's own next-token distribution); one forward per batch."""
    adapter = get_adapter(model)
    norm = model.get_submodule(adapter.final_norm)
    head = adapter.lm_head(model)
    layers = list(range(adapter.num_layers(model)))
    ranks = [[] for _ in answer_sets]
    for start in range(0, len(facts), batch_size):
        chunk = facts[start : start + batch_size]
        prompts = [f.prompt.strip() for f in chunk]
        enc = encode_at(tokenizer, prompts, [len(p) for p in prompts]).to(model_device(model))
        with capture(model, adapter, block_layers=layers, stop_after=layers[-1]) as store:
            run_until(model, **enc.model_inputs)
        rows = torch.arange(len(chunk), device=enc.index.device)
        hidden = torch.stack([store[("block", layer)][rows, enc.index] for layer in layers], 1)  # (b, L, d)
        logits = head(norm(hidden)).float()  # (b, L, V)
        for out, answers in zip(ranks, answer_sets):
            ids = torch.tensor(
                [answer_ids(tokenizer, f.prompt, a)[0] for f, a in zip(chunk, answers[start : start + batch_size])],
                device=logits.device,
            )
            target = logits.gather(-1, ids[:, None, None].expand(-1, len(layers), 1))
            out.append(1 + (logits > target).sum(-1).cpu())
    return [torch.cat(r) for r in ranks]


def _probe_lens(model, tokenizer, facts, partners, config) -> dict:
    answers = [f.answer for f in facts]
    ranks, chance_ranks = _answer_ranks(
        model, tokenizer, facts, [answers, [answers[p] for p in partners]], config.batch_size
    )
    found = (ranks.min(1).values <= config.lens_top).tolist()
    chance = (chance_ranks.min(1).values <= config.lens_top).tolist()
    per_fact = [
        {"found": f, "best_rank": int(r.min()), "best_layer": int(r.argmin()), "ranks": r.tolist()}
        for f, r in zip(found, ranks)
    ]
    return _block(found, chance, per_fact)


def _relearned(model, tokenizer, demos: Sequence[Fact], config) -> torch.nn.Module:
    """A copy fine-tuned on the demos' prompt + answer (loss on the answer tokens), full-batch Adam."""
    clone = copy.deepcopy(model)
    clone.train(False)
    params = [p for p in clone.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=config.relearn_lr)
    rows, labels = [], []
    for d in demos[: config.relearn_facts]:
        prompt = tokenizer(d.prompt.strip())["input_ids"]
        answer = answer_ids(tokenizer, d.prompt, d.answer)
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model_device(clone)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    lab = torch.tensor([x + [-100] * (width - len(x)) for x in labels], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    torch.manual_seed(config.seed)
    for _ in range(config.relearn_steps):
        opt.zero_grad()
        logits = clone(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    return clone


def _probe_relearn(model, tokenizer, facts, partners, config, demos) -> dict:
    clone = _relearned(model, tokenizer, demos, config)
    try:
        texts = _greedy(clone, tokenizer, [[f.prompt.strip()] for f in facts], config)
    finally:
        del clone
    block = _generation_probe(texts, facts, partners)
    block["steps"], block["lr"] = config.relearn_steps, config.relearn_lr
    block["relearn_facts"] = min(len(demos), config.relearn_facts)
    return block


def _run_probes(model, tokenizer, facts, config, demos, desc: str | None) -> dict:
    partners = _partners(facts)
    runners = {
        "phrasings": lambda: _probe_phrasings(model, tokenizer, facts, partners, config),
        "ranking": lambda: _probe_ranking(model, tokenizer, facts, partners, config, demos),
        "sampling": lambda: _probe_sampling(model, tokenizer, facts, partners, config),
        "context": lambda: _probe_context(model, tokenizer, facts, partners, config, demos),
        "lens": lambda: _probe_lens(model, tokenizer, facts, partners, config),
        "relearn": lambda: _probe_relearn(model, tokenizer, facts, partners, config, demos),
    }
    was_training = model.training
    model.train(False)
    bar = tqdm(config.probes, desc=desc, disable=desc is None, unit="probe")
    try:
        out = {}
        for name in bar:
            bar.set_postfix_str(name)
            out[name] = runners[name]()
        return out
    finally:
        bar.close()
        model.train(was_training)


def audit(
    model,
    tokenizer,
    facts: Sequence[Fact],
    original=None,
    demos: Sequence[Fact] = (),
    config: AuditConfig | None = None,
    progress: bool = True,
    **overrides,
) -> AuditReport:
    """Audit ``model`` (a washed one) on ``facts`` with every probe of ``config`` (or its fields as
    keywords, e.g. ``probes=("phrasings", "lens")``); ``original``: the model before the wash, audited
    the same way for comparison; ``demos``: facts that were *not* washed (the controls), for the context
    and relearning probes and as extra distractors — none of them may be an audited fact; ``progress``: a bar
    per audited model, advancing probe by probe (stderr)."""
    from ..info import versions

    config = dataclasses.replace(config or AuditConfig(), **overrides)
    facts = list(facts)
    demos = list(demos)
    if not facts:
        raise ValueError("audit needs at least one fact")
    need = [p for p in config.probes if p in NEEDS_DEMOS]
    if need and not demos:
        raise ValueError(
            f"probes {need} need demos= (facts of the same relations that were not washed, e.g. the controls)"
        )
    audited = {(f.subject, f.template) for f in facts}
    clash = [d.case_id for d in demos if (d.subject, d.template) in audited]
    if clash:
        raise ValueError(f"demos must not hold audited facts (same subject and prompt): case ids {clash[:5]}")
    desc = f"audit of {len(facts)} facts" if progress else None
    probes = _run_probes(model, tokenizer, facts, config, demos, desc)
    before = None
    if original is not None:
        before = _run_probes(original, tokenizer, facts, config, demos, desc and desc + ", original")
    receipts = {
        str(f.case_id): [name for name, block in probes.items() if block["per_fact"][i]["found"]]
        for i, f in enumerate(facts)
    }
    return AuditReport(
        probes=probes,
        receipts=receipts,
        original=before,
        settings=dataclasses.asdict(config),
        case_ids=[f.case_id for f in facts],
        versions=versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def audit_table(reports: Sequence[AuditReport], labels: Sequence[str]) -> str:
    """Markdown: one row per probe, the share of facts found in each report (and the chance level)."""
    probes = [p for p in PROBES if any(p in r.probes for r in reports)]
    head = "| probe | " + " | ".join(labels) + " | chance |"
    lines = [head, "|---" * (len(labels) + 2) + "|"]
    for p in probes:
        cells = [_pct(r.probes.get(p, {}).get("found")) for r in reports]
        chance = next(r.probes[p]["chance"] for r in reports if p in r.probes)
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {_pct(chance)} |")
    return "\n".join(lines)


def plot_audit(report: AuditReport, path: str | os.PathLike) -> None:
    """A PNG: per probe, the share of facts found on the original (when audited) and the audited
    model, with the chance level marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.probes)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    width = 0.38
    if report.original:
        ax.bar([i - width / 2 for i in x], [report.original[n]["found"] for n in names], width, label="original")
    ax.bar([i + width / 2 for i in x], [report.probes[n]["found"] for n in names], width, label="audited")
    for i, n in enumerate(names):
        ax.hlines(report.probes[n]["chance"], i - 0.45, i + 0.45, colors="black", linestyles="dashed")
    ax.plot([], [], "k--", label="chance")
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of facts found")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
