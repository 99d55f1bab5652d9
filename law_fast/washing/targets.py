"""Target vectors z* (law-reference §2.3), optimised for many facts at once.

Each fact j gets its own δ_j ∈ R^d, added to the z-block output at the subject's last token of
its rows (T rewriting prompts + 1 KL prompt).  The per-fact losses are summed (not averaged),
so every δ_j receives exactly the gradient of its own loss; Adam is elementwise, so a batch of
facts follows exactly the trajectories of the one-fact-at-a-time reference, including its
per-fact early stop (loss < threshold, checked before the step), the S−1 updates and the clamp
‖δ_j‖ ≤ clamp_norm_factor·‖z_init_j‖.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import dist
from ..config import TargetConfig
from ..facts import Fact
from ..hf.adapters import Adapter, model_device, model_fingerprint
from ..hf.compat import cache_inputs, fork_cache, log_probs, new_cache, pad_id
from ..hf.hooks import block_output_tensor, capture, frozen, run_until, skipped_blocks
from ..hf.tokens import answer_ids, fill, tokenize_at
from ..integrity import read_verified, write_atomic

log = logging.getLogger(__name__)

KL_TEMPLATE = "{} is a"
UNLIKELY = "unlikely"  # TargetConfig.target: lower p(answer's first token) instead of raising a target's
ANSWER = "answer"  # TargetConfig.target: raise each fact's own answer text (editing: the answer is the new object)
PER_FACT = (UNLIKELY, ANSWER)  # the targets without shared ids


def answer_token_ids(tokenizer, fact: Fact) -> list[int]:
    """The fact's answer as it follows its prompt (with its leading space; ``hf.tokens.answer_ids``)."""
    try:
        return [int(i) for i in answer_ids(tokenizer, fact.prompt, fact.answer)]
    except ValueError as e:
        raise ValueError(f"fact {fact.case_id}: {e}") from None


def answer_token_id(tokenizer, fact: Fact) -> int:
    """The first token of the fact's answer as it follows the prompt (with its leading space)."""
    return answer_token_ids(tokenizer, fact)[0]


ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def target_token_ids(tokenizer, eos_id: int, target: str) -> list[int]:
    """Token ids the washed model should emit after a fact prompt.

    ``"eos"`` → [EOS]; ``"space+eos"`` → the reference's " " + EOS text (e.g. [220, 50256] on
    GPT-2); anything else is tokenised as literal text (no special tokens added).  ``"unlikely"``
    and ``"answer"`` have no shared ids (each fact's own answer is pushed down, or up): None."""
    if target in PER_FACT:
        return None
    if target == "eos":
        return [eos_id]
    text = " " + tokenizer.decode([eos_id]) if target == "space+eos" else target
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return list(ids)


@dataclass
class Targets:
    z_star: torch.Tensor  # (m, d) float32: z_init + δ
    z_init: torch.Tensor  # (m, d) float32: z-block output at the plain prompt's subject token (δ = 0)
    loss: torch.Tensor  # (m,) loss at the last evaluated iterate
    steps: torch.Tensor  # (m,) number of Adam steps applied


FIELDS = ("z_star", "z_init", "loss", "steps")


def _sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


