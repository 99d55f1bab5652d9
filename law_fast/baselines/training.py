"""Training for the fine-tuning baselines (``ft``, ``me-ft``, ``ft-ul``, ``seul``, ``woh``;
the runners are in :mod:`law_fast.baselines.methods`): examples, losses, the loop, the
perplexity guard, LoRA.

The LaW paper compares against these (law-reference §8; docs/baselines.md).  Each builds one
training example per fact and trains the model in place with AdamW:

========  ==========================================  ==============================  =======
method    example (token ids)                         loss on the labelled tokens     sign
========  ==========================================  ==============================  =======
ft        prompt + EOS target                         NLL of the EOS target            descend
me-ft     prompt + EOS target; one block's MLP        NLL of the EOS target, weight    descend
          down-projection only                        change clamped to ±meft_linf
ft-ul     prompt + " " + answer                       NLL of every token after the     ascend
                                                      first (Knowledge Unlearning)
seul      prompt + " " + answer                       NLL of this row's answer span    ascend
woh       prompt + " " + answer                       MSE(ℓ, ℓ_base − α·ReLU(ℓ_R −     descend
                                                      ℓ_base)) at the answer positions
========  ==========================================  ==============================  =======

Fixes of the reference's bugs: FT's EOS target is a label (the reference's collator masks every
token equal to pad = EOS, so it never trains the EOS); SeUL's span is each row's own answer
length (the reference uses the first row's for the whole batch); WOH computes its targets batch by
batch (the reference stores full-vocabulary logits of the whole set, twice).

Every method runs with full fine-tuning or LoRA (``ft_use_lora``; ``peft`` is optional and
imported only then; the adapters are merged at the end so the result is a plain HF model), is
deterministic for a given ``seed`` (a torch.Generator shuffles, the global RNG is forked and
seeded for LoRA init and dropout), uses bf16 autocast on CUDA and fp32 elsewhere, and is watched
by a perplexity guard that stops training when the perplexity of held-out text exceeds
``guard_ppl_ratio`` × its value before training.  ``WashResult.original`` holds every parameter
the method may change, so :meth:`WashResult.revert` is exact; on any error the model is restored.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import WashConfig
from ..corpus import resolve
from ..facts import Fact
from ..hf.adapters import get_adapter, model_device
from ..hf.compat import at_least_fp32, pad_id
from ..hf.hooks import eval_mode, saved_attributes
from ..hf.tokens import answer_ids

log = logging.getLogger(__name__)

IGNORE = -100  # label of a token that is not trained (HF convention)
ASCENT_METHODS = ("ft-ul", "seul")
# attention projections LoRA adapts by default (the reference's q_proj/v_proj, per family)
DEFAULT_LORA_TARGETS = {"gpt2": ("c_attn",), "gpt_neox": ("query_key_value",)}
DEFAULT_LORA_TARGETS_OTHER = ("q_proj", "v_proj")


# ------------------------------------------------------------------------------------------
# Examples and batches
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """One training sequence: ``input_ids`` (list of ints) and ``labelled`` (same length):
    True where the token is a training target, predicted from the position before it."""

    input_ids: tuple[int, ...]
    labelled: tuple[bool, ...]


@dataclass
class Batch:
    """A right-padded batch.  input_ids, attention_mask: (B, T) int64; labels: (B, T) int64,
    the token id where it is trained and ``IGNORE`` elsewhere (token t is predicted by the logits at t−1)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def build_examples(tokenizer, facts: Sequence[Fact], kind: str, target_ids: Sequence[int] = ()) -> list[Example]:
    """One example per fact.  The prompt is ``fact.prompt.strip()`` tokenised with the tokenizer's
    own special tokens (as the known-fact check sees it); the continuation is appended as ids.

    kind = ``"target"``:   prompt + ``target_ids`` (e.g. [EOS]); the target ids are labelled (ft, me-ft);
           ``"sequence"``: prompt + " " + answer; every token after the first is labelled (ft-ul, the WOH reinforcement);
           ``"answer"``:   prompt + " " + answer; the answer tokens are labelled (seul, woh).
    """
    if kind not in ("target", "sequence", "answer"):
        raise ValueError(f"kind must be 'target', 'sequence' or 'answer', got {kind!r}")
    if kind == "target" and not target_ids:
        raise ValueError("kind='target' needs target_ids")
    out = []
    for fact in facts:
        prompt = list(tokenizer(fact.prompt.strip())["input_ids"])
        if kind == "target":
            tail = list(target_ids)
        else:
            tail = answer_ids(tokenizer, fact.prompt, fact.answer)
        if not prompt or not tail:
            raise ValueError(f"fact {fact.case_id!r}: the prompt or the answer tokenises to nothing")
        if kind == "sequence":
            labelled = [False] + [True] * (len(prompt) + len(tail) - 1)
        else:
            labelled = [False] * len(prompt) + [True] * len(tail)
        out.append(Example(tuple(prompt + tail), tuple(labelled)))
    return out


