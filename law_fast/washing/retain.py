"""Knowledge to keep: the second moment C_p of retained keys, added to the covariance the closed-form
methods measure disruption with (``WashConfig.retain``; issue 13, under measurement).

C_eff = C + ν·tr(C)·C_p, C_p the sum of one unit-trace second moment per source, in both the MEMIT
initialisation (Δ = RᵀK(λC_eff + KᵀK)⁻¹: MEMIT/EMMET's preservation term) and the LaW constraint
tr(ΔC_effΔᵀ)/tr(C_eff) ≤ β.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence

import torch

from ..config import RetainConfig
from ..corpus import load_corpus
from ..facts import Fact, load_facts
from .keys import key_second_moments
from .stats import layer_stats

log = logging.getLogger(__name__)


# a capitalised name (words of capitals, joined by spaces or "of"/"de"/"the"), after a lowercase word or
# a comma — so not the first word of a sentence
_NAME = re.compile(r"(?<=[a-z,;:] )([A-Z][\w'.-]*(?: (?:of |de |the )?[A-Z][\w'.-]*)*)")


def entity_mentions(
    texts: Sequence[str], n: int, seed: int = 0, context_words: int = 24, exclude: Sequence[str] = ()
) -> list[Fact]:
    """Up to ``n`` mentions of names in ``texts`` (seeded sample), each as a Fact whose template is the
    mention's sentence up to the name (at most ``context_words`` words before it): its key at the
    name's last token is what a fact's key is, for a subject the wash must not touch.  A name that
    holds one of ``exclude`` (the washed subjects) as whole words is not one to keep."""
    banned = {e.strip() for e in exclude if e.strip()}

    def holds_banned(name: str) -> bool:  # a washed subject as whole words: one of the name's word runs
        words = name.split(" ")
        return any(" ".join(words[i:j]) in banned for i in range(len(words)) for j in range(i + 1, len(words) + 1))

    found = []
    for text in texts:
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            for match in _NAME.finditer(sentence):
                name = match.group(1).rstrip(".")
                before = sentence[: match.start()].split()[-context_words:]
                if name and before and not holds_banned(name):
                    found.append((" ".join(before) + " {}", name))
    random.Random(seed).shuffle(found)
    return [Fact(name, template, "-", f"entity-{i}") for i, (template, name) in enumerate(found[:n])]


def retained_moments(
    model,
    adapter,
    tokenizer,
    requests: Sequence[Fact],
    templates: Sequence[str],
    layers: Sequence[int],
    config: RetainConfig,
    key_batch_size: int,
    corpus_texts: Sequence[str] = (),
) -> tuple[dict[int, torch.Tensor] | None, list[str]]:
    """({layer: C_p (f×f float64)}, the sources used) from the sources ``config`` names, on the model as
    it is (call before any edit); C_p is the sum of one unit-trace second moment per source, so that
    ``retain_weight`` ν weighs each source alike.  ``corpus_texts``: the statistics corpus, where
    ``retain_entities`` mines its names.

    The automatic sources — names mined from the corpus, the washed facts' neighbourhood prompts —
    may find nothing (a corpus without capitalised names; facts without neighbourhood prompts): such
    a source is left out, with a log line, unless the wash also asks for ``retain_facts`` or a null
    space, which are built from what was asked (then it is an error).  (None, []) when retention is off,
    or (a warning) when no source is left: the wash is then the plain method, as the report says."""
    if not config.uses_sources:
        return None, []
    automatic_only = config.retain_facts is None and config.null_space_energy is None
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    used = []

    def nothing_found(source: str, why: str, level=logging.WARNING) -> None:
        if not automatic_only:
            raise ValueError(f"{source}: {why}")
        log.log(level, "%s: %s; washing without it", source, why)

    if config.retain_entities:
        subjects = sorted({f.subject for f in requests})
        mentions = entity_mentions(corpus_texts, config.retain_entities, seed=config.retain_seed, exclude=subjects)
        if not mentions:
            nothing_found("retain_entities", "the statistics corpus holds no capitalised names after a lowercase word")
        else:
            if len(mentions) < config.retain_entities:
                log.warning(
                    "retain_entities: the corpus holds %d name mentions, fewer than %d",
                    len(mentions),
                    config.retain_entities,
                )
            for layer, second in key_second_moments(
                model, adapter, tokenizer, mentions, ["{}"], layers, key_batch_size
            ):
                parts[layer].append(second)
            used.append("names")
    if config.retain_facts is not None:
        kept = load_facts(config.retain_facts)
        washed = {(f.subject, f.template) for f in requests}
        clash = [f.case_id for f in kept if (f.subject, f.template) in washed]
        if clash:
            raise ValueError(
                f"{config.retain_facts}: {len(clash)} fact(s) to keep are also being washed "
                f"(same subject and prompt), e.g. case ids {clash[:5]}"
            )
        for layer, second in key_second_moments(model, adapter, tokenizer, kept, templates, layers, key_batch_size):
            parts[layer].append(second)
        used.append("facts")
    if config.retain_neighbourhood:
        prompts = [prompt for fact in requests for prompt, _ in fact.neighbourhood]
        if not prompts:  # the usual case for a user's own facts: an info line when the names are there
            why = "the facts being washed have no neighbourhood prompts"
            nothing_found("retain_neighbourhood", why, logging.INFO if used else logging.WARNING)
        else:
            stats = layer_stats(
                model, adapter, tokenizer, load_corpus(prompts), layers, use_cache=False, progress=False
            )
            for layer in layers:
                parts[layer].append(stats[layer].cov.to(torch.float64))
            used.append("neighbourhood")
    if not used:
        log.warning("retention: no source found anything to keep (report.retain['applied'] is False)")
        return None, []
    return {layer: sum(m / m.diagonal().sum() for m in ms) for layer, ms in parts.items()}, used


def effective_cov(cov: torch.Tensor, retained: torch.Tensor, weight: float) -> torch.Tensor:
    """C + weight·tr(C)·C_p, in cov's dtype and device."""
    return cov + weight * cov.diagonal().sum() * retained.to(cov.device, cov.dtype)


