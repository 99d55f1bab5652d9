"""Batched targets z* and keys against plain per-fact implementations, on tiny models of every family."""

import pytest
import torch

from law_fast.config import WashConfig
from law_fast.facts import Fact
from law_fast.keys import compute_keys, fact_sentences, states_at
from law_fast.models import get_adapter
from law_fast.targets import compute_targets, target_token_ids

from plain import plain_compute_z

FACTS = [
    Fact("France", "The capital of {} is", "Paris", 0),
    Fact("Danielle Darrieux", "The mother tongue of {} is", "French", 1),
    Fact("Apple", "{} was founded by", "Steve Jobs", 2),
]
TEMPLATES = ["{}", "I think that you. {}", "Therefore we stay. {}"]


@pytest.mark.parametrize("target", ["eos", "space+eos"])
def test_batched_targets_equal_per_fact_loop(tiny, target):
    model, tok = tiny
    model = model.double()  # float64: the comparison tests the logic, not fp32 rounding amplified by Adam
    adapter = get_adapter(model)
    # a low threshold on one fact exercises per-fact early stop; clamp is active with a large lr
    cfg = WashConfig(layers=(1, 2), v_num_grad_steps=6, v_lr=0.5, loss_threshold=0.05)
    ids = target_token_ids(tok, adapter.eos_token_id(model, tok), target)
    assert len(ids) == (1 if target == "eos" else 2)
    batched = compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg, 2, ids, progress=False)
    for j, fact in enumerate(FACTS):
        plain = plain_compute_z(model, adapter, tok, fact, TEMPLATES, cfg, 2, ids)
        rel = float((batched.z_star[j] - plain).norm() / plain.norm())
        assert rel < 1e-6, (fact, rel)
    assert int(batched.steps.max()) <= cfg.v_num_grad_steps - 1
    # the clamp holds for every fact
    norms = (batched.z_star - batched.z_init).norm(dim=1)
    assert bool((norms <= cfg.clamp_norm_factor * batched.z_init.norm(dim=1) * (1 + 1e-5)).all())


def test_per_fact_early_stop(tiny):
    model, tok = tiny
    adapter = get_adapter(model)
    cfg = WashConfig(layers=(2,), v_num_grad_steps=5, loss_threshold=1e9)  # every fact stops at once
    out = compute_targets(model, adapter, tok, FACTS, TEMPLATES, cfg, 2, [0], progress=False)
    assert out.steps.tolist() == [0, 0, 0]
    torch.testing.assert_close(out.z_star, out.z_init)


def test_keys_batched_equal_batches_of_four_full_forward(tiny):
    model, tok = tiny
    adapter = get_adapter(model)
    keys, block = compute_keys(model, adapter, tok, FACTS, TEMPLATES, [1, 2], block_layer=2, batch_size=64)
    # plain: batches of 4 sentences, full model forward, one layer at a time
    texts, ends = fact_sentences(FACTS, TEMPLATES)
    for layer in (1, 2):
        per_layer, _ = states_at(model, adapter, tok, texts, ends, [layer], None, batch_size=4)
        k = per_layer[layer].reshape(len(FACTS), len(TEMPLATES), -1)
        expected = 0.5 * k[:, 0] + 0.5 * k[:, 1:].mean(1)
        torch.testing.assert_close(keys[layer], expected, rtol=1e-5, atol=1e-6)
    _, blocks = states_at(model, adapter, tok, texts[:: len(TEMPLATES)], ends[:: len(TEMPLATES)], [], 2, batch_size=1)
    torch.testing.assert_close(block, blocks, rtol=1e-5, atol=1e-6)
