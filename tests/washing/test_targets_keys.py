"""Batched targets z* and keys against plain per-fact implementations, on tiny models of every family."""

import pytest
import torch

from law_fast.config import TargetConfig
from law_fast.facts import Fact
from law_fast.hf.adapters import get_adapter
from law_fast.hf.hooks import block_output_tensor
from law_fast.hf.tokens import encode_at
from law_fast.testing import plain_compute_z
from law_fast.washing.keys import compute_keys, fact_sentences
from law_fast.washing.targets import compute_targets, target_token_ids

FACTS = [
    Fact("France", "The capital of {} is", "Paris", 0),
    Fact("Danielle Darrieux", "The mother tongue of {} is", "French", 1),
    Fact("Apple", "{} was founded by", "Steve Jobs", 2),
]
TEMPLATES = ["{}", "I think that you. {}", "Therefore we stay. {}"]


@pytest.mark.parametrize("target", ["eos", "space+eos", " I think that"])  # the last: a refusal-style text
def test_batched_targets_equal_per_fact_loop(tiny, target):
    model, tok = tiny
    model = model.double()  # float64: the comparison tests the logic, not fp32 rounding amplified by Adam
    adapter = get_adapter(model)
    # a low threshold on one fact exercises per-fact early stop; clamp is active with a large lr
    cfg = TargetConfig(v_num_grad_steps=6, v_lr=0.5, loss_threshold=0.05)
    ids = target_token_ids(tok, adapter.eos_token_id(model, tok), target)
    if target in ("eos", "space+eos"):
        assert len(ids) == (1 if target == "eos" else 2)
    else:
        assert ids == tok(target, add_special_tokens=False)["input_ids"] and len(ids) > 1
    batched = compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg, 2, ids, progress=False)
    for j, fact in enumerate(FACTS):
        plain = plain_compute_z(model, adapter, tok, fact, TEMPLATES, cfg, 2, ids)
        rel = float((batched.z_star[j] - plain).norm() / plain.norm())
        assert rel < 1e-6, (fact, rel)
    assert int(batched.steps.max()) <= cfg.v_num_grad_steps - 1
    # the clamp holds for every fact
    norms = (batched.z_star - batched.z_init).norm(dim=1)
    assert bool((norms <= cfg.clamp_norm_factor * batched.z_init.norm(dim=1) * (1 + 1e-5)).all())


def test_extra_steps_only_for_the_facts_still_far_and_equal_per_fact_loop(tiny):
    """v_extra_steps: after v_num_grad_steps, only the facts whose loss is still above v_extra_loss go on
    (until below it); the others keep the z* they had without extra steps, bit for bit; batched = plain loop."""
    model, tok = tiny
    model = model.double()
    adapter = get_adapter(model)
    ids = target_token_ids(tok, adapter.eos_token_id(model, tok), "eos")
    base = TargetConfig(v_num_grad_steps=3, v_lr=0.05, loss_threshold=0.0)
    short = compute_targets(model, adapter, tok, FACTS, TEMPLATES, base, 2, ids, progress=False)
    # the bound between the facts' losses after the base steps: some stop there, the others go on
    losses = sorted(short.loss.tolist())
    bound = (losses[0] + losses[-1]) / 2
    assert losses[0] < bound < losses[-1], losses
    cfg = base.replace(v_extra_steps=12, v_extra_loss=bound)
    assert cfg.max_steps == 15
    longer = compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg, 2, ids, progress=False)
    for j, fact in enumerate(FACTS):
        if short.loss[j] < bound:  # stopped at the base steps: exactly the z* without extra steps
            assert int(longer.steps[j]) == int(short.steps[j]) == base.v_num_grad_steps - 1
            assert torch.equal(longer.z_star[j], short.z_star[j]), fact
        else:  # went on, and ended below the bound or at the last allowed step
            assert int(longer.steps[j]) > int(short.steps[j]), fact
            assert float(longer.loss[j]) < bound or int(longer.steps[j]) == cfg.max_steps - 1, fact
            assert float(longer.loss[j]) < float(short.loss[j]), fact
        plain = plain_compute_z(model, adapter, tok, fact, TEMPLATES, cfg, 2, ids)
        assert float((longer.z_star[j] - plain).norm() / plain.norm()) < 1e-6, fact
    with pytest.raises(ValueError, match="v_extra_steps"):
        TargetConfig(v_extra_steps=-1)


