"""Knowledge to keep (WashConfig.retain): the retained keys enter the covariance of MEMIT and LaW."""

from __future__ import annotations

import dataclasses
import logging

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


def _wash(tok, tmp_path, method="memit", corpus=CORPUS, facts=None, **retain):
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
    result = lf.wash(model, tok, WASHED if facts is None else facts, config, corpus=corpus, progress=False)
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
    with pytest.raises(ValueError, match="needs retain_facts, retain_neighbourhood or retain_entities"):
        WashConfig.create(layers=(1,), retain_weight=1.0)
    with pytest.raises(ValueError, match="needs retain_facts, retain_neighbourhood or retain_entities"):
        WashConfig.create(layers=(1,), null_space_energy=0.9)
    clash = tmp_path / "clash.jsonl"
    save_facts_jsonl([WASHED[0]], clash)
    with pytest.raises(ValueError, match="also being washed"):
        _wash(tiny_tokenizer, tmp_path, retain_weight=1.0, retain_facts=str(clash))


def test_sources_add_up_and_missing_neighbourhood_prompts_leave_the_names(
    tiny_tokenizer, tmp_path, caplog, monkeypatch
):
    """C_p is one unit-trace term per source, so ν weighs each alike: names + neighbourhood at ν = 1 is the
    same wash as the two averaged at ν = 2 (bench_retention's default-neigh2 before the sum), bit for bit.
    Facts without neighbourhood prompts (a user's own facts) keep the names alone — the presets' default
    with nothing missing is the names-only wash, bit for bit — and the report names the sources used."""
    from law_fast.washing import closed_form, retain

    names = dict(retain_facts=None, retain_entities=16)
    _, both = _wash(tiny_tokenizer, tmp_path, retain_weight=1.0, retain_neighbourhood=True, **names)
    assert both.report.retain["sources"] == ["names", "neighbourhood"]

    def averaged(*args, **kwargs):  # the same sources, averaged instead of added
        moments, sources = retain.retained_moments(*args, **kwargs)
        return {layer: c / len(sources) for layer, c in moments.items()}, sources

    with monkeypatch.context() as patched:
        patched.setattr(closed_form, "retained_moments", averaged)
        _, mean2 = _wash(tiny_tokenizer, tmp_path, retain_weight=2.0, retain_neighbourhood=True, **names)
    assert all(torch.equal(both.deltas[layer], mean2.deltas[layer]) for layer in (1, 2))

    bare = [dataclasses.replace(f, neighbourhood=()) for f in WASHED]
    _, names_only = _wash(tiny_tokenizer, tmp_path, retain_weight=1.0, facts=bare, **names)
    with caplog.at_level(logging.INFO, logger="law_fast.washing.retain"):
        _, fallback = _wash(tiny_tokenizer, tmp_path, retain_weight=1.0, retain_neighbourhood=True, facts=bare, **names)
    assert "no neighbourhood prompts" in caplog.text
    assert fallback.report.retain["sources"] == ["names"] and fallback.report.retain["applied"] is True
    assert all(torch.equal(fallback.deltas[layer], names_only.deltas[layer]) for layer in (1, 2))
    # ... but beside a retain file (or a null space) what was asked cannot be missing
    with pytest.raises(ValueError, match="retain_neighbourhood: the facts being washed have no neighbourhood"):
        _wash(tiny_tokenizer, tmp_path, retain_weight=1.0, retain_neighbourhood=True, facts=bare)
    # the neighbourhood alone, with nothing to take it from: a warning and the plain method
    _, plain = _wash(tiny_tokenizer, tmp_path, retain_weight=0.0, retain_facts=None, facts=bare)
    _, nothing = _wash(
        tiny_tokenizer, tmp_path, retain_weight=1.0, retain_facts=None, retain_neighbourhood=True, facts=bare
    )
    assert nothing.report.retain["applied"] is False and nothing.report.retain["sources"] == []
    assert all(torch.equal(nothing.deltas[layer], plain.deltas[layer]) for layer in (1, 2))


def _problem(m=12, f=24, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * f, f, generator=g, dtype=torch.float64)
    K = torch.randn(m, f, generator=g, dtype=torch.float64)
    R = torch.randn(m, d, generator=g, dtype=torch.float64)
    W = torch.randn(d, f, generator=g, dtype=torch.float64)
    kept = torch.randn(3, f, generator=g, dtype=torch.float64)
    return X.T @ X / X.shape[0], K, R, W, kept