def collate(examples: Sequence[Example], pad_id: int, device=None) -> Batch:
    """Right-pad ``examples`` into a :class:`Batch` (pad positions are masked and never labelled,
    whatever the pad id is: labels come from ``Example.labelled``, not from comparing ids with pad)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.where(torch.tensor(e.labelled), ids[row, :n], IGNORE)
    return Batch(ids.to(device), mask.to(device), labels.to(device))


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of −log p(label), number of labelled tokens), in float32 (float64 for float64 logits).

    logits: (B, T, V) any float dtype; labels: (B, T) int64 with ``IGNORE`` for untrained tokens.
    The label at t is scored with the logits at t−1."""
    target = labels[:, 1:]
    keep = target != IGNORE
    picked = at_least_fp32(logits[:, :-1][keep])  # (n, V)
    nll = F.cross_entropy(picked, target[keep], reduction="sum")
    return nll, keep.sum()


def answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logits (n, V) that predict the labelled tokens, in row-major order."""
    return logits[:, :-1][labels[:, 1:] != IGNORE]


def generic_logits(base: torch.Tensor, reinforced: torch.Tensor, alpha: float) -> torch.Tensor:
    """Who's-Harry-Potter generic logits v = ℓ_base − α·ReLU(ℓ_reinforced − ℓ_base) (same shape)."""
    return base - alpha * torch.relu(reinforced - base)


# ------------------------------------------------------------------------------------------
# Precision, determinism, perplexity guard
# ------------------------------------------------------------------------------------------
def _autocast(model, enabled: bool):
    """bf16 autocast on a CUDA device that supports it; nothing (fp32) otherwise."""
    device = model_device(model)
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision(model, enabled: bool) -> str:
    device = model_device(model)
    return "bf16-autocast" if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


@contextlib.contextmanager
def seeded(model, seed: int):
    """Fork the global RNG (CPU and the model's CUDA device) and seed it; restored afterwards."""
    device = model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class PerplexityGuard:
    """Stops training when the perplexity of held-out texts exceeds ``ratio`` × its initial value.

    ``texts`` are tokenised once (truncated to ``max_length`` tokens); every token after the first
    of each text is scored.  ``check(step)`` returns True when training must stop.  ``report``
    is JSON-able: the bound, every check, and where it stopped."""

    def __init__(
        self, model, tokenizer, texts: Sequence[str], ratio: float, every: int, max_length: int, mixed_precision: bool
    ):
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.examples = [
            Example(tuple(ids), (False,) + (True,) * (len(ids) - 1)) for ids in enc["input_ids"] if len(ids) > 1
        ]
        if not self.examples:
            raise ValueError("the perplexity guard's held-out texts are all shorter than 2 tokens")
        self.pad_id = pad_id(tokenizer)
        self.model, self.every, self.ratio, self.mixed_precision = model, every, ratio, mixed_precision
        self.initial = self.perplexity()
        self.report: dict = {
            "ratio": ratio,
            "initial_ppl": self.initial,
            "bound_ppl": ratio * self.initial,
            "n_texts": len(self.examples),
            "n_tokens": sum(sum(e.labelled) for e in self.examples),
            "every_steps": every,
            "checks": [],
            "stopped": False,
        }

    def perplexity(self) -> float:
        """exp(mean NLL per token) of the held-out texts (no grad, eval mode, 4 texts per forward pass)."""
        return math.exp(
            mean_nll(self.model, self.examples, self.pad_id, batch_size=4, mixed_precision=self.mixed_precision)
        )

    def check(self, step: int, force: bool = False) -> bool:
        if not force and step % self.every:
            return False
        ppl = self.perplexity()
        self.report["checks"].append({"step": step, "ppl": ppl})
        self.report["final_ppl"] = ppl
        if not ppl <= self.ratio * self.initial:  # also catches NaN
            self.report.update(stopped=True, stopped_at_step=step)
            log.warning(
                "perplexity guard: held-out perplexity %.4g > %.3g × %.4g after step %d; training stopped "
                "(set guard_ppl_ratio=None to disable)",
                ppl,
                self.ratio,
                self.initial,
                step,
            )
            return True
        return False


