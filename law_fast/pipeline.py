"""The washing pipeline: statistics → templates → targets z* → MEMIT init → LaW with successive elimination."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .config import WashConfig
from .corpus import load_corpus
from .facts import Fact
from .generation import context_templates, known_facts
from .keys import key_moments
from .law import law_optimize
from .memit import memit_update
from .models import get_adapter, model_device, model_name
from .stats import default_corpus, layer_stats
from .targets import compute_targets, target_token_ids

log = logging.getLogger(__name__)


@dataclass
class WashResult:
    """What a wash did.  The model passed to :func:`wash` carries the edits.

    ``deltas``: {layer: Δ (d×f, float32, math orientation)} for the closed-form methods (LaW,
    MEMIT), empty for the fine-tuning baselines; ``original``: {parameter name: value before the
    wash} for every parameter the method may change, for an exact :meth:`revert` and for
    ``deltas.safetensors``; ``report``: JSON-able.
    """

    config: WashConfig
    deltas: dict[int, torch.Tensor]
    original: dict[str, torch.Tensor]
    report: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None
    tokenizer: object | None = None

    def revert(self, model: torch.nn.Module | None = None) -> None:
        """Put back the exact original weights of the edited layers."""
        model = model if model is not None else self.model
        with torch.no_grad():
            for name, value in self.original.items():
                model.get_parameter(name).copy_(value)

    def evaluate(self, facts=None, **kwargs):
        """:func:`law_fast.evaluate` on the washed model — the same metrics as ``law-fast eval``
        and the demo.  ``facts`` defaults to nothing; pass ``subset=`` the original model's
        :class:`~law_fast.evaluation.EvalReport` to score exactly the facts it knew."""
        from .evaluation import evaluate

        if self.model is None or self.tokenizer is None:
            raise ValueError("this WashResult holds no model/tokenizer to evaluate")
        return evaluate(self.model, self.tokenizer, facts=facts, **kwargs)

    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """{parameter name: current − original} (stored orientation, float32, CPU) of the changed parameters."""
        out = {}
        for name, value in self.original.items():
            diff = (self.model.get_parameter(name).detach().float() - value.float()).cpu()
            if diff.any():
                out[name] = diff
        return out

    def save(self, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the washed model (safetensors) + tokenizer, ``deltas.safetensors``, ``report.json``
        and ``wash_config.json`` to ``out_dir`` (written to a temporary folder, then renamed)."""
        from safetensors.torch import save_file

        if self.model is None:
            raise ValueError("this WashResult holds no model to save")
        out = Path(out_dir).expanduser().resolve()
        source = Path(str(getattr(self.model.config, "_name_or_path", "") or "")).expanduser()
        if source.exists() and source.resolve() == out:
            raise ValueError(f"refusing to write the washed model over its source {source}; choose another directory")
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(str(tmp), safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(tmp))
        save_file({name: d.contiguous() for name, d in self.weight_deltas().items()}, str(tmp / "deltas.safetensors"),
                  metadata={"orientation": "stored (as in the model's state dict): W_new = W + delta"})
        (tmp / "report.json").write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        self.config.to_json(tmp / "wash_config.json")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return out


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        log.info("stage: %s", stage)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def wash(model, tokenizer, facts: Sequence[Fact], config: WashConfig | None = None, *, method: str | None = None,
         corpus=None, final_check: bool = True, progress: bool = True) -> WashResult:
    """Wash ``facts`` out of ``model`` in place and return a :class:`WashResult`.

    ``config`` defaults to :meth:`WashConfig.preset`; ``method`` overrides ``config.method``:
    "law" (default), "memit" (the closed-form init alone) or a fine-tuning baseline — "ft",
    "me-ft", "ft-ul", "seul", "woh" (:mod:`law_fast.baselines`, docs/baselines.md); ``corpus`` (a path, a list of texts or a :class:`~law_fast.corpus.Corpus`)
    overrides ``config.corpus`` for the covariance statistics.  On any error the model's
    original weights are restored before the exception propagates.
    """
    adapter = get_adapter(model)
    config = config or WashConfig.preset(model)
    if method is not None:
        config = config.replace(method=method)
    if config.method not in ("law", "memit"):   # ft, me-ft, ft-ul, seul, woh: law_fast.baselines
        from .baselines import run_baseline
        return run_baseline(model, tokenizer, facts, config, corpus=corpus, final_check=final_check, progress=progress)
    n_layers = adapter.num_layers(model)
    if config.layers[-1] >= n_layers:
        raise ValueError(f"config.layers {list(config.layers)} exceed the model's {n_layers} blocks (0..{n_layers - 1})")
    layers = list(config.layers)
    z_layer = layers[-1]
    requests, result, timer = begin_wash(model, tokenizer, facts, config, [adapter.down_proj_name(layer) for layer in layers],
                                         progress, layers=layers)
    if not requests:
        return result
    report = result.report

    try:
        with timer("covariance"):
            source = corpus if corpus is not None else config.corpus
            corp = default_corpus(model, tokenizer) if source is None else (
                source if hasattr(source, "identity") else load_corpus(source, n_samples=config.mom2_n_samples))
            stats = layer_stats(model, adapter, tokenizer, corp, layers, config.stats_max_length, config.stats_batch_tokens,
                                config.stats_dtype, progress=progress)
            device = model_device(model)
            covs = {layer: stats[layer].cov.to(device, torch.float64) for layer in layers}
            report["corpus"] = {"identity": corp.identity, "tokens": stats[layers[0]].count}
        with timer("templates"):
            templates = context_templates(model, tokenizer, seed=config.seed, length=config.template_length)
            report["context_templates"] = templates
        with timer("targets"):
            target_ids = target_token_ids(tokenizer, adapter.eos_token_id(model, tokenizer), config.target)
            targets = compute_targets(model, adapter, tokenizer, requests, templates, config, z_layer, target_ids, progress)
            report["targets"] = {"ids": target_ids, "mean_final_loss": float(targets.loss.mean()),
                                 "mean_steps": float(targets.steps.float().mean())}
        layer_reports = {layer: {"layer": layer} for layer in layers}
        report["per_layer"] = [layer_reports[layer] for layer in layers]
        inits = {}
        with timer("memit init"):
            for i, layer in enumerate(layers):
                moments = key_moments(model, adapter, tokenizer, requests, templates, layer, config.key_batch_size,
                                      targets=targets.z_star, z_layer=z_layer, scale=1.0 / (len(layers) - i))
                delta, rep = memit_update(moments, covs[layer], adapter.weight(model, layer).detach(), config)
                layer_reports[layer]["memit"] = rep
                adapter.add_to_weight(model, layer, delta)
                inits[layer] = delta
                if i == 0:
                    first = moments   # the LaW loop's first layer sees the same model and facts
        if config.method == "memit":
            result.deltas = {layer: d.float().cpu() for layer, d in inits.items()}
        else:
            result.revert(model)
            alive = list(requests)
            for i, layer in enumerate(layers):
                with timer("law keys"):
                    moments = first if i == 0 else key_moments(model, adapter, tokenizer, alive, templates, layer,
                                                               config.key_batch_size)
                with timer("law solve"):
                    delta, rep = law_optimize(inits[layer], moments.gram, covs[layer], config, keys=moments.keys)
                adapter.add_to_weight(model, layer, delta)
                result.deltas[layer] = delta.float().cpu()
                layer_reports[layer]["law"] = rep
                layer_reports[layer]["n_requests"] = len(alive)
                if config.prune_requests and i < len(layers) - 1:
                    pool = requests if config.keep_original_requests else alive
                    with timer("elimination"):
                        still, _ = known_facts(model, tokenizer, pool, config.check_max_new_tokens, config.check_batch_size)
                    alive = [f for f, k in zip(pool, still) if k]
                    layer_reports[layer]["still_known_after"] = len(alive)
                    log.info("layer %d: %d of %d facts still produced", layer, len(alive), len(pool))
                    if not alive:
                        break
    except BaseException:
        result.revert(model)
        raise
    finish_report(model, tokenizer, requests, config, report, timer, final_check)
    return result


