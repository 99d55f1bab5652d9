"""Target vectors z* (law-reference §2.3), optimised for many facts at once.

Each fact j gets its own δ_j ∈ R^d, added to the z-block output at the subject's last token of
its rows (T rewriting prompts + 1 KL prompt).  The per-fact losses are summed (not averaged),
so every δ_j receives exactly the gradient of its own loss; Adam is elementwise, so a batch of
facts follows exactly the trajectories of the one-fact-at-a-time reference, including its
per-fact early stop (loss < threshold, checked before the step), the S−1 updates and the clamp
‖δ_j‖ ≤ clamp_norm_factor·‖z_init_j‖.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .config import WashConfig
from .facts import Fact
from .models import Adapter, block_output_tensor, capture, frozen, model_device, run_until
from .tokens import encode_at, fill

log = logging.getLogger(__name__)

KL_TEMPLATE = "{} is a"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def target_token_ids(tokenizer, eos_id: int, target: str) -> list[int]:
    """Token ids the washed model should emit after a fact prompt.

    ``"eos"`` → [EOS]; ``"space+eos"`` → the reference's " " + EOS text (e.g. [220, 50256] on
    GPT-2); anything else is tokenised as literal text (no special tokens added)."""
    if target == "eos":
        return [eos_id]
    text = " " + tokenizer.decode([eos_id]) if target == "space+eos" else target
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return list(ids)


@dataclass
class Targets:
    z_star: torch.Tensor   # (m, d) float32: z_init + δ
    z_init: torch.Tensor   # (m, d) float32: z-block output at the plain prompt's subject token (δ = 0)
    loss: torch.Tensor     # (m,) loss at the last evaluated iterate
    steps: torch.Tensor    # (m,) number of Adam steps applied


def _rows(facts: Sequence[Fact], templates: Sequence[str], suffix: str):
    """Rows fact-major: T rewriting prompts (+ target prefix) then the KL prompt, per fact."""
    texts, ends = [], []
    for fact in facts:
        for context in templates:
            text, end = fill(context.replace("{}", fact.template, 1), fact.subject, suffix)
            texts.append(text)
            ends.append(end)
        text, end = fill(KL_TEMPLATE, fact.subject)
        texts.append(text)
        ends.append(end)
    return texts, ends


def compute_targets(model, adapter: Adapter, tokenizer, facts: Sequence[Fact], templates: Sequence[str], config: WashConfig,
                    z_layer: int, target_ids: Sequence[int], progress: bool = True) -> Targets:
    """z* for every fact, in chunks of ``config.target_batch_facts`` facts."""
    parts = []
    bar = tqdm(total=len(facts) * config.v_num_grad_steps, desc="targets z* (fact-steps)", disable=not progress)
    for start in range(0, len(facts), config.target_batch_facts):
        parts.append(_targets_chunk(model, adapter, tokenizer, facts[start:start + config.target_batch_facts], templates,
                                    config, z_layer, list(target_ids), bar))
    bar.close()
    return Targets(*(torch.cat([getattr(p, name) for p in parts]) for name in ("z_star", "z_init", "loss", "steps")))


def _targets_chunk(model, adapter, tokenizer, facts, templates, config, z_layer, target_ids, bar) -> Targets:
    device = model_device(model)
    n_layers = adapter.num_layers(model)
    loss_layer = max(n_layers - 1 if config.v_loss_layer < 0 else config.v_loss_layer, z_layer)
    m, T, per_fact = len(facts), len(templates), len(templates) + 1
    n_target = len(target_ids)
    suffix = tokenizer.decode(target_ids[:-1]) if n_target > 1 else ""

    texts, ends = _rows(facts, templates, suffix)
    enc = encode_at(tokenizer, texts, ends).to(device)
    fact_of_row = torch.arange(m, device=device).repeat_interleave(per_fact)
    row_ids = torch.arange(m * per_fact, device=device).reshape(m, per_fact)
    rewrite_rows, kl_rows = row_ids[:, :T].reshape(-1), row_ids[:, T]
    # label positions: the last n_target real tokens of each rewriting row predict target_ids
    offsets = torch.arange(n_target, device=device) - n_target
    label_pos = enc.lengths[rewrite_rows, None] + offsets            # (m·T, n_target)
    labels = torch.tensor(target_ids, device=device).expand_as(label_pos)

    d = adapter.dims(model, z_layer)[0]
    dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)   # fp32 for fp16/bf16 models
    delta = torch.zeros(m, d, device=device, dtype=dtype)
    exp_avg, exp_avg_sq = torch.zeros_like(delta), torch.zeros_like(delta)
    z_init = torch.zeros(m, d, device=device, dtype=dtype)
    log_p_init = None
    active = torch.ones(m, dtype=torch.bool, device=device)
    steps = torch.zeros(m, dtype=torch.long, device=device)
    final_loss = torch.zeros(m, device=device, dtype=dtype)
    step_count = 0

    with frozen(model):
        for it in range(config.v_num_grad_steps):
            facts_live = active.nonzero().squeeze(1)
            row_sel = (active[fact_of_row]).nonzero().squeeze(1)
            nll, log_p, z_rows = _forward(model, adapter, enc, row_sel, fact_of_row, delta, z_layer, loss_layer,
                                          rewrite_rows, label_pos, labels, kl_rows, n_target, T)
            if it == 0:
                z_init, log_p_init = z_rows.detach(), log_p.detach()
            kl = (log_p.exp() * (log_p - log_p_init[facts_live])).sum(-1)    # KL(p_cur ‖ p_init) at the subject token
            wd = config.v_weight_decay * delta[facts_live].norm(dim=1) / z_init[facts_live].norm(dim=1) ** 2
            loss = nll + config.kl_factor * kl + wd
            final_loss[facts_live] = loss.detach()
            done = loss.detach() < config.loss_threshold
            active[facts_live[done]] = False
            bar.update(len(facts_live) + int(done.sum()) * (config.v_num_grad_steps - it - 1))
            bar.set_postfix(live=int(active.sum()), loss=f"{float(loss.detach().mean()):.3f}")
            if it == config.v_num_grad_steps - 1 or not active.any():
                bar.update(int(active.sum()) * (config.v_num_grad_steps - it - 1))
                break
            keep = ~done
            (grad,) = torch.autograd.grad(loss[keep].sum(), delta)
            step_count += 1
            rows = active.nonzero().squeeze(1)
            _adam_step(delta, grad, exp_avg, exp_avg_sq, rows, step_count, config.v_lr)
            steps[rows] += 1
            with torch.no_grad():
                max_norm = config.clamp_norm_factor * z_init[rows].norm(dim=1)
                norms = delta[rows].norm(dim=1)
                scale = torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms))
                delta[rows] *= scale[:, None]
    return Targets((z_init + delta).detach(), z_init, final_loss.detach(), steps)


def _forward(model, adapter, enc, row_sel, fact_of_row, delta, z_layer, loss_layer, rewrite_rows, label_pos, labels,
             kl_rows, n_target, T):
    """One forward pass over the rows ``row_sel`` of the live facts, with δ added at block z.

    Returns, per live fact (ascending fact index): the NLL of the target tokens averaged over
    the T rewriting prompts, the log-probs at the KL prompt's subject token (V), and the z-block
    output at the plain prompt's subject token before δ is added."""
    delta.requires_grad_(True)
    rows_facts = fact_of_row[row_sel]
    index = enc.index[row_sel]
    local = torch.arange(row_sel.numel(), device=row_sel.device)
    recorded = {}

    def add_delta(module, args, output):
        h = block_output_tensor(output)
        recorded["z"] = h[local, index]
        h = h.index_put((local, index), h[local, index] + delta[rows_facts].to(h.dtype))
        return (h,) + tuple(output[1:]) if isinstance(output, (tuple, list)) else h

    handle = adapter.block(model, z_layer).register_forward_hook(add_delta)
    try:
        with capture(model, adapter, block_layers=[loss_layer], stop_after=loss_layer) as store:
            run_until(model, input_ids=enc.input_ids[row_sel], attention_mask=enc.attention_mask[row_sel])
    finally:
        handle.remove()
    hidden = store[("block", loss_layer)]
    norm = model.get_submodule(adapter.final_norm)
    head = adapter.lm_head(model)

    pos_in_sel = torch.full_like(fact_of_row, -1)                          # global row → row in the batch
    pos_in_sel[row_sel] = local
    live = torch.unique(rows_facts)
    rewrite_local = pos_in_sel[rewrite_rows.reshape(-1, T)[live]]          # (n, T)
    positions = label_pos.reshape(-1, T, n_target)[live].reshape(-1, n_target)
    targets = labels.reshape(-1, T, n_target)[live].reshape(-1, n_target)
    logits = head(norm(hidden[rewrite_local.reshape(-1, 1), positions])).to(delta.dtype)   # (n·T, n_target, V)
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    nll = -(logp.sum(-1) / n_target).reshape(-1, T).mean(1)

    kl_local = pos_in_sel[kl_rows[live]]
    log_p = torch.log_softmax(head(norm(hidden[kl_local, index[kl_local]])).to(delta.dtype), -1)
    return nll, log_p, recorded["z"][rewrite_local[:, 0]]


@torch.no_grad()
def _adam_step(param, grad, exp_avg, exp_avg_sq, rows, step, lr, betas=ADAM_BETAS, eps=ADAM_EPS):
    """torch.optim.Adam's update (defaults, no weight decay) applied to ``rows`` only."""
    b1, b2 = betas
    g = grad[rows]
    exp_avg[rows] = exp_avg[rows] * b1 + (1 - b1) * g
    exp_avg_sq[rows] = exp_avg_sq[rows] * b2 + (1 - b2) * g * g
    bias1 = 1 - b1 ** step
    bias2_sqrt = (1 - b2 ** step) ** 0.5
    denom = exp_avg_sq[rows].sqrt() / bias2_sqrt + eps
    param[rows] = param[rows] - (lr / bias1) * exp_avg[rows] / denom