class TargetStore:
    """z* already computed, on disk (``wash(..., workdir=)``): one file per chunk of facts in
    ``directory/targets-<digest>/``, where the digest covers everything a fact's z* depends on but the
    fact — the model's weights (their sha256), the target settings, the context templates, the z
    layer, the target ids, the prefix cache — and a fact is known by its subject, template and answer.  Every
    file is checked (key, digest, shapes, finiteness) before it is used; an unusable one is reported
    and recomputed, never trusted.  Chunks are written atomically as they finish, so a killed run
    loses at most the chunk it was computing."""

    VERSION = 1

    def __init__(self, directory, model, config: TargetConfig, templates, z_layer: int, target_ids, prefix_cache=True):
        self.key = {
            "kind": "targets",
            "fingerprint": model_fingerprint(model),
            "config": config.to_dict(),
            "templates": list(templates),
            "z_layer": z_layer,
            "target_ids": None if target_ids is None else list(target_ids),
            "prefix_cache": prefix_cache,
            "version": self.VERSION,
        }
        self.directory = Path(directory) / f"targets-{_sha(self.key)[:20]}"
        self.width = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)

    @staticmethod
    def fact_key(fact: Fact) -> str:
        return _sha([fact.subject, fact.template, fact.answer])[:32]

    def load(self) -> dict[str, tuple]:
        """{fact key: (the chunk's (z_star, z_init, loss, steps), the fact's row in them)} of every usable
        chunk file (no per-fact tensors: :meth:`rows` gathers a chunk's)."""
        found: dict[str, tuple] = {}
        for path in sorted(self.directory.glob("chunk-*.pt")):
            try:
                blob = read_verified(path, self.key)
                keys = blob["facts"]
                n = len(keys)
                shapes = {"z_star": (n, self.width), "z_init": (n, self.width), "loss": (n,), "steps": (n,)}
                for name, shape in shapes.items():
                    t = blob[name]
                    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                        raise ValueError(f"{name} has shape {getattr(t, 'shape', None)}, expected {shape}")
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        raise ValueError(f"{name} holds NaN or inf")
            except Exception as e:  # corrupt, truncated or foreign: recompute those facts
                warnings.warn(f"z* checkpoint {path} is unusable ({type(e).__name__}: {e}); recomputing", stacklevel=2)
                continue
            fields = tuple(blob[name] for name in FIELDS)
            for i, k in enumerate(keys):
                found[k] = (fields, i)
        return found

    @staticmethod
    def rows(found: dict[str, tuple], keys: Sequence[str]) -> list[torch.Tensor]:
        """FIELDS of the facts ``keys`` (all in ``found``, from :meth:`load`), stacked in that order."""
        return [torch.stack([found[k][0][f][found[k][1]] for k in keys]) for f in range(len(FIELDS))]

    def save(self, keys: Sequence[str], part: Targets) -> None:
        blob = {"key": json.dumps(self.key, sort_keys=True), "facts": list(keys)}
        blob.update({name: getattr(part, name).detach().cpu() for name in FIELDS})
        write_atomic(self.directory / f"chunk-{_sha(list(keys))[:20]}.pt", blob)


def _rows(facts: Sequence[Fact], templates: Sequence[str], suffixes: Sequence[str]):
    """Rows fact-major: T rewriting prompts (+ the fact's target prefix) then the KL prompt, per fact."""
    texts, ends = [], []
    for fact, suffix in zip(facts, suffixes):
        for context in templates:
            text, end = fill(context.replace("{}", fact.template, 1), fact.subject, suffix)
            texts.append(text)
            ends.append(end)
        text, end = fill(KL_TEMPLATE, fact.subject)
        texts.append(text)
        ends.append(end)
    return texts, ends


