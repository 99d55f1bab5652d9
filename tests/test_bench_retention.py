"""The fact sets of the retention frontier (benchmarks/bench_retention.py): nested washed sets, controls
and the retain pool fixed for every m, subjects disjoint, half the controls sharing a relation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from law_fast.config import WashConfig
from law_fast.facts import Fact

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
bench = pytest.importorskip("bench_retention")

TEMPLATES = [f"Relation {r} of {{}} is" for r in range(12)]


def _known(n: int) -> list[Fact]:
    # subjects repeat now and then (the same subject in two relations), templates cycle unevenly
    return [Fact(f"S{i if i % 7 else i // 7}", TEMPLATES[(i * 5) % 12 if i % 3 else i % 4], "a", i) for i in range(n)]


def test_sets_are_disjoint_nested_and_the_same_for_every_m():
    known = _known(400)
    small = bench.choose_sets(known, 8, 8, 20, 6)
    large = bench.choose_sets(known, 60, 8, 20, 6)
    assert small is not None and large is not None
    (w8, c8, r8), (w60, c60, r60) = small, large
    assert [f.case_id for f in w60[:8]] == [f.case_id for f in w8] and len(w60) == 60
    assert c8 == c60 and r8 == r60  # the controls and the pool do not depend on the largest m
    subjects = [{f.subject for f in group} for group in (w60, c60, r60)]
    assert not (subjects[0] & subjects[1]) and not (subjects[0] & subjects[2]) and not (subjects[1] & subjects[2])
    near = {f.template for f in w8}
    assert sum(f.template in near for f in c60) >= len(c60) // 2
    assert all(f.template in near for f in r60) and len(c60) == 20 and len(r60) == 6


def test_too_few_known_facts_is_none_not_a_smaller_set():
    assert bench.choose_sets(_known(30), 25, 8, 20, 6) is None


def test_knob_overrides_name_their_field_and_reject_unknown_variants():
    assert bench.knob_overrides("memit", 2.0, "r.jsonl")["disruption_budget"] == pytest.approx(0.04)
    assert bench.knob_overrides("law-entities", 3.0, "r.jsonl")["retain_weight"] == 3.0
    assert bench.knob_overrides("memit-unlikely", 1.0, "r.jsonl")["target"] == "unlikely"
    with pytest.raises(SystemExit, match="unknown variant"):
        bench.knob_overrides("nope", 1.0, "r.jsonl")
    with pytest.raises(SystemExit, match="unknown variant"):  # only the listed -zN variants
        bench.knob_overrides("law-z7", 1.0, "r.jsonl")
    for variant in bench.VARIANTS:  # every variant's overrides make a valid config
        WashConfig.create(**{"layers": (1, 2), **bench.knob_overrides(variant, 1.0, "r.jsonl")})
    assert bench.knob_overrides("memit-alpha", 2.0, "r.jsonl")["null_space_threshold"] == pytest.approx(0.02)


def test_default_variant_is_the_preset_and_the_others_are_plain():
    """``default`` is WashConfig.preset as it is — the same computation as default-x80b3 (so its points are
    shared) —; every other variant starts from the plain method and adds only what it names."""
    from transformers import LlamaConfig

    smollm2 = LlamaConfig(num_hidden_layers=30, hidden_size=576)

    def config(variant, s=1.0):
        return WashConfig.preset(smollm2, paper=variant == "paper", **bench.variant_overrides(variant, s, "r.jsonl"))

    assert config("default", 0.5) == config("default-x80b3", 0.5) and config("default").retain.retain_entities == 1000
    # ... which is memit-ent1 (MEMIT keeping the mined names) keeping the washed facts' neighbourhood prompts too,
    # with z* extra steps for the facts above loss 3
    assert config("default", 0.5).replace(v_extra_steps=0, retain_neighbourhood=False) == config("memit-ent1", 0.5)
    assert config("default", 0.5) == config("default-neigh1", 0.5)
    assert config("memit").targets.v_extra_steps == 0 and config("paper").targets.v_extra_steps == 0
    assert config("default", 2.0).memit.disruption_budget == pytest.approx(0.04)
    for variant in ("memit", "law", "paper", "memit-unlikely", "memit-layers"):
        assert not config(variant).retain.active, variant
    assert config("law").method == "law" and config("memit").method == "memit"
    for base in ("default", "memit"):  # VARIANT-z100: VARIANT with z* run longer, nothing else differs
        z100 = config(f"{base}-z100", 2.0)
        assert z100.targets.v_num_grad_steps == 100 and config(base).targets.v_num_grad_steps == 20
        assert z100.targets.v_extra_steps == 0
        assert z100.replace(v_num_grad_steps=20, v_extra_steps=config(base).targets.v_extra_steps) == config(base, 2.0)
        assert "z* up to 100 steps" in bench.knob_doc(f"{base}-z100")
    for bound in (1, 3):  # default-x80bB: the default with extra z* steps for the facts above loss B
        extra = config(f"default-x80b{bound}", 2.0)
        assert (extra.targets.v_extra_steps, extra.targets.v_extra_loss) == (80, bound)
        assert extra.replace(v_extra_steps=0, v_extra_loss=3.0) == config("default-neigh1", 2.0).replace(
            v_extra_steps=0
        )
        assert f"80 more steps for the facts whose loss is still above {bound}" in bench.knob_doc(
            f"default-x80b{bound}"
        )
    # VARIANT-nuV / -speos / -law: the default with one field changed, nothing else
    assert config("default-nu2", 0.5) == config("default", 0.5).replace(retain_weight=2.0, retain_neighbourhood=False)
    assert config("default-speos", 0.5) == config("default", 0.5).replace(target="space+eos")
    assert config("default-law", 0.5) == config("default", 0.5).replace(method="law")
    assert config("default-names2000", 0.5) == config("default", 0.5).replace(
        retain_entities=2000, retain_neighbourhood=False
    )
    assert "2000 mined names" in bench.knob_doc("default-names2000")
    assert config("default-neigh2", 0.5) == config("default", 0.5).replace(retain_weight=2.0)
    assert "neighbourhood prompts" in bench.knob_doc("default-neigh2")
    assert config("memit-ent1").retain.retain_entities == 1000  # not read as VARIANT-NAMEvalue
    assert "retain_weight ν = 4" in bench.knob_doc("default-nu4")