def guard_texts(model, tokenizer, corpus, config: WashConfig) -> list[str]:
    """``guard_texts`` held-out documents: from ``corpus`` (path, list of texts or Corpus), else
    ``config.stats.corpus``, else the embedded default corpus (text sampled from the unwashed model)."""
    ft = config.finetune
    source = corpus if corpus is not None else config.stats.corpus
    corp = resolve(
        source,
        model,
        tokenizer,
        n_samples=ft.guard_texts,
        seed=config.seed,
        default_texts=ft.guard_texts,
        default_tokens=ft.guard_max_length,
    )
    return list(corp.texts)[: ft.guard_texts]


# ------------------------------------------------------------------------------------------
# LoRA (optional dependency)
# ------------------------------------------------------------------------------------------
def _import_peft():
    try:
        import peft
    except ImportError:
        raise ModuleNotFoundError(
            "ft_use_lora=True needs the `peft` package: pip install peft (or pip install 'law-fast[lora]')"
        ) from None
    return peft


def lora_module_names(model, config: WashConfig) -> list[str]:
    """Full names of the modules LoRA adapts: ``config.finetune.ft_lora_targets`` (suffixes; default: the
    family's attention q/v projections), or for me-ft the down-projection of ``meft_layer``."""
    adapter = get_adapter(model)
    if config.method == "me-ft":
        return [f"{adapter.blocks}.{config.finetune.meft_layer}.{adapter.down_proj}"]
    suffixes = config.finetune.ft_lora_targets or DEFAULT_LORA_TARGETS.get(adapter.family, DEFAULT_LORA_TARGETS_OTHER)
    names = [
        name
        for name, module in model.named_modules()
        if hasattr(module, "weight") and any(name == s or name.endswith("." + s) for s in suffixes)
    ]
    if not names:
        raise ValueError(f"ft_lora_targets {list(suffixes)} match no module with a weight in {type(model).__name__}")
    return names


def _inject_lora(model, names: list[str], config: WashConfig):
    """Wrap ``model`` in place with LoRA adapters on ``names``; returns the PeftModel."""
    peft = _import_peft()
    lora = peft.LoraConfig(
        r=config.finetune.ft_lora_rank,
        lora_alpha=config.finetune.ft_lora_alpha,
        lora_dropout=config.finetune.ft_lora_dropout,
        target_modules=names,
        fan_in_fan_out=get_adapter(model).transposed,
        bias="none",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        wrapped = peft.get_peft_model(model, lora)
    for name, module in model.named_modules():  # LoRA dropout follows its own flag, not ft_dropout
        if name.endswith("lora_dropout"):
            module.train(config.finetune.ft_lora_dropout > 0)
    return wrapped


# ------------------------------------------------------------------------------------------
# Training loop
# ------------------------------------------------------------------------------------------
LossFn = Callable[[torch.nn.Module, Batch], "tuple[torch.Tensor, dict[str, float]]"]


def train(
    model,
    examples: Sequence[Example],
    loss_fn: LossFn,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    pad_id: int,
    weight_decay: float = 0.0,
    max_steps: int | None = None,
    after_step: Callable[[], None] | None = None,
    guard: PerplexityGuard | None = None,
    mixed_precision: bool = True,
    desc: str | None = None,
) -> dict:
    """AdamW on the parameters of ``model`` that require grad; returns a JSON-able log.

    ``loss_fn(model, batch) -> (loss, metrics)`` is minimised; ``metrics`` (floats) are averaged
    per epoch.  Batches are drawn in a torch.Generator(seed) permutation per epoch when
    ``shuffle``.  ``after_step()`` runs after every optimizer step (e.g. a projection);
    ``guard.check`` may stop training."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    device = model_device(model)
    n_batches = math.ceil(len(examples) / batch_size)
    total = epochs * n_batches if max_steps is None else min(max_steps, epochs * n_batches)
    log_epochs: list[dict] = []
    step, stop = 0, False
    bar = tqdm(total=total, desc=desc, disable=desc is None, leave=False)
    for epoch in range(epochs):
        order = torch.randperm(len(examples), generator=generator).tolist() if shuffle else list(range(len(examples)))
        sums: dict[str, float] = {}
        count = 0
        for start in range(0, len(order), batch_size):
            if step >= total:
                break
            batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id, device)
            with _autocast(model, mixed_precision):
                loss, metrics = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            step += 1
            count += 1
            for key, value in {"loss": float(loss.detach()), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
            if guard is not None and guard.check(step, force=step == total):
                stop = True
                break
        if count:
            log_epochs.append({"epoch": epoch + 1, "steps": count, **{k: v / count for k, v in sums.items()}})
        if stop or step >= total:
            break
    bar.close()
    optimizer.zero_grad(set_to_none=True)
    return {"steps": step, "planned_steps": total, "epochs": log_epochs, "stopped_by_guard": stop}


def nll_loss(sign: float) -> LossFn:
    """sign · (mean NLL of the labelled tokens of the batch); sign −1 is gradient ascent."""

    def loss_fn(model, batch):
        nll, count = token_nll(model(**batch.model_inputs, use_cache=False).logits, batch.labels)
        mean = nll / count.clamp(min=1)
        return sign * mean, {"nll": float(mean.detach())}

    return loss_fn


def woh_loss(base: Callable[[Batch], torch.Tensor], reinforced: torch.nn.Module, alpha: float) -> LossFn:
    """MSE between the student's logits and the generic logits at the labelled (answer) positions,
    computed batch by batch (only (answer tokens of the batch) × V values exist at a time).
    ``base(batch)`` returns the unwashed model's full logits for the batch."""

    def loss_fn(model, batch):
        with torch.no_grad():
            target = generic_logits(
                at_least_fp32(answer_logits(base(batch), batch.labels)),
                at_least_fp32(answer_logits(reinforced(**batch.model_inputs, use_cache=False).logits, batch.labels)),
                alpha,
            )
        logits = model(**batch.model_inputs, use_cache=False).logits
        picked = at_least_fp32(answer_logits(logits, batch.labels))
        nll = F.cross_entropy(picked.detach(), batch.labels[:, 1:][batch.labels[:, 1:] != IGNORE])
        return F.mse_loss(picked, target), {"nll": float(nll)}

    return loss_fn


def mean_nll(
    model, examples: Sequence[Example], pad_id: int, batch_size: int = 32, mixed_precision: bool = False
) -> float:
    """Mean NLL (per labelled token) of ``examples`` under the model, no grad."""
    total, count = 0.0, 0
    with eval_mode(model), torch.no_grad(), _autocast(model, mixed_precision):
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id, model_device(model))
            nll, n = token_nll(model(**batch.model_inputs, use_cache=False).logits, batch.labels)
            total, count = total + float(nll), count + int(n)
    return total / max(count, 1)