def test_unlikely_target_equals_per_fact_loop_and_lowers_the_answer(tiny):
    """target "unlikely": each fact's own answer token is pushed down (−log(1 − p)); batched = plain loop."""
    from law_fast.washing.targets import answer_token_id

    model, tok = tiny
    model = model.double()
    adapter = get_adapter(model)
    cfg = TargetConfig(target="unlikely", v_num_grad_steps=6, v_lr=0.5, loss_threshold=1e-9)
    assert target_token_ids(tok, adapter.eos_token_id(model, tok), "unlikely") is None
    batched = compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg, 2, None, progress=False)
    assert int(batched.steps.min()) > 0
    for j, fact in enumerate(FACTS):
        ids = [answer_token_id(tok, fact)]
        plain = plain_compute_z(model, adapter, tok, fact, TEMPLATES, cfg, 2, ids, unlikely=True)
        assert float((batched.z_star[j] - plain).norm() / plain.norm()) < 1e-6, fact
    # with the unlikelihood term alone, its value (≈ p of the answer) goes down for every fact (the
    # random model's answer is unlikely from the start and the clamp bounds δ: a small, strict decrease)
    alone = cfg.replace(kl_factor=0.0, v_weight_decay=0.0)
    before = compute_targets(
        model, adapter, tok, FACTS, TEMPLATES, alone.replace(v_num_grad_steps=1), 2, None, progress=False
    )
    after = compute_targets(model, adapter, tok, FACTS, TEMPLATES, alone, 2, None, progress=False)
    assert bool((after.loss < 0.999 * before.loss).all()), (before.loss, after.loss)


def test_answer_target_equals_per_fact_loop_with_ragged_answers(tiny):
    """target "answer" (editing): each fact's own answer text is raised, teacher-forced; answers of
    different token lengths in one batch give each fact its own plain loop's z*."""
    from law_fast.washing.targets import answer_token_ids

    model, tok = tiny
    model = model.double()
    adapter = get_adapter(model)
    cfg = TargetConfig(target="answer", v_num_grad_steps=6, v_lr=0.5, loss_threshold=1e-9)
    assert target_token_ids(tok, adapter.eos_token_id(model, tok), "answer") is None
    lengths = {len(answer_token_ids(tok, f)) for f in FACTS}
    assert len(lengths) > 1, lengths  # the test needs ragged targets
    batched = compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg, 2, None, progress=False)
    for j, fact in enumerate(FACTS):
        plain = plain_compute_z(model, adapter, tok, fact, TEMPLATES, cfg, 2, answer_token_ids(tok, fact))
        assert float((batched.z_star[j] - plain).norm() / plain.norm()) < 1e-6, fact
    alone = cfg.replace(kl_factor=0.0, v_weight_decay=0.0)
    before = compute_targets(
        model, adapter, tok, FACTS, TEMPLATES, alone.replace(v_num_grad_steps=1), 2, None, progress=False
    )
    after = compute_targets(model, adapter, tok, FACTS, TEMPLATES, alone, 2, None, progress=False)
    assert bool((after.loss < before.loss).all()), (before.loss, after.loss)  # the answers got likelier


