"""The closed-form methods: ``memit`` (the MEMIT-to-EOS initialisation alone) and ``law`` (that
initialisation refined by the LaW optimisation, with successive elimination across layers).

statistics → templates → targets z* → MEMIT init (sequential over the layers) → [LaW per layer,
re-checking after each which facts the model still produces]."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .. import dist
from ..config import WashConfig
from ..corpus import resolve
from ..facts import Fact
from ..hf.adapters import get_adapter, model_device, model_fingerprint
from ..integrity import blob_digest, file_digest
from .checkpoints import StageStore, claim
from .elimination import known_facts
from .keys import key_moments
from .law import law_optimize
from .memit import memit_update
from .result import Timer, WashResult, run_method
from .retain import corpus_null_space, effective_cov, null_space_basis, restrict, retained_moments
from .stats import checked_stats, layer_stats
from .targets import compute_targets, target_token_ids
from .templates import context_templates

log = logging.getLogger(__name__)


def run_closed_form(
    model,
    tokenizer,
    facts: Sequence[Fact],
    config: WashConfig,
    *,
    corpus=None,
    final_check: bool = True,
    progress: bool = True,
    workdir=None,
    stats: dict | None = None,
) -> WashResult:
    """Wash ``facts`` with ``config.method`` "law" or "memit" (see :func:`law_fast.wash`); ``stats``:
    {layer: LayerStats} given (e.g. a client's statistics files, :mod:`law_fast.compat.stats`) instead
    of computed from the corpus."""
    adapter = get_adapter(model)
    n_layers = adapter.num_layers(model)
    if config.layers[-1] >= n_layers:
        raise ValueError(
            f"config.layers {list(config.layers)} exceed the model's {n_layers} blocks (0..{n_layers - 1})"
        )
    if config.targets.v_loss_layer >= n_layers:
        raise ValueError(
            f"v_loss_layer {config.targets.v_loss_layer} is beyond the model's {n_layers} blocks "
            f"(0..{n_layers - 1}; -1: the last block)"
        )
    layers = list(config.layers)

    def body(requests: list, result: WashResult, timer: Timer) -> None:
        _wash_layers(
            model, tokenizer, adapter, requests, config, layers, corpus, result, timer, progress, workdir, stats
        )

    return run_method(
        model,
        tokenizer,
        facts,
        config,
        [adapter.down_proj_name(layer) for layer in layers],
        body,
        final_check=final_check,
        progress=progress,
        layers=layers,
    )


def _wash_layers(
    model,
    tokenizer,
    adapter,
    requests,
    config: WashConfig,
    layers,
    corpus,
    result: WashResult,
    timer: Timer,
    progress: bool,
    workdir,
    given_stats: dict | None = None,
) -> None:
    report = result.report
    z_layer = layers[-1]
    stats_config, checks = config.stats, config.checks

    def corpus_now():
        return resolve(
            corpus if corpus is not None else stats_config.corpus,
            model,
            tokenizer,
            n_samples=stats_config.mom2_n_samples,
        )

    with timer("covariance"):
        if given_stats is not None:
            stats = checked_stats(given_stats, model, adapter, layers)
            corp = None
            report.corpus = {"identity": "given statistics", "tokens": stats[layers[0]].count}
        else:
            corp = corpus_now()
            stats = layer_stats(
                model,
                adapter,
                tokenizer,
                corp,
                layers,
                stats_config.stats_max_length,
                stats_config.stats_batch_tokens,
                stats_config.stats_dtype,
                progress=progress,
            )
            report.corpus = {"identity": corp.identity, "tokens": stats[layers[0]].count}
        device = model_device(model)
        covs = {layer: stats[layer].cov.to(device, torch.float64) for layer in layers}
    names = None  # where retain_entities mines its names: the statistics corpus (with given statistics: `corpus`)
    if config.retain.uses_sources and config.retain.retain_entities:
        names = corp or corpus_now()
    stages = None
    if workdir is not None:  # one job per workdir; the stages of this config in their own folder
        fingerprint = model_fingerprint(model)  # the weights before the wash
        claim(workdir, fingerprint, requests)
        source = {
            "corpus": report.corpus["identity"]
            if given_stats is None
            else blob_digest({k: v.sum for k, v in stats.items()}),
            # the retain file by content: the config names it by path only
            "retain_facts": None if config.retain.retain_facts is None else file_digest(config.retain.retain_facts),
        }
        if names is not None and names is not corp:
            source["names_corpus"] = names.identity
        stages = StageStore(workdir, fingerprint, requests, config.to_dict(), source)
    with timer("templates"):
        templates = context_templates(model, tokenizer, seed=config.seed, length=config.targets.template_length)
        templates = dist.broadcast_object(templates)  # under torchrun: rank 0's, in every process
        report.context_templates = templates
    bases: dict = dict.fromkeys(layers)  # None: Δ free; else Δ = Δ̃Vᵀ in the span of V (f×r)
    corpus_covs: dict = dict.fromkeys(
        layers
    )  # the budget's covariance (retain_budget="corpus"): C, where covs is C_eff
    retain = config.retain
    if retain.null_space_threshold is not None:  # AlphaEdit's P, from the corpus C itself
        bases = {layer: corpus_null_space(covs[layer], retain.null_space_threshold, layer) for layer in layers}
        report.retain = retain.to_dict()
    if retain.uses_sources:
        with timer("retained keys"):
            texts = names.texts if names is not None else ()
            retained, sources = retained_moments(
                model, adapter, tokenizer, requests, templates, layers, retain, config.key_batch_size, texts
            )
            # None: the automatic sources found nothing (warned): the plain method
            if retained is not None and retain.retain_weight > 0:
                if retain.retain_budget == "corpus":
                    corpus_covs = covs
                covs = {layer: effective_cov(covs[layer], retained[layer], retain.retain_weight) for layer in layers}
            if retained is not None and retain.null_space_energy is not None:
                bases = {layer: null_space_basis(retained[layer], retain.null_space_energy) for layer in layers}
            report.retain = {**retain.to_dict(), "applied": retained is not None, "sources": sources}
    with timer("targets"):
        target_ids = target_token_ids(tokenizer, adapter.eos_token_id(model, tokenizer), config.target)
        targets = compute_targets(
            model,
            adapter,
            tokenizer,
            requests,
            templates,
            config.targets,
            z_layer,
            target_ids,
            progress,
            workdir=workdir,
        )
        report.targets = {
            "ids": target_ids,  # None: "unlikely", each fact's answer token
            "mean_final_loss": float(targets.loss.mean()),
            "mean_steps": float(targets.steps.float().mean()),
        }
    layer_reports = {layer: {"layer": layer} for layer in layers}
    report.per_layer = [layer_reports[layer] for layer in layers]
    inits = {}
    first = None  # the first layer's key moments, shared by the init and the LaW loop
    with timer("memit init"):
        for i, layer in enumerate(layers):
            saved = _saved(stages, "init", layer)
            if saved is not None:
                delta = saved["delta"].to(device)
                layer_reports[layer].update(saved["report"])
            else:
                moments = key_moments(
                    model,
                    adapter,
                    tokenizer,
                    requests,
                    templates,
                    layer,
                    config.key_batch_size,
                    targets=targets.z_star,
                    z_layer=z_layer,
                    scale=1.0 / (len(layers) - i),
                )
                delta, rep = memit_update(
                    moments,
                    covs[layer],
                    adapter.weight(model, layer).detach(),
                    config.memit,
                    basis=bases[layer],
                    budget_cov=corpus_covs[layer],
                )
                dist.broadcast_(delta)  # every process edits with rank 0's Δ
                layer_reports[layer]["memit"] = rep
                if bases[layer] is not None:  # how much of the washed keys' energy the restriction leaves to edit
                    V, gram, _, _, _ = restrict(bases[layer], moments.gram, covs[layer])
                    kept = float(gram.diagonal().sum() / moments.gram.diagonal().sum())
                    layer_reports[layer]["null_space"] = {"dim": V.shape[1], "washed_energy_kept": kept}
                if stages is not None and dist.is_main():
                    stages.save("init", layer, delta, {k: v for k, v in layer_reports[layer].items() if k != "layer"})
                if i == 0:
                    first = moments  # the LaW loop's first layer sees the same model and facts
            adapter.add_to_weight(model, layer, delta)
            inits[layer] = delta
    if config.method == "memit":
        result.deltas = {layer: d.float().cpu() for layer, d in inits.items()}
        return
    result.revert(model)
    alive = list(requests)
    position = {id(f): j for j, f in enumerate(requests)}  # alive facts are saved as positions in requests
    for i, layer in enumerate(layers):
        saved = _saved(stages, "law", layer)
        if saved is not None:
            delta = saved["delta"].to(device)
            layer_reports[layer].update(saved["report"])
            adapter.add_to_weight(model, layer, delta)
            result.deltas[layer] = delta.float().cpu()
            alive = [requests[j] for j in saved["report"]["alive"]]
            layer_reports[layer].pop("alive")
            if not alive:
                break
            continue
        with timer("law keys"):
            moments = (
                first
                if i == 0 and first is not None
                else key_moments(model, adapter, tokenizer, alive, templates, layer, config.key_batch_size)
            )
        with timer("law solve"):
            delta, rep = law_optimize(
                inits[layer], moments.gram, covs[layer], config.law, keys=moments.keys, basis=bases[layer]
            )
            dist.broadcast_(delta)
        adapter.add_to_weight(model, layer, delta)
        result.deltas[layer] = delta.float().cpu()
        layer_reports[layer]["law"] = rep
        layer_reports[layer]["n_requests"] = len(alive)
        if checks.prune_requests and i < len(layers) - 1:
            pool = requests if checks.keep_original_requests else alive
            with timer("elimination"):
                still, _ = known_facts(model, tokenizer, pool, checks.check_max_new_tokens, checks.check_batch_size)
            alive = [f for f, k in zip(pool, still) if k]
            layer_reports[layer]["still_known_after"] = len(alive)
            log.info("layer %d: %d of %d facts still produced", layer, len(alive), len(pool))
        if stages is not None and dist.is_main():
            fields = {k: v for k, v in layer_reports[layer].items() if k in ("law", "n_requests", "still_known_after")}
            stages.save("law", layer, delta, {**fields, "alive": [position[id(f)] for f in alive]})
        if not alive:
            break


def _saved(stages, stage: str, layer: int):
    """A stage's checkpoint, or None — rank 0's under torchrun (read there and broadcast), so that every
    process takes the same path even where only rank 0's disk holds the workdir."""
    if stages is None:
        return None
    return dist.broadcast_object(stages.load(stage, layer) if dist.is_main() else None)