def _train_kwargs(config: WashConfig, pad_id: int, lr: float | None = None, epochs: int | None = None) -> dict:
    return dict(
        lr=lr or config.finetune.ft_lr,
        epochs=epochs or config.finetune.ft_epochs,
        batch_size=config.finetune.ft_batch_size,
        shuffle=config.finetune.ft_shuffle,
        seed=config.seed,
        pad_id=pad_id,
        weight_decay=config.finetune.ft_weight_decay,
        max_steps=config.finetune.ft_max_steps,
        mixed_precision=config.finetune.ft_mixed_precision,
    )


@contextlib.contextmanager
def _training_state(model, trainable: set[str] | None, dropout: bool):
    """Set requires_grad to ``name in trainable`` (None: leave) and train/eval mode; restored afterwards."""
    with (
        saved_attributes(list(model.parameters()), "requires_grad"),
        saved_attributes(list(model.modules()), "training"),
    ):
        if trainable is not None:
            for name, p in model.named_parameters():
                p.requires_grad_(name in trainable)
        model.train(dropout)
        yield


def fit(
    model,
    names: list[str],
    config: WashConfig,
    examples,
    loss_fn,
    guard,
    desc,
    *,
    pad_id: int,
    lr=None,
    epochs=None,
    after_step=None,
    on_wrap=None,
) -> dict:
    """Train ``model`` (full: the parameters ``names``; LoRA: adapters on the modules ``names``,
    merged into the weights at the end; ``on_wrap(peft_model)`` sees the wrapper first); returns the training log."""
    if not config.finetune.ft_use_lora:
        with _training_state(model, set(names), config.finetune.ft_dropout):
            return train(
                model,
                examples,
                loss_fn,
                after_step=after_step,
                guard=guard,
                desc=desc,
                **_train_kwargs(config, pad_id, lr, epochs),
            )
    with _training_state(model, None, config.finetune.ft_dropout):
        wrapped = _inject_lora(model, names, config)
        try:
            if on_wrap is not None:
                on_wrap(wrapped)
            out = train(model, examples, loss_fn, guard=guard, desc=desc, **_train_kwargs(config, pad_id, lr, epochs))
        except BaseException:
            wrapped.unload()  # drop the adapters unmerged; the caller restores the weights
            raise
        wrapped.merge_and_unload()
    return out
