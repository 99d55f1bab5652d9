"""WashConfig: sections, the flat (0.1) and nested JSON forms, routing of field names."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import law_fast as lf
from law_fast.config import SECTION_OF, SECTIONS, LawConfig, MemitConfig, TargetConfig, WashConfig


def _flat(config: WashConfig) -> dict:
    """The 0.1 form: every field at the top level."""
    nested = config.to_dict()
    flat = {k: v for k, v in nested.items() if k not in SECTIONS}
    for name in SECTIONS:
        flat.update(nested[name])
    return flat


def test_field_names_are_unique_across_sections_and_common_fields():
    common = {f.name for f in dataclasses.fields(WashConfig)} - set(SECTIONS)
    per_section = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(per_section) == len(set(per_section)) == len(SECTION_OF)
    assert not common & set(per_section)


def test_flat_json_of_version_0_1_loads_into_the_sections(tmp_path):
    config = WashConfig.create(
        layers=(4, 5, 6),
        v_lr=0.2,
        total_iters=250,
        lambda_rule="fit",
        check_batch_size=8,
        ft_lr=1e-4,
        stats_dtype="float32",
        target="space+eos",
        seed=3,
    )
    flat = _flat(config)
    assert "v_lr" in flat and "law" not in flat  # the shape law_fast 0.1 wrote
    path = tmp_path / "old.json"
    path.write_text(json.dumps(flat))
    loaded = WashConfig.from_json(path)
    assert loaded == config
    assert loaded.targets.v_lr == 0.2 and loaded.law.total_iters == 250 and loaded.memit.lambda_rule == "fit"
    assert loaded.checks.check_batch_size == 8 and loaded.finetune.ft_lr == 1e-4 and loaded.target == "space+eos"
    assert WashConfig.from_json(config.to_json()) == config  # nested round trip
    assert WashConfig.from_dict({**config.to_dict(), "v_lr": 0.3}).targets.v_lr == 0.3  # mixed: flat wins


def test_replace_routes_names_and_takes_whole_sections():
    config = WashConfig(layers=(1,))
    changed = config.replace(v_lr=0.1, learning_rate=1e-3, seed=7)
    assert changed.targets.v_lr == 0.1 and changed.law.learning_rate == 1e-3 and changed.seed == 7
    assert changed.memit == config.memit  # untouched sections are shared
    assert config.replace(law=LawConfig(total_iters=3)).law.total_iters == 3
    assert config.replace(law=LawConfig(total_iters=3), learning_rate=2.0).law == LawConfig(
        total_iters=3, learning_rate=2.0
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"layers": [1], "lerning_rate": 1}, r"unknown WashConfig field\(s\) \['lerning_rate'\]"),
        (
            {"layers": [1], "law": {"lerning_rate": 1}},
            r"unknown field\(s\) \['lerning_rate'\] in WashConfig section 'law'",
        ),
        ({"layers": [1], "law": 3}, "section 'law' must be an object"),
        ({"layers": "12"}, "layers must be a list of integers"),
        ({"layers": [1.7, 2.2]}, "layers must be a list of integers"),
        ({"layers": [2, 1]}, "strictly ascending"),
        ({"layers": [-1]}, "block indices >= 0"),
        ({"layers": [1], "total_iters": 0}, "total_iters must be >= 1, got 0"),
        ({"layers": [1], "lambda_rule": "magic"}, "lambda_rule must be one of"),
        ({"layers": [1], "ft_lora_targets": "q_proj"}, "ft_lora_targets must be a list of strings"),
        ({"layers": [1], "prune_requests": "no"}, "prune_requests must be true or false, got 'no'"),
        ({"layers": [1], "learning_rate": -1e-3}, "learning_rate must be > 0"),
        ({"layers": [1], "v_lr": -0.5}, "v_lr must be > 0"),
        ({"layers": [1], "v_lr": float("nan")}, "v_lr must be a finite number, got nan"),
        ({"layers": [1], "clamp_norm_factor": -1}, "clamp_norm_factor must be > 0"),
        ({"layers": [1], "total_iters": 2.5}, "total_iters must be an integer, got 2.5"),
        ({"layers": [1], "learning_rate": "fast"}, "learning_rate must be a finite number, got 'fast'"),
        ({"layers": [1], "beta_ratio": -1}, "beta_ratio must be > 0"),
        ({"layers": [1], "stats_max_length": 0}, "stats_max_length must be >= 2"),
        ({"layers": [1], "stats_dtype": "float16"}, "stats_dtype must be one of"),
        ({"layers": [1], "v_loss_layer": -2}, "v_loss_layer must be >= -1"),
        ({"layers": [1], "guard_ppl_ratio": 0.5}, "guard_ppl_ratio must be > 1"),
        ({"layers": [1], "ft_epochs": True}, "ft_epochs must be an integer, got True"),
        ({"layers": [1], "seed": "0"}, "seed must be an integer"),
        ({"layers": [1], "corpus": 3}, "corpus must be a string"),
        ({"layers": [1], "norm_bounds": [0.5, 0.2]}, "norm_bounds must be"),
    ],
)
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        WashConfig.from_dict(data)


def test_every_offending_field_is_named_at_once():
    with pytest.raises(ValueError) as error:
        LawConfig(learning_rate=-1.0, total_iters=0, law_dtype="half")
    assert all(name in str(error.value) for name in ("learning_rate", "total_iters", "law_dtype"))


def test_reference_hparams_importer_validates_too(tmp_path):
    path = tmp_path / "hparams.json"
    path.write_text(json.dumps({"layers": "12", "v_lr": 0.5}))
    with pytest.raises(ValueError, match="layers must be a list of integers"):
        WashConfig.from_reference_hparams(path)
    for bad, message in (
        ({"prune_requests": "no"}, "prune_requests must be true or false"),
        ({"mom2_n_samples": 2.5}, "mom2_n_samples must be an integer"),
        ({"v_loss_layer": "47"}, "v_loss_layer must be an integer"),
    ):
        path.write_text(json.dumps({"layers": [4, 5], **bad}))
        with pytest.raises(ValueError, match=message):
            WashConfig.from_reference_hparams(path)
    path.write_text(json.dumps({"layers": [4, 5], "prune_requests": 1, "v_loss_layer": 20}))
    loaded = WashConfig.from_reference_hparams(path)
    assert loaded.checks.prune_requests is True and loaded.targets.v_loss_layer == 20


def test_sections_are_typed_and_layers_accept_numpy_integers():
    with pytest.raises(ValueError, match="law must be a LawConfig"):
        WashConfig(layers=(1,), law=MemitConfig())
    assert WashConfig(layers=np.arange(2, 4)).layers == (2, 3)
    assert TargetConfig().replace(v_lr=0.1).v_lr == 0.1
    assert MemitConfig(disruption_per_fact=1e-4, disruption_budget=3e-3).disruption_for(100) == 3e-3


def test_preset_rule_for_models_without_a_tuned_preset():
    """The layer rule reproduces the tuned presets' shape and gives shallow models two blocks, never block 0
    or the last (models of ≤ 4 blocks: all but the last); the solver's lr follows the down-projections' scale
    (SmolLM2's lr at SmolLM2's scale); the z* and λ settings are the rule's (RULE_TARGETS), SmolLM2 keeps its own."""
    from transformers import GPT2Config, LlamaConfig

    from law_fast.config import RULE_TARGETS, SMOLLM2_DOWN_RMS, rule_layers, rule_solver
    from law_fast.testing import make_tiny_model

    assert rule_layers(5) == (1, 2) and rule_layers(6) == (1, 2) and rule_layers(12) == (2, 3)
    assert rule_layers(30) == (4, 5, 6, 7, 8) and rule_layers(32) == (5, 6, 7, 8, 9) and rule_layers(48)[0] == 7
    assert rule_layers(1) == (0,) and rule_layers(2) == (0,) and rule_layers(3) == (0, 1)
    assert rule_layers(4) == (0, 1, 2)
    for n in range(5, 80):
        layers = rule_layers(n)
        assert 2 <= len(layers) <= 5 and layers[0] >= 1 and layers[-1] <= n - 2, (n, layers)
    with pytest.raises(ValueError, match="at least one block"):
        rule_layers(0)
    model = make_tiny_model("gpt2", 100)
    config = WashConfig.preset(model)
    assert config.layers == (0, 1, 2) and config.law.total_iters == 250 and config.law.law_dtype == "float32"
    assert (config.memit.lambda_rule, config.memit.fit_target) == ("fit", RULE_TARGETS["fit_target"])
    assert (config.targets.v_num_grad_steps, config.targets.clamp_norm_factor) == (100, 2.0)
    smollm2 = WashConfig.preset(LlamaConfig(num_hidden_layers=30, hidden_size=576))
    assert (smollm2.memit.lambda_rule, smollm2.targets.v_num_grad_steps, smollm2.targets.clamp_norm_factor) == (
        "disruption",
        20,
        0.75,
    )
    assert config.targets.v_extra_steps == 0  # the rule runs z* to the loss threshold (100 steps) instead
    # SmolLM2: 20 z* steps, then up to 80 more for the facts still above a loss of 3 (SMOLLM2_TARGETS)
    assert (smollm2.targets.v_extra_steps, smollm2.targets.v_extra_loss) == (80, 3.0)
    assert WashConfig.preset(LlamaConfig(num_hidden_layers=30, hidden_size=576), paper=True).targets.v_extra_steps == 0
    with torch.no_grad():
        for layer in (1, 2):
            w = lf.get_adapter(model).weight(model, layer)
            w.mul_(SMOLLM2_DOWN_RMS / float(w.pow(2).mean().sqrt()))
    assert rule_solver(model, (1, 2))["learning_rate"] == pytest.approx(4e-6, rel=1e-5)
    assert WashConfig.preset(GPT2Config(n_layer=4)).law.learning_rate == 4e-6  # a config: no weights to scale by