def null_space_basis(retained: torch.Tensor, energy: float) -> torch.Tensor:
    """Orthonormal basis V (f×r, float64) of the directions outside the fewest top eigen-directions of
    ``retained`` (C_p) that hold ``energy`` of its trace: Δ = Δ̃Vᵀ leaves those keys' outputs alone."""
    values, vectors = torch.linalg.eigh(retained.to(torch.float64))  # ascending
    top_share = values.flip(0).cumsum(0) / values.sum()
    k = int((top_share < energy).sum()) + 1  # the fewest top directions reaching the energy
    k = min(k, values.numel() - 1)  # keep at least one direction to edit
    return vectors[:, : values.numel() - k].contiguous()


def corpus_null_space(cov: torch.Tensor, threshold: float, layer: int) -> torch.Tensor:
    """Orthonormal basis V (f×r, float64) of the eigen-directions of the corpus second moment C with
    eigenvalue below ``threshold`` — AlphaEdit's null-space projection P = VVᵀ (its SVD of C, in float64
    here): Δ = Δ̃Vᵀ leaves the outputs at the corpus keys (almost) alone."""
    values, vectors = torch.linalg.eigh(cov.to(torch.float64))  # ascending
    r = int((values < threshold).sum())
    if r == 0:
        raise ValueError(
            f"null_space_threshold={threshold:g}: no eigenvalue of layer {layer}'s covariance is below it "
            f"(the smallest is {float(values[0]):.3g}), so every update would be zero; raise the threshold"
        )
    return vectors[:, :r].contiguous()


def restrict(basis: torch.Tensor, gram: torch.Tensor, cov: torch.Tensor, keys=None, cross=None):
    """A layer's problem in the span of ``basis`` V (f×r): (V, VᵀGV, VᵀCV, KV, VᵀB), float64 on cov's
    device (``keys``/``cross`` None stay None).  An update Δ̃ found there is Δ = Δ̃Vᵀ in f dimensions."""

    def f64(t):
        return None if t is None else t.to(cov.device, torch.float64)

    V = f64(basis)
    return (
        V,
        V.T @ f64(gram) @ V,
        V.T @ f64(cov) @ V,
        None if keys is None else f64(keys) @ V,
        None if cross is None else V.T @ f64(cross),
    )