def begin_wash(model, tokenizer, facts, config: WashConfig, parameter_names: Sequence[str], progress: bool,
               **report_fields) -> tuple[list, WashResult, _Timer]:
    """What every method does first: the report, the initial check (:func:`select_requests`) and a
    copy of the parameters the method may change.  Returns (requests, result, timer); with no
    request the result is final (nothing to wash)."""
    facts = list(facts)
    if not facts:
        raise ValueError("no facts to wash")
    timer = _Timer()
    report: dict = {"model": model_name(model), "method": config.method, **report_fields, "n_facts": len(facts)}
    requests = select_requests(model, tokenizer, facts, config, report, timer, progress)
    original = {name: model.get_parameter(name).detach().clone() for name in parameter_names}
    result = WashResult(config, {}, original, report, model, tokenizer)
    if requests:
        report["n_washed_requests"] = len(requests)
    else:
        log.warning("none of the %d facts is produced by the model; nothing to wash", len(facts))
        report["timings_s"] = timer.seconds
    return requests, result, timer


def select_requests(model, tokenizer, facts, config: WashConfig, report: dict, timer: _Timer, progress: bool) -> list:
    """The initial check: the facts to wash (those the model produces, with ``only_known``)."""
    with timer("initial check"):
        known, _ = known_facts(model, tokenizer, facts, config.check_max_new_tokens, config.check_batch_size,
                               desc="checking facts" if progress else None)
    report["known_before"] = sum(known)
    report["skipped_unknown"] = [f.case_id for f, k in zip(facts, known) if not k] if config.only_known else []
    return [f for f, k in zip(facts, known) if k] if config.only_known else facts


def finish_report(model, tokenizer, requests, config: WashConfig, report: dict, timer: _Timer, final_check: bool) -> None:
    """The final check (which washed facts the model still produces) and the stage timings."""
    if final_check:
        with timer("final check"):
            still, _ = known_facts(model, tokenizer, requests, config.check_max_new_tokens, config.check_batch_size)
        report["still_known_after"] = sum(still)
        report["still_known_ids"] = [f.case_id for f, k in zip(requests, still) if k]
    report["timings_s"] = timer.seconds