def rewriting_rows(tokenizer, facts: Sequence[Fact], templates: Sequence[str], labels: Sequence[Sequence[int]]):
    """(token rows, the subject's last token per row), fact-major: T rewriting rows — the prompt in each
    context template, then the fact's target ids but the last (teacher-forced) — then the KL row.  The
    target ids are appended as ids: decoded to text and tokenised with the prompt again (the reference's
    way) they lose their leading space with SentencePiece-style tokenizers ("…is" + "Par"); with byte-level
    BPE (GPT-2) the two give the same rows."""
    texts, ends = _rows(facts, templates, [""] * len(facts))
    ids, index = tokenize_at(tokenizer, texts, ends)
    per_fact = len(templates) + 1
    for row, tokens in enumerate(ids):
        if row % per_fact < len(templates):
            tokens.extend(labels[row // per_fact][:-1])
    return ids, index


def compute_targets(
    model,
    adapter: Adapter,
    tokenizer,
    facts: Sequence[Fact],
    templates: Sequence[str],
    config: TargetConfig,
    z_layer: int,
    target_ids: Sequence[int] | None,
    progress: bool = True,
    prefix_cache: bool = True,
    workdir=None,
) -> Targets:
    """z* for every fact (in the order of ``facts``), in chunks of at most ``config.target_batch_tokens``
    aligned tokens.  ``prefix_cache=False`` runs every step over the whole prompts (the plain way;
    for tests and benchmarks).  ``workdir``: read and write the chunks there (:class:`TargetStore`);
    the chunks are planned over all of ``facts``, so a resumed run computes what an uninterrupted one
    would, and a chunk whose facts are all on disk is not recomputed."""
    if not facts:
        raise ValueError("compute_targets needs at least one fact")
    if not templates or templates[0] != "{}":
        raise ValueError("templates[0] must be the plain template '{}' (z_init is read at the plain prompt)")
    if config.target in (UNLIKELY, ANSWER):
        if config.target == UNLIKELY:  # each fact's answer token, predicted at the prompt's last token
            labels = [[answer_token_id(tokenizer, f)] for f in facts]
        else:  # each fact's answer text, teacher-forced after the prompt
            labels = [answer_token_ids(tokenizer, f) for f in facts]
    else:
        if target_ids is None:
            raise ValueError(f"target {config.target!r} needs target_ids (target_token_ids)")
        labels = [list(target_ids)] * len(facts)  # one list, shared
    per_fact = len(templates) + 1
    ids, index = rewriting_rows(tokenizer, facts, templates, labels)
    for row, (tokens, i) in enumerate(zip(ids, index)):
        if row % per_fact < len(templates) and len(tokens) - i < len(labels[row // per_fact]):
            fact = facts[row // per_fact]
            raise ValueError(
                f"fact {fact.case_id} ({fact.subject!r}): the subject must end before the last prompt token "
                f"of {tokenizer.decode(list(tokens))!r}"
            )
    # the KL row is read at the subject token only, and causal attention makes that position
    # independent of the tokens after it: its suffix is the subject token alone
    ids = [
        tokens[: i + 1] if row % per_fact == len(templates) else tokens
        for row, (tokens, i) in enumerate(zip(ids, index))
    ]
    bar = tqdm(
        total=len(facts) * config.max_steps,
        desc="targets z* (fact-steps)",
        disable=not progress or not dist.is_main(),
    )
    out: list[torch.Tensor] | None = None  # FIELDS as (m, ...) tensors, filled chunk by chunk: no per-fact objects
    filled = torch.zeros(len(facts), dtype=torch.bool)

    def put(indices: Sequence[int], values: Sequence[torch.Tensor]) -> None:
        nonlocal out
        device = model_device(model)
        if out is None:
            out = [torch.empty((len(facts), *v.shape[1:]), dtype=v.dtype, device=device) for v in values]
        rows = torch.as_tensor(list(indices), dtype=torch.long)
        for whole, value in zip(out, values):
            whole[rows.to(device)] = value.to(device, whole.dtype)
        filled[rows] = True

    store = done = None
    if workdir is not None:
        store = TargetStore(workdir, model, config, templates, z_layer, target_ids, prefix_cache)
        done = store.load()
        keys = [store.fact_key(f) for f in facts]
    chunks = _chunks(
        [ids[j * per_fact : (j + 1) * per_fact] for j in range(len(facts))],
        [index[j * per_fact : (j + 1) * per_fact] for j in range(len(facts))],
        config.target_batch_tokens,
    )
    for chunk in dist.shard(chunks):  # under torchrun each process does every world-th chunk; gathered below
        if store is not None and all(keys[j] in done for j in chunk):
            put(chunk, store.rows(done, [keys[j] for j in chunk]))
            bar.update(len(chunk) * config.max_steps)
            continue
        rows = [r for j in chunk for r in range(j * per_fact, (j + 1) * per_fact)]
        part = _targets_chunk(
            model,
            adapter,
            [ids[r] for r in rows],
            [index[r] for r in rows],
            pad_id(tokenizer),
            len(templates),
            config,
            z_layer,
            [labels[j] for j in chunk],
            config.target == UNLIKELY,
            bar,
            prefix_cache,
        )
        if store is not None:
            store.save([keys[j] for j in chunk], part)
        put(chunk, [getattr(part, name) for name in FIELDS])
    bar.close()
    if dist.active():  # every process's rows, as one block per process (copies: no view of the whole tensor)
        rows = filled.nonzero().flatten()
        mine = {dist.rank(): (rows.tolist(), [t[rows.to(t.device)].cpu().clone() for t in out])} if len(rows) else {}
        for indices, values in dist.gather_dict(mine).values():
            put(indices, values)
    if not bool(filled.all()):
        raise RuntimeError(f"z* missing for {int((~filled).sum())} of {len(facts)} facts (a chunk was not computed)")
    return Targets(*out)


def _chunks(ids_per_fact, index_per_fact, budget: int) -> list[list[int]]:
    """Fact indices grouped so that each group's aligned batch (rows × (longest prefix + longest
    suffix)) stays within ``budget`` tokens (a single fact may exceed it); facts are sorted by
    prefix length first so that groups need little padding."""
    shape = [
        (max(index), max(len(t) - i for t, i in zip(ids, index))) for ids, index in zip(ids_per_fact, index_per_fact)
    ]
    order = sorted(range(len(shape)), key=lambda j: shape[j])
    chunks, current, width_p, width_s = [], [], 0, 0
    for j in order:
        p, s = max(width_p, shape[j][0]), max(width_s, shape[j][1])
        rows = (len(current) + 1) * len(ids_per_fact[j])
        if current and rows * (p + s) > budget:
            chunks.append(current)
            current, p, s = [], shape[j][0], shape[j][1]
        current.append(j)
        width_p, width_s = p, s
    if current:
        chunks.append(current)
    return chunks


@dataclass
class _Aligned:
    """Rows aligned at the subject's last token: the prefix (tokens before it) is left-padded to
    P columns, the suffix (from it on) right-padded to S columns, so column P holds every row's
    subject token.  Nothing in the prefix depends on δ (causal attention), so its keys and values
    are computed once and reused by every optimisation step."""

    prefix_ids: torch.Tensor  # (R, P)
    suffix_ids: torch.Tensor  # (R, S)
    mask: torch.Tensor  # (R, P + S) 1 for real tokens
    positions: torch.Tensor  # (R, P + S) position ids of the original (unpadded) rows
    suffix_len: torch.Tensor  # (R,) real suffix tokens

    @classmethod
    def build(cls, ids: list[list[int]], index: list[int], pad_id: int, device) -> _Aligned:
        P = max(index)
        S = max(len(t) - i for t, i in zip(ids, index))
        R = len(ids)
        tokens = torch.full((R, P + S), pad_id, dtype=torch.long)
        mask = torch.zeros((R, P + S), dtype=torch.long)
        positions = torch.zeros((R, P + S), dtype=torch.long)
        for r, (row, i) in enumerate(zip(ids, index)):
            cols = slice(P - i, P - i + len(row))
            tokens[r, cols] = torch.tensor(row)
            mask[r, cols] = 1
            positions[r, cols] = torch.arange(len(row))
        suffix_len = torch.tensor([len(t) - i for t, i in zip(ids, index)])
        return cls(*(t.to(device) for t in (tokens[:, :P], tokens[:, P:], mask, positions, suffix_len)))

    @property
    def prefix_len(self) -> int:
        return self.prefix_ids.shape[1]


def _buckets(ids: list[list[int]], index: list[int]) -> list[list[int]]:
    """Rows grouped by suffix length (tokens from the subject's last token on), so that the
    per-step passes over the suffix columns carry no padding; ascending length."""
    groups: dict[int, list[int]] = {}
    for r, (tokens, i) in enumerate(zip(ids, index)):
        groups.setdefault(len(tokens) - i, []).append(r)
    return [groups[length] for length in sorted(groups)]


def _targets_chunk(
    model, adapter, ids, index, pad: int, T: int, config, z_layer, labels, unlikely, bar, prefix_cache
) -> Targets:
    """z* for one chunk: ``ids``/``index`` hold T rewriting rows then the KL row, per fact; ``labels``
    the target ids per fact (pushed up, or with ``unlikely`` down)."""
    device = model_device(model)
    n_layers = adapter.num_layers(model)
    loss_layer = max(n_layers - 1 if config.v_loss_layer < 0 else config.v_loss_layer, z_layer)
    per_fact = T + 1
    m = len(ids) // per_fact
    width = max(len(row) for row in labels)
    lengths = torch.tensor([len(row) for row in labels], device=device)  # (m,) target tokens per fact
    labels = torch.tensor([row + [row[-1]] * (width - len(row)) for row in labels], device=device)  # (m, width)

    d = adapter.dims(model, z_layer)[0]
    dtype = torch.promote_types(next(model.parameters()).dtype, torch.float32)  # fp32 for fp16/bf16 models
    delta = torch.zeros(m, d, device=device, dtype=dtype)
    exp_avg, exp_avg_sq = torch.zeros_like(delta), torch.zeros_like(delta)
    active = torch.ones(m, dtype=torch.bool, device=device)
    steps = torch.zeros(m, dtype=torch.long, device=device)
    final_loss = torch.zeros(m, device=device, dtype=dtype)
    z_init = torch.zeros(m, d, device=device, dtype=dtype)
    step_count = 0

    with frozen(model):
        buckets = []
        for rows in _buckets(ids, index):
            batch = _Aligned.build([ids[r] for r in rows], [index[r] for r in rows], pad, device)
            runner = _SuffixRunner(model, adapter, batch, z_layer, loss_layer, prefix_cache)
            rows = torch.tensor(rows, device=device)
            plain = (rows % per_fact == 0).nonzero().squeeze(1)  # the plain prompt's rows ("{}" template)
            z_init[rows[plain] // per_fact] = runner.z_out[plain, 0].to(dtype)
            buckets.append((rows, runner))
        log_p_init = None
        delta.requires_grad_(True)
        last = config.max_steps - 1
        for it in range(config.max_steps):
            live = active.nonzero().squeeze(1)
            nll, log_p = _losses(model, adapter, buckets, delta, active, T, labels, lengths, unlikely)
            if it == 0:
                log_p_init = log_p.detach()
            kl = (log_p.exp() * (log_p - log_p_init[live])).sum(-1)  # KL(p_cur ‖ p_init) at the subject token
            wd = config.v_weight_decay * delta[live].norm(dim=1) / z_init[live].norm(dim=1) ** 2
            loss = nll + config.kl_factor * kl + wd
            final_loss[live] = loss.detach()
            done = config.stops(loss.detach(), it)
            active[live[done]] = False
            bar.update(len(live) + int(done.sum()) * (last - it))
            bar.set_postfix(live=int(active.sum()), loss=f"{float(loss.detach().mean()):.3f}")
            if it == last or not active.any():
                bar.update(int(active.sum()) * (last - it))
                break
            (grad,) = torch.autograd.grad(loss[~done].sum(), delta)
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


class _SuffixRunner:
    """Forward passes of the suffix columns of the live facts' rows with δ added at block z.

    Once per chunk (no gradient): the prefix's keys/values for every block up to the loss layer
    and the block-z output of the suffix columns.  Per step: blocks 0..z are skipped (their output
    is that stored block-z output), δ is added at the subject column, and only blocks z+1..loss
    run, over the suffix columns, attending to the cached prefix.  With ``prefix_cache=False``
    every step is a full forward of the whole aligned rows (the plain way, for comparisons)."""

    def __init__(self, model, adapter, batch: _Aligned, z_layer: int, loss_layer: int, prefix_cache: bool):
        self.model, self.adapter, self.batch = model, adapter, batch
        self.z_layer, self.loss_layer, self.use_cache = z_layer, loss_layer, prefix_cache
        self.live_rows, self.live_cache = None, None
        P = batch.prefix_len
        self.prefix = None
        with torch.no_grad():
            if prefix_cache and P > 0:
                self.prefix = new_cache()
                with capture(model, adapter, stop_after=loss_layer):
                    run_until(
                        model,
                        input_ids=batch.prefix_ids,
                        attention_mask=batch.mask[:, :P],
                        position_ids=batch.positions[:, :P],
                        **cache_inputs(model, self.prefix),
                    )
            recorded = {}

            def record(module, args, output):
                recorded["out"] = output

            handle = adapter.block(model, z_layer).register_forward_hook(record)
            try:
                self._run(torch.arange(batch.suffix_ids.shape[0], device=batch.mask.device), stop_after=z_layer)
            finally:
                handle.remove()
        # blocks returning a plain tensor (transformers >= 5) can be skipped; older ones are replayed
        self.skip = prefix_cache and isinstance(recorded["out"], torch.Tensor)
        self.z_out = (
            block_output_tensor(recorded["out"])[:, -batch.suffix_ids.shape[1] :]
            if prefix_cache
            else block_output_tensor(recorded["out"])[:, P:]
        )

    def _run(self, rows, stop_after, extra_hooks=()):
        b = self.batch
        P = b.prefix_len
        with capture(self.model, self.adapter, block_layers=[stop_after], stop_after=stop_after) as store:
            if self.use_cache:
                cache = None
                if self.prefix is not None:
                    if self.live_rows is None or not torch.equal(self.live_rows, rows):
                        self.live_rows, self.live_cache = rows, fork_cache(self.prefix, rows)
                    cache = fork_cache(self.live_cache)
                run_until(
                    self.model,
                    input_ids=b.suffix_ids[rows],
                    attention_mask=b.mask[rows],
                    position_ids=b.positions[rows, P:],
                    **cache_inputs(self.model, cache),
                )
            else:
                ids = torch.cat([b.prefix_ids, b.suffix_ids], 1)
                run_until(self.model, input_ids=ids[rows], attention_mask=b.mask[rows], position_ids=b.positions[rows])
        return store[("block", stop_after)]

    def __call__(self, rows: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Loss-layer hidden states of the suffix columns, (n, S, d), of the batch rows ``rows``
        with ``shift`` (n, d) added to their block-z output at the subject token."""
        col = 0 if self.use_cache else self.batch.prefix_len
        z_rows = {"hidden": self.z_out[rows]}

        def add_delta(module, args, output):
            h = block_output_tensor(output)
            h = torch.cat([h[:, :col], h[:, col : col + 1] + shift[:, None].to(h.dtype), h[:, col + 1 :]], 1)
            return (h,) + tuple(output[1:]) if isinstance(output, (tuple, list)) else h

        handle = self.adapter.block(self.model, self.z_layer).register_forward_hook(add_delta)
        try:
            with (
                skipped_blocks(self.model, self.adapter, self.z_layer, z_rows)
                if self.skip
                else contextlib.nullcontext()
            ):
                hidden = self._run(rows, self.loss_layer)
        finally:
            handle.remove()
        return hidden[:, col:] if not self.use_cache else hidden


def _losses(model, adapter, buckets, delta, active, T, labels, lengths, unlikely=False):
    """One forward of every bucket's live rows → (NLL of the target tokens averaged over the T
    rewriting rows, (n,), log-probs at the KL row's subject token, (n, V)) for the n active facts,
    in fact order; with ``unlikely`` the first term is −log(1 − p) of the label instead.  ``labels``
    (m, width) hold each fact's ``lengths`` target ids, padded.  The final norm and the head run
    only on the hidden states the loss reads."""
    per_fact = T + 1
    n_target = labels.shape[1]
    rewrite, rewrite_rows, kl, kl_rows = [], [], [], []
    for rows, runner in buckets:
        local = active[rows // per_fact].nonzero().squeeze(1)
        if not len(local):
            continue
        hidden = runner(local, delta[rows[local] // per_fact])  # (n_rows, S, d) at the loss layer
        is_kl = rows[local] % per_fact == T
        w = (~is_kl).nonzero().squeeze(1)
        if len(w):  # the last n real tokens of a rewriting row predict its fact's n target tokens
            n = lengths[rows[local[w]] // per_fact, None]
            pos = runner.batch.suffix_len[local[w], None] + torch.arange(n_target, device=rows.device) - n
            rewrite.append(hidden[w[:, None], pos.clamp(max=hidden.shape[1] - 1)])
            rewrite_rows.append(rows[local[w]])
        k = is_kl.nonzero().squeeze(1)
        kl.append(hidden[k, 0])
        kl_rows.append(rows[local[k]])
    norm = model.get_submodule(adapter.final_norm)
    head = adapter.lm_head(model)
    picked = torch.cat(rewrite)[torch.cat(rewrite_rows).argsort()]  # fact-major: (n·T, n_target, d)
    row_labels = labels[active].repeat_interleave(T, 0)  # (n·T, n_target), fact-major as ``picked``
    logp = log_probs(head(norm(picked))).gather(-1, row_labels[..., None]).squeeze(-1)
    if unlikely:  # −log(1 − p), p kept below 1 so that a certain answer still has a finite gradient
        logp = torch.log1p(-logp.exp().clamp(max=1 - 1e-6))
    n = lengths[active].repeat_interleave(T, 0)
    if int(n.min()) < n_target:  # ragged targets: the padding positions do not count
        logp = torch.where(torch.arange(n_target, device=n.device) < n[:, None], logp, torch.zeros_like(logp))
    nll = -(logp.sum(-1) / n).reshape(-1, T).mean(1)
    log_p = log_probs(head(norm(torch.cat(kl)[torch.cat(kl_rows).argsort()])))
    return nll, log_p


@torch.no_grad()
def _adam_step(param, grad, exp_avg, exp_avg_sq, rows, step, lr, betas=ADAM_BETAS, eps=ADAM_EPS):
    """torch.optim.Adam's update (defaults, no weight decay) applied to ``rows`` only."""
    b1, b2 = betas
    g = grad[rows]
    exp_avg[rows] = exp_avg[rows] * b1 + (1 - b1) * g
    exp_avg_sq[rows] = exp_avg_sq[rows] * b2 + (1 - b2) * g * g
    bias1 = 1 - b1**step
    bias2_sqrt = (1 - b2**step) ** 0.5
    denom = exp_avg_sq[rows].sqrt() / bias2_sqrt + eps
    param[rows] = param[rows] - (lr / bias1) * exp_avg[rows] / denom