def test_presets_wash_with_the_retention_default_and_paper_and_baselines_without():
    """SmolLM2 and models without a tuned preset get RETENTION_DEFAULT (MEMIT keeping mined names); the
    reference models keep LaW; paper=True is LaW as published and the fine-tuning baselines keep nothing."""
    from transformers import GPT2Config, LlamaConfig

    from law_fast.config import PLAIN, RETAIN_OFF, RETENTION_DEFAULT

    smollm2 = LlamaConfig(num_hidden_layers=30, hidden_size=576)
    small = GPT2Config(n_layer=4)
    for config in (smollm2, small):
        preset = WashConfig.preset(config)
        assert (preset.method, preset.retain.retain_entities, preset.retain.retain_weight) == ("memit", 1000, 1.0)
        assert preset.retain.uses_sources
        law = WashConfig.preset(config, method="law")  # LaW's refinement on top, the names still kept
        assert law.method == "law" and law.retain.retain_entities == RETENTION_DEFAULT["retain_entities"]
        assert not WashConfig.preset(config, **RETAIN_OFF).retain.active
        plain = WashConfig.preset(config, **PLAIN)  # PLAIN: no names and no extra z* steps
        assert not plain.retain.active and plain.targets.v_extra_steps == 0
        assert plain.targets == WashConfig.preset(config).targets.replace(v_extra_steps=0)
        # retention the caller configures replaces the names (no ValueError for a weight without a source)
        assert not WashConfig.preset(config, retain_entities=0).retain.active
        alpha = WashConfig.preset(config, null_space_threshold=0.01, regulariser="identity")
        assert alpha.retain.retain_entities == 0 and alpha.retain.null_space_threshold == 0.01
        facts = WashConfig.preset(config, retain_facts="keep.jsonl", retain_weight=2.0)
        assert (facts.retain.retain_entities, facts.retain.retain_weight) == (0, 2.0)
        paper = WashConfig.preset(config, paper=True)
        assert paper.method == "law" and not paper.retain.active and paper.memit.lambda_rule == "reference"
        for method in ("ft", "seul"):
            baseline = WashConfig.baseline_preset(method, config)
            assert baseline.method == method and not baseline.retain.active
            # wash(method=) / --method: no config → that method's preset (no names); a config → only its method
            assert WashConfig.for_method(config, None, method) == WashConfig.preset(config, method=method)
            assert WashConfig.for_method(config, preset, method) == preset.replace(method=method)
        assert WashConfig.for_method(config) == preset
    gpt2_xl = WashConfig.preset(GPT2Config(n_layer=48, n_embd=1600))
    assert gpt2_xl.method == "law" and not gpt2_xl.retain.active
