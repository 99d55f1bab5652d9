"""Hyper-parameters of a wash: one frozen dataclass, JSON round-trip, presets, reference importer."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

BASELINE_METHODS = ("ft", "me-ft", "ft-ul", "seul", "woh")   # fine-tuning baselines (law_fast.baselines)
METHODS = ("law", "memit") + BASELINE_METHODS
LAMBDA_RULES = ("disruption", "fit", "reference", "fixed")


@dataclass(frozen=True)
class WashConfig:
    """Everything that decides a wash.  Names follow the reference (law-reference §9) where one exists.

    Targets z* (§2.3): ``v_*``, ``clamp_norm_factor``, ``kl_factor``, ``loss_threshold``.
    MEMIT init (§4): ``mom2_update_weight`` (initial λ) and the λ rule:
      * ``"disruption"`` (default): the smallest λ whose update changes this layer's outputs on
        the corpus by at most a budget in relative mean square, tr(ΔCΔᵀ)/tr(WCWᵀ) ≤ budget, with
        budget = min(``disruption_per_fact``·m, ``disruption_budget``) for m facts (or
        ``disruption_budget`` alone when ``disruption_per_fact`` is None): the disruption an
        edit needs grows with the number of facts it must fit (benchmarks/bench_budget.py).
      * ``"fit"``: the largest λ (least disruption) whose update reaches the targets at the keys
        to within ``fit_target`` in relative norm, ‖KΔᵀ − R‖/‖R‖ ≤ fit_target.
      * ``"reference"``: the authors' search: λ += ``lambda_step`` while ‖Δ‖ > ``norm_bounds[1]``·‖W‖,
        λ *= ``decay_factor`` while ‖Δ‖ < ``norm_bounds[0]``·‖W‖ (capped at ``max_lambda_trials``).
      * ``"fixed"``: λ = ``mom2_update_weight``.
    LaW (§5): Adam with ``learning_rate`` for ``total_iters`` steps, β = ``beta_ratio``·ρ(Δ₀),
    lr ← ``lr_after_hitting_boundary`` on first contact.
    Elimination (§6): ``prune_requests``, ``keep_original_requests``.
    Fine-tuning baselines (``method`` in BASELINE_METHODS; §8, docs/baselines.md): ``ft_*``
    (optimiser, LoRA, precision), ``meft_*``, ``woh_*`` and the perplexity guard ``guard_*``;
    see :meth:`baseline_preset` and :meth:`resolved`.
    """

    layers: tuple[int, ...]
    method: str = "law"
    target: str = "eos"                 # "eos": the EOS token alone; "space+eos": " " + EOS as the reference; else literal text
    only_known: bool = True             # wash only facts the model produces before the wash
    seed: int = 0
    # context templates (§2.1)
    template_length: int = 10
    # targets z* (§2.3)
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_loss_layer: int = -1              # -1: the last block
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    loss_threshold: float = 0.05
    target_batch_tokens: int = 16384    # aligned prompt tokens per z* chunk (bounds memory; facts sorted by prefix length)
    # covariance statistics (§3)
    corpus: str | None = None           # None: the embedded default corpus (text sampled from the model, seeded)
    mom2_n_samples: int = 100_000       # documents sampled from the corpus
    stats_max_length: int = 1024
    stats_dtype: str = "float64"        # accumulator dtype
    stats_batch_tokens: int = 4096
    # MEMIT initialisation (§4)
    mom2_update_weight: float = 20_000.0
    lambda_rule: str = "disruption"
    disruption_per_fact: float | None = 6.25e-5   # measured trade-off on SmolLM2, 16 and 64 facts (README)
    disruption_budget: float = 0.02    # the cap (reached at 320 facts), or the whole budget without per-fact scaling
    fit_target: float = 0.5            # lambda_rule="fit"
    norm_bounds: tuple[float, float] = (1 / 3, 3 / 4)
    lambda_step: float = 100_000.0
    decay_factor: float = 0.75
    max_lambda_trials: int = 200
    # LaW (§5)
    learning_rate: float = 1e-7
    lr_after_hitting_boundary: float | None = None
    total_iters: int = 1000
    beta_ratio: float = 1.1
    law_dtype: str = "float64"
    # successive elimination (§6)
    prune_requests: bool = True
    keep_original_requests: bool = True
    check_max_new_tokens: int = 10
    check_batch_size: int = 32
    key_batch_size: int = 16          # facts per keys forward, all of their template sentences in it (GPU: raise it)
    # fine-tuning baselines (ft, me-ft, ft-ul, seul, woh; law-reference §8, docs/baselines.md).
    # Fields left at None take the method's default from BASELINE_DEFAULTS (see :meth:`resolved`).
    ft_lr: float | None = None
    ft_epochs: int | None = None
    ft_batch_size: int | None = None
    ft_shuffle: bool | None = None
    ft_weight_decay: float = 0.0        # AdamW decoupled weight decay
    ft_max_steps: int | None = None     # cap on optimizer steps (None: epochs × batches)
    ft_dropout: bool = False            # train with the model's own dropout (seeded); default: eval mode, no dropout
    ft_mixed_precision: bool = True     # bf16 autocast on CUDA when supported; fp32 elsewhere
    ft_use_lora: bool = False           # LoRA adapters (needs `peft`), merged into the weights at the end
    ft_lora_rank: int = 8
    ft_lora_alpha: float = 32.0
    ft_lora_dropout: float = 0.0        # seeded when > 0
    ft_lora_targets: tuple[str, ...] = ()   # module-name suffixes; (): the family's attention q/v projections
    meft_layer: int | None = None       # me-ft: the block whose MLP down-projection is trained (None: layers[0])
    meft_linf: float | None = None      # me-ft: |W − W₀| ≤ meft_linf elementwise
    woh_alpha: float | None = None      # woh: v = ℓ_base − α·ReLU(ℓ_reinforced − ℓ_base)
    woh_reinforce_lr: float | None = None
    woh_reinforce_epochs: int | None = None
    guard_ppl_ratio: float | None = 2.0  # stop when held-out perplexity > ratio × its value before training (None: off)
    guard_every: int = 10               # optimizer steps between perplexity checks (and one after the last step)
    guard_texts: int = 8                # held-out documents for the guard
    guard_max_length: int = 128         # tokens per guard document

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "ft_lora_targets", tuple(str(x) for x in self.ft_lora_targets))
        object.__setattr__(self, "norm_bounds", tuple(float(x) for x in self.norm_bounds))
        problems = []
        if not self.layers:
            problems.append("layers is empty")
        if list(self.layers) != sorted(set(self.layers)):
            problems.append(f"layers must be strictly ascending, got {list(self.layers)}")
        if self.method not in METHODS:
            problems.append(f"method must be one of {METHODS}, got {self.method!r}")
        if self.lambda_rule not in LAMBDA_RULES:
            problems.append(f"lambda_rule must be one of {LAMBDA_RULES}, got {self.lambda_rule!r}")
        if self.stats_dtype not in ("float32", "float64") or self.law_dtype not in ("float32", "float64"):
            problems.append("stats_dtype and law_dtype must be 'float32' or 'float64'")
        if not 0 < self.norm_bounds[0] < self.norm_bounds[1]:
            problems.append(f"norm_bounds must satisfy 0 < low < high, got {self.norm_bounds}")
        if not 0 < self.decay_factor < 1:
            problems.append(f"decay_factor must be in (0, 1), got {self.decay_factor}")
        if self.disruption_budget <= 0 or self.mom2_update_weight <= 0:
            problems.append("disruption_budget and mom2_update_weight must be positive")
        if self.disruption_per_fact is not None and self.disruption_per_fact <= 0:
            problems.append(f"disruption_per_fact must be positive or None, got {self.disruption_per_fact}")
        if not 0 < self.fit_target < 1:
            problems.append(f"fit_target must lie in (0, 1), got {self.fit_target}")
        if min(self.v_num_grad_steps, self.total_iters, self.max_lambda_trials, self.target_batch_tokens,
               self.check_batch_size, self.check_max_new_tokens, self.key_batch_size, self.mom2_n_samples) < 1:
            problems.append("step counts, batch sizes and sample counts must be >= 1")
        problems += self._baseline_problems()
        if problems:
            raise ValueError("invalid WashConfig: " + "; ".join(problems))

    def _baseline_problems(self) -> list[str]:
        problems = []
        for name in ("ft_lr", "woh_reinforce_lr", "woh_alpha", "ft_lora_alpha", "meft_linf"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name} must be positive, got {value!r}")
        for name in ("ft_epochs", "ft_batch_size", "ft_max_steps", "woh_reinforce_epochs", "ft_lora_rank", "guard_every",
                     "guard_texts"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if self.guard_max_length < 2:
            problems.append(f"guard_max_length must be >= 2, got {self.guard_max_length}")
        if self.ft_weight_decay < 0:
            problems.append(f"ft_weight_decay must be >= 0, got {self.ft_weight_decay}")
        if not 0 <= self.ft_lora_dropout < 1:
            problems.append(f"ft_lora_dropout must be in [0, 1), got {self.ft_lora_dropout}")
        if self.guard_ppl_ratio is not None and not self.guard_ppl_ratio > 1:
            problems.append(f"guard_ppl_ratio must be > 1 (a ratio to the perplexity before training) or None, got {self.guard_ppl_ratio}")
        if self.meft_layer is not None and self.meft_layer < 0:
            problems.append(f"meft_layer must be >= 0, got {self.meft_layer}")
        return problems

    def resolved(self) -> "WashConfig":
        """This config with the baseline fields left at None filled in from ``BASELINE_DEFAULTS[method]``
        (and ``meft_layer`` from ``layers[0]``); unchanged for "law"/"memit"."""
        if self.method not in BASELINE_METHODS:
            return self
        changes = {k: v for k, v in BASELINE_DEFAULTS[self.method].items() if getattr(self, k) is None}
        if self.meft_layer is None and self.method == "me-ft":
            changes["meft_layer"] = self.layers[0]
        return self.replace(**changes) if changes else self

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["norm_bounds"] = list(self.norm_bounds)
        d["ft_lora_targets"] = list(self.ft_lora_targets)
        return d

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "WashConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown WashConfig field(s) {unknown}; known fields: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> "WashConfig":
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            path = Path(path_or_text)
            try:
                return cls.from_dict(json.loads(path.read_text()))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None
        return cls.from_dict(json.loads(text))

    def disruption_for(self, n_facts: int) -> float:
        """The "disruption" rule's budget for an edit fitting ``n_facts`` facts."""
        if self.disruption_per_fact is None:
            return self.disruption_budget
        return min(self.disruption_per_fact * n_facts, self.disruption_budget)

    def replace(self, **changes) -> "WashConfig":
        return dataclasses.replace(self, **changes)

    # -- presets -------------------------------------------------------------------------
    @classmethod
    def preset(cls, model, **overrides) -> "WashConfig":
        """Hyper-parameters for ``model`` (a HF model or its config).

        GPT2-XL and GPT-J-6B get the reference's settings (law-reference §9, mcf files, with
        ``lambda_rule="disruption"``; use :meth:`from_reference_hparams` for the exact files).
        SmolLM2-135M gets settings tuned here (README).  Other models: five consecutive layers
        starting at 15% depth (fewer for shallow models) and the GPT2-XL solver settings.
        """
        config = getattr(model, "config", model)
        n_layers = int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer"))
        model_type = getattr(config, "model_type", "")
        hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0))
        if model_type == "gpt2" and n_layers == 48 and hidden == 1600:          # gpt2-xl
            base = dict(layers=(13, 14, 15, 16, 17), mom2_update_weight=20_000.0, learning_rate=1e-7)
        elif model_type == "gptj" and n_layers == 28 and hidden == 4096:        # gpt-j-6B
            base = dict(layers=(3, 4, 5, 6, 7, 8), v_num_grad_steps=25, mom2_update_weight=100_000.0,
                        learning_rate=1e-8, lr_after_hitting_boundary=1e-10)
        elif model_type == "llama" and n_layers == 30 and hidden == 576:        # SmolLM2-135M
            # 250 LaW steps at 4× the lr move Δ as far as 1000 steps at lr 1e-6 (Adam steps ≈ lr), 4× cheaper
            base = dict(layers=(4, 5, 6, 7, 8), learning_rate=4e-6, lr_after_hitting_boundary=4e-8, total_iters=250,
                        law_dtype="float32")
        else:
            count = max(1, min(5, n_layers // 4))
            start = min(max(0, round(0.15 * n_layers)), n_layers - count)
            base = dict(layers=tuple(range(start, start + count)))
        base.update(overrides)
        return cls(**base)

    @classmethod
    def baseline_preset(cls, method: str, model, *, paper: bool = False, dataset: str = "mcf", **overrides) -> "WashConfig":
        """Settings for a fine-tuning baseline ``method`` on ``model`` (a HF model or its config).

        ``paper=False``: :meth:`preset` plus ``BASELINE_DEFAULTS[method]`` (sensible for
        SmolLM2-class models, full fine-tuning).  ``paper=True``: the authors' settings
        (law-reference §8) for GPT2-XL and GPT-J-6B; ``dataset`` ("mcf", "zsre" or "wiki") picks
        WOH's α on GPT-J.  ME-FT is not in the reference: its paper settings are ROME/MEMIT's
        constrained FT-L ones.  Every value is written out, so the JSON is self-describing.
        """
        if method not in BASELINE_METHODS:
            raise ValueError(f"method must be one of {BASELINE_METHODS}, got {method!r}")
        if dataset not in ("mcf", "zsre", "wiki"):
            raise ValueError(f"dataset must be 'mcf', 'zsre' or 'wiki', got {dataset!r}")
        fields = dict(BASELINE_DEFAULTS[method])
        if paper:
            name = _reference_model_name(getattr(model, "config", model))
            if name is None:
                raise ValueError("paper settings exist for gpt2-xl and gpt-j-6B only (law-reference §8); "
                                 "use paper=False for other models")
            fields.update(PAPER_BASELINES[name][method])
            if method == "woh" and name == "gpt-j-6B":
                fields["woh_alpha"] = 0.5 if dataset == "wiki" else 5.0
        fields.update(overrides)
        return cls.preset(model, method=method, **fields).resolved()

    @classmethod
    def from_reference_hparams(cls, path: str | os.PathLike, **overrides) -> "WashConfig":
        """Import a reference hparams JSON (``hparams/LAW/*.json`` or ``hparams/MEMIT/*.json``).

        Reproduces the reference choices: λ search with its norm bounds, target " " + EOS.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None
        mapped = {"layers", "v_num_grad_steps", "v_lr", "v_loss_layer", "v_weight_decay", "clamp_norm_factor",
                  "kl_factor", "mom2_update_weight", "learning_rate", "lr_after_hitting_boundary", "total_iters",
                  "beta_ratio", "decay_factor", "prune_requests", "keep_original_requests"}
        ignored = {"fact_token", "rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp",
                   "ln_f_module", "lm_head_module", "mom2_dataset", "mom2_n_samples", "mom2_dtype", "layer_selection",
                   "mom2_adjustment", "noise_scale", "skip_search", "compute_initialization_at_once", "model",
                   "ds_name", "scheduler", "alpha", "beta", "alphas", "betas", "random_initialize",
                   "simply_combine_objective", "expand_prompt", "edit_to"}
        unknown = sorted(set(data) - mapped - ignored)
        if unknown:
            raise ValueError(f"{path}: unknown reference hparams key(s) {unknown}")
        if data.get("fact_token", "subject_last") != "subject_last":
            raise NotImplementedError(f"{path}: fact_token={data['fact_token']!r}; only 'subject_last' is supported")
        for dead in ("random_initialize", "simply_combine_objective"):
            if data.get(dead):
                raise NotImplementedError(f"{path}: {dead}=true is dead/buggy in the reference (law-reference §5.4-5.5) and not supported")
        # the reference dataclass's defaults for absent keys (law-reference §9.3)
        kwargs = dict(total_iters=200, decay_factor=0.8, beta_ratio=1.0, prune_requests=False, keep_original_requests=False)
        kwargs.update({k: data[k] for k in mapped if k in data and data[k] is not None})
        kwargs["prune_requests"] = bool(kwargs["prune_requests"])
        if "mom2_n_samples" in data:
            kwargs["mom2_n_samples"] = int(data["mom2_n_samples"])
        if "mom2_dtype" in data:
            kwargs["stats_dtype"] = "float64" if data["mom2_dtype"] == "float64" else "float32"
        kwargs["lambda_rule"] = "fixed" if data.get("skip_search") else "reference"
        kwargs["target"] = "space+eos"
        kwargs["v_loss_layer"] = -1 if "v_loss_layer" not in data else int(data["v_loss_layer"])
        kwargs.update(overrides)
        return cls(**kwargs)


def _reference_model_name(config) -> str | None:
    """"gpt2-xl" / "gpt-j-6B" when ``config`` is one of the reference's two models, else None."""
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    shape = (getattr(config, "model_type", ""), n_layers, hidden)
    return {("gpt2", 48, 1600): "gpt2-xl", ("gptj", 28, 4096): "gpt-j-6B"}.get(shape)


# Defaults of the baseline fields left at None, per method: full fine-tuning of SmolLM2-class models
# (~100M-1B parameters), sized to wash a few hundred facts on a CPU (measured in docs/baselines.md).
BASELINE_DEFAULTS: dict[str, dict] = {
    "ft": dict(ft_lr=2e-5, ft_epochs=4, ft_batch_size=8, ft_shuffle=True),
    "me-ft": dict(ft_lr=5e-4, ft_epochs=25, ft_batch_size=64, ft_shuffle=False, meft_linf=5e-3),
    "ft-ul": dict(ft_lr=2e-5, ft_epochs=3, ft_batch_size=8, ft_shuffle=True),
    "seul": dict(ft_lr=1e-5, ft_epochs=3, ft_batch_size=8, ft_shuffle=True),
    "woh": dict(ft_lr=5e-5, ft_epochs=3, ft_batch_size=8, ft_shuffle=True, woh_alpha=5.0, woh_reinforce_lr=1e-4,
                woh_reinforce_epochs=3),
}

# The authors' settings (law-reference §8).  Not stated there, so kept at our defaults: dropout
# (off), FT-UL/WOH shuffling (off, the DataLoader default).  ME-FT: ROME/MEMIT's constrained FT-L
# (layer 0, 25 passes, Adam lr 5e-4, batch 64, L∞ 5e-4 on GPT2-XL / 5e-5 on GPT-J).
_PAPER_LORA = dict(ft_use_lora=True, ft_lora_rank=8, ft_lora_alpha=32.0, ft_lora_dropout=0.1,
                   ft_lora_targets=("q_proj", "v_proj"))
PAPER_BASELINES: dict[str, dict[str, dict]] = {
    "gpt2-xl": {
        "ft": dict(ft_lr=1e-5, ft_epochs=8, ft_batch_size=2, ft_shuffle=False),
        "me-ft": dict(meft_layer=0, meft_linf=5e-4, ft_lr=5e-4, ft_epochs=25, ft_batch_size=64, ft_shuffle=False),
        "ft-ul": dict(ft_lr=1e-6, ft_epochs=1, ft_batch_size=2, ft_shuffle=False),
        "seul": dict(ft_lr=1e-6, ft_epochs=3, ft_batch_size=8, ft_shuffle=True, ft_weight_decay=0.01),
        "woh": dict(ft_lr=5e-5, ft_epochs=1, ft_batch_size=2, ft_shuffle=False, woh_alpha=0.5, woh_reinforce_lr=1e-6,
                    woh_reinforce_epochs=1),
    },
    "gpt-j-6B": {
        "ft": dict(_PAPER_LORA, ft_lr=1e-4, ft_epochs=8, ft_batch_size=2, ft_shuffle=False),
        "me-ft": dict(meft_layer=0, meft_linf=5e-5, ft_lr=5e-4, ft_epochs=25, ft_batch_size=64, ft_shuffle=False),
        "ft-ul": dict(_PAPER_LORA, ft_lr=1e-5, ft_epochs=5, ft_batch_size=2, ft_shuffle=False),
        # the reference ignores --use_lora for SeUL: full fine-tuning (torch AdamW, weight decay 0.01)
        "seul": dict(ft_lr=1e-6, ft_epochs=3, ft_batch_size=8, ft_shuffle=True, ft_weight_decay=0.01),
        "woh": dict(_PAPER_LORA, ft_lr=5e-5, ft_epochs=1, ft_batch_size=2, ft_shuffle=False, woh_alpha=5.0,
                    woh_reinforce_lr=1e-6, woh_reinforce_epochs=1),
    },
}
