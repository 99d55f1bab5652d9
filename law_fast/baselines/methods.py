"""The five fine-tuning baselines as washing methods (the runners behind ``law_fast.wash``).

Each runner goes through :func:`law_fast.washing.result.run_method` (initial check, snapshot,
revert on any error, final check) and trains with :mod:`law_fast.baselines.training`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch

from ..config import BASELINE_METHODS, WashConfig
from ..facts import Fact
from ..hf.adapters import Adapter, get_adapter
from ..hf.compat import pad_id
from ..washing.result import Timer, WashResult, run_method
from ..washing.targets import target_token_ids
from .training import (
    ASCENT_METHODS,
    PerplexityGuard,
    build_examples,
    fit,
    guard_texts,
    lora_module_names,
    mean_nll,
    nll_loss,
    precision,
    seeded,
    woh_loss,
)

log = logging.getLogger(__name__)


def trained_parameter_names(model, adapter: Adapter, config: WashConfig) -> list[str]:
    """Parameters a full fine-tuning run of ``config.method`` trains: all of them, or for me-ft
    those of the down-projection module of ``meft_layer`` (weight and bias)."""
    if config.method == "me-ft":
        prefix = f"{adapter.blocks}.{config.finetune.meft_layer}.{adapter.down_proj}."
        return [name for name, _ in model.named_parameters() if name.startswith(prefix)]
    return [name for name, _ in model.named_parameters()]


def run_baseline(
    model,
    tokenizer,
    facts: Sequence[Fact],
    config: WashConfig,
    *,
    corpus=None,
    final_check: bool = True,
    progress: bool = True,
) -> WashResult:
    """Wash ``facts`` out of ``model`` in place with the fine-tuning baseline ``config.method``.

    The runner of the five baselines in :data:`law_fast.washing.api.METHODS`; ``corpus`` supplies the
    perplexity guard's held-out texts (a path, a list of texts or a Corpus; default
    ``config.stats.corpus``, then the embedded corpus).  Returns a
    :class:`~law_fast.washing.result.WashResult` whose ``deltas`` are empty and whose ``original``
    holds every parameter the method may change (for LoRA: the pre-wash weights of the adapted
    modules); ``result.config`` is the resolved config.
    """
    if config.method not in BASELINE_METHODS:
        raise ValueError(f"run_baseline: method must be one of {BASELINE_METHODS}, got {config.method!r}")
    config = config.resolved()
    ft = config.finetune
    adapter = get_adapter(model)
    n_layers = adapter.num_layers(model)
    if config.method == "me-ft" and ft.meft_layer >= n_layers:
        raise ValueError(
            f"meft_layer {ft.meft_layer} is out of range: the model has {n_layers} blocks (0..{n_layers - 1})"
        )
    names = lora_module_names(model, config) if ft.ft_use_lora else trained_parameter_names(model, adapter, config)
    weights = [f"{name}.weight" for name in names] if ft.ft_use_lora else names

    def body(requests: list, result: WashResult, timer: Timer) -> None:
        training: dict = {
            "lr": ft.ft_lr,
            "epochs": ft.ft_epochs,
            "batch_size": ft.ft_batch_size,
            "shuffle": ft.ft_shuffle,
            "weight_decay": ft.ft_weight_decay,
            "max_steps": ft.ft_max_steps,
            "lora": ft.ft_use_lora,
            "precision": precision(model, ft.ft_mixed_precision),
            "direction": "ascent" if config.method in ASCENT_METHODS else "descent",
            "trained": names if ft.ft_use_lora or config.method == "me-ft" else "all parameters",
            "trained_numel": sum(model.get_parameter(w).numel() for w in weights),
        }
        result.report.training = training
        with seeded(model, config.seed):
            guard = None
            if ft.guard_ppl_ratio is not None:
                with timer("guard setup"):
                    texts = guard_texts(model, tokenizer, corpus, config)
                    guard = PerplexityGuard(
                        model,
                        tokenizer,
                        texts,
                        ft.guard_ppl_ratio,
                        ft.guard_every,
                        ft.guard_max_length,
                        ft.ft_mixed_precision,
                    )
            with timer("training"):
                RUNNERS[config.method](
                    model, adapter, tokenizer, requests, config, names, guard, training, pad_id(tokenizer), progress
                )
            if guard is not None:
                training["guard"] = guard.report

    return run_method(model, tokenizer, facts, config, weights, body, final_check=final_check, progress=progress)


def _nll_method(model, adapter, tokenizer, requests, config, names, guard, training, pad, progress):
    """ft, me-ft (descend the NLL of the EOS target), ft-ul, seul (ascend the NLL of the sequence / answer span)."""
    if config.method in ("ft", "me-ft"):
        kind, sign = "target", 1.0
        target = target_token_ids(tokenizer, adapter.eos_token_id(model, tokenizer), config.target)
    else:
        kind, sign, target = ("sequence" if config.method == "ft-ul" else "answer"), -1.0, ()
    examples = build_examples(tokenizer, requests, kind, target)
    after_step = None
    if config.method == "me-ft":  # project onto the box W₀ ± ε after every step (full) or after the merge (LoRA)
        clamped = [f"{name}.weight" for name in names] if config.finetune.ft_use_lora else names
        bounds = {
            name: (
                model.get_parameter(name).detach() - config.finetune.meft_linf,
                model.get_parameter(name).detach() + config.finetune.meft_linf,
            )
            for name in clamped
        }

        def clamp_weight():
            with torch.no_grad():
                for name, (low, high) in bounds.items():
                    param = model.get_parameter(name)
                    param.copy_(torch.clamp(param, low, high))

        after_step = None if config.finetune.ft_use_lora else clamp_weight
        training["linf"] = {
            "bound": config.finetune.meft_linf,
            "layer": config.finetune.meft_layer,
            "projection": "at merge (LoRA)" if config.finetune.ft_use_lora else "every step",
        }
    training["nll_before"] = mean_nll(model, examples, pad, mixed_precision=config.finetune.ft_mixed_precision)
    desc = f"{config.method} (steps)" if progress else None
    training.update(fit(model, names, config, examples, nll_loss(sign), guard, desc, pad_id=pad, after_step=after_step))
    if config.method == "me-ft" and config.finetune.ft_use_lora:
        clamp_weight()
    training["nll_after"] = mean_nll(model, examples, pad, mixed_precision=config.finetune.ft_mixed_precision)


def _woh_method(model, adapter, tokenizer, requests, config, names, guard, training, pad, progress):
    """Who's-Harry-Potter: reinforce a copy on the facts (+NLL of the whole sequence), then move the
    model's answer-position logits toward the generic logits of (unwashed model, reinforced copy)."""
    reinforced = copy.deepcopy(model)
    sequence = build_examples(tokenizer, requests, "sequence")
    log_reinforce = fit(
        reinforced,
        names,
        config,
        sequence,
        nll_loss(1.0),
        None,
        "woh reinforce (steps)" if progress else None,
        pad_id=pad,
        lr=config.finetune.woh_reinforce_lr,
        epochs=config.finetune.woh_reinforce_epochs,
    )
    reinforced.eval().requires_grad_(False)
    training["reinforce"] = {
        "lr": config.finetune.woh_reinforce_lr,
        "epochs": config.finetune.woh_reinforce_epochs,
        **log_reinforce,
    }

    answers = build_examples(tokenizer, requests, "answer")
    training["alpha"] = config.finetune.woh_alpha
    training["nll_before"] = mean_nll(model, answers, pad, mixed_precision=config.finetune.ft_mixed_precision)
    training["reinforced_nll"] = mean_nll(reinforced, answers, pad, mixed_precision=config.finetune.ft_mixed_precision)
    desc = "woh student (steps)" if progress else None
    if config.finetune.ft_use_lora:  # the unwashed model = the student with its adapters disabled
        wrapper: dict = {}

        def base_logits(batch):
            with wrapper["peft"].disable_adapter():
                return model(**batch.model_inputs, use_cache=False).logits

        out = fit(
            model,
            names,
            config,
            answers,
            woh_loss(base_logits, reinforced, config.finetune.woh_alpha),
            guard,
            desc,
            pad_id=pad,
            on_wrap=lambda wrapped: wrapper.update(peft=wrapped),
        )
    else:  # a frozen copy of the unwashed model
        base = copy.deepcopy(model).eval().requires_grad_(False)
        loss = woh_loss(
            lambda batch: base(**batch.model_inputs, use_cache=False).logits, reinforced, config.finetune.woh_alpha
        )
        out = fit(model, names, config, answers, loss, guard, desc, pad_id=pad)
        del base
    del reinforced
    training.update(out)
    training["nll_after"] = mean_nll(model, answers, pad, mixed_precision=config.finetune.ft_mixed_precision)


#: method → its training (the part of a baseline between the checks)
RUNNERS = {"ft": _nll_method, "me-ft": _nll_method, "ft-ul": _nll_method, "seul": _nll_method, "woh": _woh_method}
