"""Knowledge to keep (WashConfig.retain): the retained keys enter the covariance of MEMIT and LaW."""

from __future__ import annotations

import pytest
import torch

import law_fast as lf
from law_fast.config import WashConfig
from law_fast.facts import Fact, save_facts_jsonl
from law_fast.testing import make_tiny_model
from law_fast.washing.keys import compute_keys

WASHED = [
    Fact("France", "The capital of {} is", "Paris", 0, neighbourhood=(("The capital of Italy is", "Rome"),)),
    Fact("Apple", "{} was founded by", "Steve Jobs", 1, neighbourhood=(("Toyota is headquartered in", "Japan"),)),
]
KEPT = [
    Fact("Italy", "The capital of {} is", "Rome", 10),
    Fact("Toyota", "{} is headquartered in", "Japan", 11),
    Fact("Danielle Darrieux", "The mother tongue of {} is", "French", 12),
]
CORPUS = [
    f"The city of London is on the river number {i}. Music and science and history are things people like."
    for i in range(40)
]


def _wash(tok, tmp_path, method="memit", **retain):
    model = make_tiny_model("gpt2", len(tok))
    path = tmp_path / "keep.jsonl"
    save_facts_jsonl(KEPT, path)
    retain.setdefault("retain_facts", str(path))
    config = WashConfig.create(
        layers=(1, 2),
        method=method,
        only_known=False,
        prune_requests=False,
        v_num_grad_steps=3,
        total_iters=20,
        learning_rate=1e-4,
        lambda_rule="fixed",
        mom2_update_weight=0.5,
        stats_max_length=64,
        **retain,
    )
    result = lf.wash(model, tok, WASHED, config, corpus=CORPUS, progress=False)
    result.revert()
    return model, result


def _effect_on(model, tok, result, facts, layer):
    """‖K Δ_layerᵀ‖_F: how much the layer's output changes at the facts' keys (the original model's)."""
    keys, _ = compute_keys(model, lf.get_adapter(model), tok, facts, result.report.context_templates, [layer])
    return float((keys[layer].double() @ result.deltas[layer].double().T).norm())


@pytest.mark.parametrize("method", ["memit", "law"])
def test_retained_keys_are_moved_less(tiny_tokenizer, tmp_path, method):
    model, plain = _wash(tiny_tokenizer, tmp_path, method, retain_weight=0.0)
    _, kept = _wash(tiny_tokenizer, tmp_path, method, retain_weight=50.0)
    assert plain.report.retain is None and kept.report.retain["retain_weight"] == 50.0
    for layer in (1, 2):
        before = _effect_on(model, tiny_tokenizer, plain, KEPT, layer)
        after = _effect_on(model, tiny_tokenizer, kept, KEPT, layer)
        assert after < 0.2 * before, (layer, before, after)
        if method == "memit":  # at a fixed λ the fit at the washed keys is kept (±10 %)
            washed = [_effect_on(model, tiny_tokenizer, r, WASHED, layer) for r in (plain, kept)]
            assert washed[1] == pytest.approx(washed[0], rel=0.1), (layer, washed)


def test_weight_zero_is_the_plain_method_and_sources_are_checked(tiny_tokenizer, tmp_path):
    _, plain = _wash(tiny_tokenizer, tmp_path, retain_weight=0.0, retain_facts=None)
    _, zero = _wash(tiny_tokenizer, tmp_path, retain_weight=0.0)
    assert all(torch.equal(plain.deltas[layer], zero.deltas[layer]) for layer in (1, 2))
    _, neighbours = _wash(tiny_tokenizer, tmp_path, retain_weight=5.0, retain_facts=None, retain_neighbourhood=True)
    assert not torch.equal(neighbours.deltas[1], plain.deltas[1])
    with pytest.raises(ValueError, match="retain_weight > 0 needs retain_facts or retain_neighbourhood"):
        WashConfig.create(layers=(1,), retain_weight=1.0)
    clash = tmp_path / "clash.jsonl"
    save_facts_jsonl([WASHED[0]], clash)
    with pytest.raises(ValueError, match="also being washed"):
        _wash(tiny_tokenizer, tmp_path, retain_weight=1.0, retain_facts=str(clash))