def test_null_space_leaves_the_retained_keys_alone_in_float64():
    from law_fast.config import LawConfig, MemitConfig
    from law_fast.washing.keys import KeyMoments
    from law_fast.washing.law import law_optimize
    from law_fast.washing.memit import memit_update
    from law_fast.washing.retain import null_space_basis

    C, K, R, W, kept = _problem()
    moments = KeyMoments(K.T @ K, K.T @ R, float((R**2).sum()), K.shape[0], K)
    retained = kept.T @ kept
    V = null_space_basis(retained / retained.diagonal().sum(), 1 - 1e-9)
    assert V.shape == (24, 21)  # the 3 directions of the retained keys are removed
    config = MemitConfig(lambda_rule="fixed", mom2_update_weight=0.1)
    delta, _ = memit_update(moments, C, W, config, basis=V)
    assert float((kept @ delta.T).norm()) <= 1e-10 * float(kept.norm() * delta.norm())
    reduced, _ = law_optimize(
        delta @ V, V.T @ moments.gram @ V, V.T @ C @ V, LawConfig(learning_rate=1e-3, total_iters=50)
    )
    law_delta = reduced @ V.T
    assert float((kept @ law_delta.T).norm()) <= 1e-10 * float(kept.norm() * law_delta.norm())
    # the full basis is no restriction: the same Δ as without one, for every λ rule
    for rule in (config, MemitConfig(disruption_budget=0.5, disruption_per_fact=None), MemitConfig(lambda_rule="fit")):
        free, free_report = memit_update(moments, C, W, rule)
        full, full_report = memit_update(moments, C, W, rule, basis=torch.eye(24, dtype=torch.float64))
        torch.testing.assert_close(full, free, rtol=1e-8, atol=1e-10)
        assert full_report["lambda"] == pytest.approx(free_report["lambda"], rel=1e-6)


def test_null_space_in_a_wash(tiny_tokenizer, tmp_path):
    model, result = _wash(tiny_tokenizer, tmp_path, "law", null_space_energy=1 - 1e-9)
    for layer in (1, 2):
        info = result.report.per_layer[layer - 1]["null_space"]
        assert info["dim"] == 64 - 3 and 0 < info["washed_energy_kept"] < 1
        keys, _ = compute_keys(
            model, lf.get_adapter(model), tiny_tokenizer, KEPT, result.report.context_templates, [layer]
        )
        delta = result.deltas[layer].double()
        assert float((keys[layer].double() @ delta.T).norm()) <= 1e-5 * float(keys[layer].norm() * delta.norm())


def test_entity_mentions_are_names_inside_sentences():
    from law_fast.washing.retain import entity_mentions

    text = "The mayor of Paris met Angela Merkel in the city. Rome is old, said the Duke of York."
    got = {(f.template, f.subject) for f in entity_mentions([text], 10)}
    assert got == {
        ("The mayor of {}", "Paris"),
        ("The mayor of Paris met {}", "Angela Merkel"),
        ("Rome is old, said the {}", "Duke of York"),
    }  # "The" and "Rome" open their sentences: not mentions
    assert len(entity_mentions([text] * 5, 4, seed=1)) == 4


def test_retain_entities_moves_mined_name_keys_less(tiny_tokenizer, tmp_path, caplog):
    from law_fast.washing.retain import entity_mentions

    model, plain = _wash(tiny_tokenizer, tmp_path, retain_weight=0.0, retain_facts=None)
    _, kept = _wash(tiny_tokenizer, tmp_path, retain_weight=50.0, retain_facts=None, retain_entities=16)
    mentions = entity_mentions(CORPUS, 16)
    assert mentions and {f.subject for f in mentions} == {"London"}
    adapter = lf.get_adapter(model)
    for layer in (1, 2):
        keys, _ = compute_keys(model, adapter, tiny_tokenizer, mentions[:4], ["{}"], [layer])
        before, after = (float((keys[layer].double() @ r.deltas[layer].double().T).norm()) for r in (plain, kept))
        assert after < 0.2 * before, (layer, before, after)
    # a corpus without names: the names alone (the presets' default) warn and wash as the plain method ...
    lower = ["all lower case text, with no name in it at all."] * 8
    _, plain_lower = _wash(tiny_tokenizer, tmp_path, retain_weight=0.0, retain_facts=None, corpus=lower)
    with caplog.at_level(logging.WARNING, logger="law_fast.washing.retain"):
        _, none_found = _wash(
            tiny_tokenizer, tmp_path, retain_weight=1.0, retain_facts=None, retain_entities=4, corpus=lower
        )
    assert "no capitalised names" in caplog.text
    assert none_found.report.retain["applied"] is False and kept.report.retain["applied"] is True
    for layer in (1, 2):
        assert torch.equal(none_found.deltas[layer], plain_lower.deltas[layer])
    # ... while a null space of them, or names beside another source, cannot do without them
    with pytest.raises(ValueError, match="no capitalised names"):
        _wash(tiny_tokenizer, tmp_path, null_space_energy=0.5, retain_facts=None, retain_entities=4, corpus=lower)
    with pytest.raises(ValueError, match="no capitalised names"):
        _wash(tiny_tokenizer, tmp_path, retain_weight=1.0, retain_entities=4, corpus=lower)