def test_mixed_early_stops_and_clamps_equal_per_fact_loop(tiny):
    """Facts that stop at different steps, with the norm clamp firing: each z* = its own plain loop."""
    model, tok = tiny
    model = model.double()
    adapter = get_adapter(model)
    ids = target_token_ids(tok, adapter.eos_token_id(model, tok), "space+eos")
    cfg = TargetConfig(v_num_grad_steps=6, v_lr=0.5, clamp_norm_factor=0.05)
    first = compute_targets(
        model, adapter, tok, FACTS, TEMPLATES, cfg.replace(v_num_grad_steps=1), 2, ids, progress=False
    ).loss  # every fact's loss before any step
    cfg = cfg.replace(loss_threshold=float(first.median()) + 1e-9)  # the lowest fact(s) stop at once, the others not
    batched = compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg, 2, ids, progress=False)
    assert 0 in batched.steps.tolist() and int(batched.steps.max()) > 0
    for j, fact in enumerate(FACTS):
        plain = plain_compute_z(model, adapter, tok, fact, TEMPLATES, cfg, 2, ids)
        assert float((batched.z_star[j] - plain).norm() / plain.norm()) < 1e-6, fact
    moved = batched.steps > 0
    norms = (batched.z_star - batched.z_init).norm(dim=1)[moved]
    torch.testing.assert_close(norms, cfg.clamp_norm_factor * batched.z_init.norm(dim=1)[moved])  # clamped
    assert bool((batched.z_star[~moved] == batched.z_init[~moved]).all())


def test_batched_targets_float32_within_1e4_of_per_fact_loop(tiny):
    """In the model's own float32 (the default) the batched z* stay within 1e-4 relative of the loop."""
    model, tok = tiny
    adapter = get_adapter(model)
    cfg = TargetConfig(v_num_grad_steps=8, v_lr=0.1)
    ids = target_token_ids(tok, adapter.eos_token_id(model, tok), "space+eos")
    batched = compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg, 2, ids, progress=False)
    assert batched.z_star.dtype == torch.float32 and int(batched.steps.min()) > 0
    for j, fact in enumerate(FACTS):
        plain = plain_compute_z(model, adapter, tok, fact, TEMPLATES, cfg, 2, ids)
        assert float((batched.z_star[j] - plain).norm() / plain.norm()) < 1e-4, fact


def test_targets_reject_bad_input(tiny):
    model, tok = tiny
    adapter = get_adapter(model)
    cfg = TargetConfig()
    with pytest.raises(ValueError, match="at least one fact"):
        compute_targets(model, adapter, tok, [], TEMPLATES, cfg, 2, [0], progress=False)
    with pytest.raises(ValueError, match=r"templates\[0\] must be the plain template"):
        compute_targets(model, adapter, tok, FACTS, TEMPLATES[::-1], cfg, 2, [0], progress=False)


def test_prefix_cache_and_chunks_equal_full_forward(tiny):
    """The prefix-cached, block-skipping steps and any chunking give the full-forward trajectories."""
    model, tok = tiny
    model = model.double()
    adapter = get_adapter(model)
    cfg = TargetConfig(v_num_grad_steps=5, v_lr=0.5, loss_threshold=0.05)
    ids = target_token_ids(tok, adapter.eos_token_id(model, tok), "space+eos")
    full = compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg, 1, ids, progress=False, prefix_cache=False)
    calls = []
    handle = adapter.down_proj_module(model, 0).register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        cached = compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg, 1, ids, progress=False)
        setup_calls = len(calls)
        compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg.replace(v_num_grad_steps=1), 1, ids, progress=False)
    finally:
        handle.remove()
    # block 0 runs only while the prefix and block-z outputs are stored (twice per bucket), never in a step
    assert cached.steps.max() > 0 and len(calls) == 2 * setup_calls
    assert setup_calls <= 2 * len(FACTS) * (len(TEMPLATES) + 1)
    one_fact_chunks = compute_targets(
        model, adapter, tok, FACTS, TEMPLATES, cfg.replace(target_batch_tokens=1), 1, ids, progress=False
    )
    for other in (cached, one_fact_chunks):
        torch.testing.assert_close(other.z_star, full.z_star, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(other.z_init, full.z_init, rtol=1e-9, atol=1e-9)
        assert other.steps.tolist() == full.steps.tolist()


def test_chunks_respect_token_budget():
    from law_fast.washing.targets import _chunks

    ids = [[[1] * 5, [1] * 9], [[1] * 4, [1] * 4], [[1] * 12, [1] * 3]]
    index = [[2, 6], [1, 1], [10, 0]]
    chunks = _chunks(ids, index, budget=2 * 2 * 12)
    assert sorted(j for c in chunks for j in c) == [0, 1, 2]
    for chunk in chunks:
        if len(chunk) > 1:
            p = max(max(index[j]) for j in chunk)
            s = max(len(t) - i for j in chunk for t, i in zip(ids[j], index[j]))
            assert len(chunk) * 2 * (p + s) <= 2 * 2 * 12
    assert _chunks(ids, index, budget=1) == [[1], [0], [2]]  # sorted by prefix length, one per chunk


def test_per_fact_early_stop(tiny):
    model, tok = tiny
    adapter = get_adapter(model)
    cfg = TargetConfig(v_num_grad_steps=5, loss_threshold=1e9)  # every fact stops at once
    out = compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg, 2, [0], progress=False)
    assert out.steps.tolist() == [0, 0, 0]
    torch.testing.assert_close(out.z_star, out.z_init)


