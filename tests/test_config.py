"""WashConfig: sections, the flat (0.1) and nested JSON forms, routing of field names."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

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
        ({"layers": "12"}, "layers must be a list of block indices"),
        ({"layers": [1.7, 2.2]}, "layers must be a list of block indices"),
        ({"layers": [2, 1]}, "strictly ascending"),
        ({"layers": [-1]}, "block indices >= 0"),
        ({"layers": [1], "total_iters": 0}, "total_iters must be an integer >= 1"),
        ({"layers": [1], "lambda_rule": "magic"}, "lambda_rule must be one of"),
        ({"layers": [1], "ft_lora_targets": "q_proj"}, "ft_lora_targets must be a list"),
    ],
)
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        WashConfig.from_dict(data)


def test_sections_are_typed_and_layers_accept_numpy_integers():
    with pytest.raises(ValueError, match="law must be a LawConfig"):
        WashConfig(layers=(1,), law=MemitConfig())
    assert WashConfig(layers=np.arange(2, 4)).layers == (2, 3)
    assert TargetConfig().replace(v_lr=0.1).v_lr == 0.1
    assert MemitConfig(disruption_per_fact=1e-4, disruption_budget=3e-3).disruption_for(100) == 3e-3