@pytest.mark.parametrize("with_keys", [True, False])
def test_budget_is_measured_on_the_corpus_covariance(with_keys):
    """With C_eff = C + ν·tr(C)·C_p shaping Δ, the λ rule "disruption" measures tr(ΔCΔᵀ) ≤ b·tr(WCWᵀ) on
    C: the solver's disruption equals the float64 trace for every λ, and λ is the smallest that meets b."""
    from law_fast.config import MemitConfig
    from law_fast.washing.keys import KeyMoments
    from law_fast.washing.memit import MemitSolver, memit_update
    from law_fast.washing.retain import effective_cov

    C, K, R, W, kept = _problem()
    C_eff = effective_cov(C, kept.T @ kept / (kept**2).sum(), 10.0)
    keys = K if with_keys else None
    solver = MemitSolver.from_moments(K.T @ K, K.T @ R, C_eff, keys=keys, budget_cov=C)
    for lam in (1e-3, 0.1, 10.0):
        delta = solver.delta(lam)
        assert solver.disruption(lam) == pytest.approx(float((delta @ C * delta).sum()), rel=1e-9)
    moments = KeyMoments(K.T @ K, K.T @ R, float((R**2).sum()), K.shape[0], keys)
    config = MemitConfig(disruption_budget=0.01, disruption_per_fact=None)
    delta, report = memit_update(moments, C_eff, W, config, budget_cov=C)
    assert report["disruption"] == pytest.approx(0.01, rel=1e-4)  # the budget, met on C
    assert report["disruption"] == pytest.approx(float((delta @ C * delta).sum() / (W @ C * W).sum()), rel=1e-9)
    assert report["retained_disruption"] == pytest.approx(
        float((delta @ C_eff * delta).sum() / (W @ C_eff * W).sum()), rel=1e-9
    )
    # the same budget on C without C_p: the retained keys move more
    plain, _ = memit_update(moments, C, W, config)
    assert float((kept @ delta.T).norm()) < 0.5 * float((kept @ plain.T).norm())


def test_entity_mentions_skip_washed_subjects():
    from law_fast.washing.retain import entity_mentions

    text = "The mayor of Paris met Angela Merkel in the city of Paris Hilton. A man saw Parish Hall."
    got = {f.subject for f in entity_mentions([text], 10, exclude=["Paris", " "])}
    assert got == {"Angela Merkel", "Parish Hall"}  # whole words only: "Parish" is not "Paris"
    text += " She met the Angela Merkel Foundation and then Angela Smith."
    got = {f.subject for f in entity_mentions([text], 10, exclude=["Paris", "Angela Merkel"])}
    assert got == {"Parish Hall", "Angela Smith"}  # a washed subject of several words inside a longer name


def test_retained_second_moments_of_all_layers_in_one_pass(tiny_tokenizer):
    from law_fast.washing.keys import key_moments, key_second_moments

    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    adapter = lf.get_adapter(model)
    templates = ["{}", "Once upon a time. {}"]
    got = dict(key_second_moments(model, adapter, tiny_tokenizer, KEPT, templates, (0, 2), batch_size=2))
    for layer in (0, 2):
        want = key_moments(model, adapter, tiny_tokenizer, KEPT, templates, layer, 2)
        torch.testing.assert_close(got[layer], want.gram / want.count, rtol=1e-6, atol=1e-8)


def test_retain_budget_chooses_where_the_lambda_budget_is_measured(tiny_tokenizer, tmp_path):
    """retain_budget="corpus": the budget on C alone (the report's disruption is C's, retained_disruption
    C_eff's); "effective" (default): on C_eff, as before."""
    common = dict(retain_facts=None, retain_entities=16, retain_weight=5.0)
    config = dict(lambda_rule="disruption", disruption_budget=0.01, disruption_per_fact=None)
    results = {}
    for budget in ("effective", "corpus"):
        model = make_tiny_model("gpt2", len(tiny_tokenizer))
        cfg = WashConfig.create(
            layers=(1, 2),
            method="memit",
            only_known=False,
            v_num_grad_steps=3,
            stats_max_length=64,
            retain_budget=budget,
            **common,
            **config,
        )
        results[budget] = lf.wash(model, tiny_tokenizer, WASHED, cfg, corpus=CORPUS, progress=False).report
    corpus_layer = results["corpus"].per_layer[0]["memit"]
    assert (
        "retained_disruption" in corpus_layer
        and "retained_disruption" not in results["effective"].per_layer[0]["memit"]
    )
    assert corpus_layer["disruption"] == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(ValueError, match="retain_budget must be"):
        WashConfig.create(retain_budget="both")