def _full_forward_states(model, adapter, tok, texts, ends, key_layer, block_layer, batch=4):
    """The reference's way: batches of 4 sentences, a whole-model forward each, the down-projection's
    input and the block output read by forward hooks at the subject's last token."""
    got = {}
    handles = [
        adapter.down_proj_module(model, key_layer).register_forward_pre_hook(
            lambda module, args: got.__setitem__("key", args[0].detach())
        ),
        adapter.block(model, block_layer).register_forward_hook(
            lambda module, args, output: got.__setitem__("block", block_output_tensor(output).detach())
        ),
    ]
    keys, blocks = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch):
                enc = encode_at(tok, texts[start : start + batch], ends[start : start + batch])
                model(**enc.model_inputs)
                rows = torch.arange(len(enc.index))
                keys.append(got["key"][rows, enc.index])
                blocks.append(got["block"][rows, enc.index])
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(keys), torch.cat(blocks)


def test_keys_batched_equal_batches_of_four_full_forward(tiny):
    from law_fast.washing.keys import key_moments

    model, tok = tiny
    adapter = get_adapter(model)
    keys, block = compute_keys(model, adapter, tok, FACTS, TEMPLATES, [1, 2], block_layer=2, batch_size=64)
    texts, ends = fact_sentences(FACTS, TEMPLATES)
    for layer in (1, 2):
        k, b = _full_forward_states(model, adapter, tok, texts, ends, layer, 2)
        k = k.reshape(len(FACTS), len(TEMPLATES), -1)
        expected = 0.5 * k[:, 0] + 0.5 * k[:, 1:].mean(1)
        torch.testing.assert_close(keys[layer], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(block, b.reshape(len(FACTS), len(TEMPLATES), -1)[:, 0], rtol=1e-5, atol=1e-6)
    # key_moments runs, per call of batch_size·T facts, one pass of each context template's shared words
    # (one row) and one forward per template over its rows of every fact (the plain template's first)
    calls = []
    handle = adapter.down_proj_module(model, 0).register_forward_pre_hook(
        lambda module, args: calls.append(args[0].shape[0])
    )
    try:
        key_moments(model, adapter, tok, FACTS, TEMPLATES, 1, batch_size=2)
    finally:
        handle.remove()
    assert calls == [len(FACTS), 1, len(FACTS), 1, len(FACTS)]


def test_keys_with_wrong_or_unshareable_prefixes_equal_full_forward(tiny):
    """A prefix hint that is not how the rows begin (or whose tokens merge with the prompt's) is never
    trusted: those rows run whole, with the same states as a full forward."""
    from law_fast.washing.keys import _SharedPrefixes, states_at

    model, tok = tiny
    adapter = get_adapter(model)
    texts, ends = fact_sentences(FACTS, TEMPLATES)
    hints = ["Nothing like this at all. ", "I think that you. ", "Therefore we st"] * len(FACTS)
    shared = _SharedPrefixes(model, adapter, tok, 2)
    ids = [list(tok(t)["input_ids"]) for t in texts]
    covered = [shared.covers(h, row, len(row) - 1) for h, row in zip(hints, ids)]
    assert covered[1::3] == [True] * len(FACTS) and covered[0::3] == [False] * len(FACTS)
    keys, block = states_at(model, adapter, tok, texts, ends, [1], 2, batch_size=4, prefixes=hints)
    k, b = _full_forward_states(model, adapter, tok, texts, ends, 1, 2)
    torch.testing.assert_close(keys[1], k, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(block, b, rtol=1e-5, atol=1e-6)


def test_key_moments_stream_equals_full_keys(tiny):
    from law_fast.washing.keys import key_moments

    model, tok = tiny
    adapter = get_adapter(model)
    keys, block = compute_keys(model, adapter, tok, FACTS, TEMPLATES, [1], block_layer=2)
    K = keys[1].double()
    targets = torch.randn(len(FACTS), block.shape[1], generator=torch.Generator().manual_seed(0))
    R = (targets.double() - block.double()) * 0.5
    # batch_size=2 facts: the moments are folded in over two chunks
    mom = key_moments(model, adapter, tok, FACTS, TEMPLATES, 1, batch_size=2, targets=targets, z_layer=2, scale=0.5)
    # float32 keys and block outputs of 2-fact batches vs one batch of all (other padding widths: other
    # float32 roundings, ~1e-7 of an O(1) entry), summed in float64
    torch.testing.assert_close(mom.gram, K.T @ K, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mom.cross, K.T @ R, rtol=1e-6, atol=1e-7)
    assert mom.resid_sq == pytest.approx(float((R**2).sum()), rel=1e-9) and mom.count == len(FACTS)
    plain = key_moments(model, adapter, tok, FACTS, TEMPLATES, 1)
    torch.testing.assert_close(plain.gram, mom.gram)
    assert plain.cross is None


def test_target_store_resumes_and_never_trusts_a_bad_file(tiny, tmp_path):
    """workdir: chunks are written as they finish; a rerun computes nothing and returns the same bits; a
    partial store (a killed run) computes only the missing chunks; a corrupt or foreign file is
    recomputed with a warning; other settings or weights use another store."""
    from law_fast.washing.targets import TargetStore

    model, tok = tiny
    adapter = get_adapter(model)
    cfg = TargetConfig(v_num_grad_steps=3, v_lr=0.5, target_batch_tokens=1)  # one fact per chunk
    ids = target_token_ids(tok, adapter.eos_token_id(model, tok), "eos")

    def run(**kw):
        calls = []
        handle = adapter.down_proj_module(model, 0).register_forward_pre_hook(lambda m, a: calls.append(1))
        try:
            out = compute_targets(
                model, adapter, tok, FACTS, TEMPLATES, kw.pop("cfg", cfg), 1, ids, progress=False, **kw
            )
        finally:
            handle.remove()
        return out, len(calls)

    plain, plain_calls = run()
    first, _ = run(workdir=tmp_path)
    store = TargetStore(tmp_path, model, cfg, TEMPLATES, 1, ids)
    files = sorted(store.directory.glob("chunk-*.pt"))
    assert len(files) == len(FACTS) and len(store.load()) == len(FACTS)
    again, calls = run(workdir=tmp_path)
    assert calls == 0  # nothing recomputed
    for a, b in ((first, plain), (again, first)):
        assert torch.equal(a.z_star, b.z_star) and torch.equal(a.z_init, b.z_init) and torch.equal(a.steps, b.steps)
    files[0].unlink()  # a run killed before its first chunk was written
    resumed, calls = run(workdir=tmp_path)
    assert 0 < calls < plain_calls and torch.equal(resumed.z_star, plain.z_star)
    blob = files[1].read_bytes()
    files[1].write_bytes(blob[:-64] + bytes(64))  # damaged
    with pytest.warns(UserWarning, match="unusable"):
        damaged, calls = run(workdir=tmp_path)
    assert calls > 0 and torch.equal(damaged.z_star, plain.z_star)
    other = TargetStore(tmp_path, model, cfg.replace(v_lr=0.4), TEMPLATES, 1, ids)
    assert other.directory != store.directory and other.load() == {}
    with torch.no_grad():
        adapter.weight(model, 0).add_(1e-3)
    try:
        assert TargetStore(tmp_path, model, cfg, TEMPLATES, 1, ids).directory != store.directory
    finally:
        with torch.no_grad():
            adapter.weight(model, 0).sub_(1e-3)
