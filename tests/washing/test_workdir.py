"""wash(..., workdir=): one job per folder; every stage checkpointed, so a rerun after a crash at any
stage continues where it stopped and ends with the same deltas, bit for bit; another job is refused."""

from __future__ import annotations

import pytest
import torch

import law_fast as lf
from law_fast.config import WashConfig
from law_fast.facts import Fact
from law_fast.testing import TOKENIZER_TEXT, make_tiny_model
from law_fast.washing import closed_form
from law_fast.washing.checkpoints import WorkdirMismatch

FACTS = [
    Fact("France", "The capital of {} is", "Paris", 0),
    Fact("Danielle Darrieux", "The mother tongue of {} is", "French", 1),
    Fact("Apple", "{} was founded by", "Steve Jobs", 2),
]
CONFIG = WashConfig.create(
    layers=(1, 2, 3),
    method="law",
    only_known=False,
    v_num_grad_steps=3,
    total_iters=10,
    learning_rate=1e-4,
    stats_max_length=64,
    prune_requests=False,
)


class Crash(RuntimeError):
    pass


def _wash(tok, workdir, monkeypatch=None, crash_at=None, facts=FACTS, model=None, config=CONFIG):
    """Wash a fresh tiny GPT-2 (the same each time); ``crash_at`` = (function name, n): that function's
    n-th call raises, as a kill would stop the run there.  Returns (deltas, {name: calls})."""
    model = model or make_tiny_model("gpt2", len(tok))
    calls = {"memit_update": 0, "law_optimize": 0}
    for name in calls:
        real = getattr(closed_form, name)

        def counted(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            if crash_at == (_name, calls[_name]):
                raise Crash(_name)
            return _real(*a, **k)

        monkeypatch.setattr(closed_form, name, counted)
    result = lf.wash(model, tok, facts, config, corpus=TOKENIZER_TEXT * 4, progress=False, workdir=workdir)
    return {k: v.clone() for k, v in result.deltas.items()}, calls, result


def test_a_rerun_continues_after_a_crash_at_any_stage(tiny_tokenizer, tmp_path, monkeypatch):
    plain, calls, result = _wash(tiny_tokenizer, None, monkeypatch)
    assert calls == {"memit_update": 3, "law_optimize": 3}
    for crash in [("memit_update", 2), ("law_optimize", 1), ("law_optimize", 3)]:
        workdir = tmp_path / f"{crash[0]}-{crash[1]}"
        with pytest.raises(Crash):
            _wash(tiny_tokenizer, workdir, monkeypatch, crash)
        resumed, calls, result = _wash(tiny_tokenizer, workdir, monkeypatch)
        done_init = min(crash[1] - 1, 3) if crash[0] == "memit_update" else 3
        done_law = crash[1] - 1 if crash[0] == "law_optimize" else 0
        assert calls == {"memit_update": 3 - done_init, "law_optimize": 3 - done_law}, (crash, calls)
        assert sorted(resumed) == sorted(plain)
        for layer in plain:
            assert torch.equal(resumed[layer], plain[layer]), (crash, layer)
        again, calls, result2 = _wash(tiny_tokenizer, workdir, monkeypatch)
        assert calls == {"memit_update": 0, "law_optimize": 0}  # everything from the checkpoints
        assert all(torch.equal(again[k], plain[k]) for k in plain)
        assert result2.report.per_layer[1]["law"] == result.report.per_layer[1]["law"]


def test_another_job_is_refused_and_a_bad_stage_file_recomputed(tiny_tokenizer, tmp_path, monkeypatch):
    plain, _, _ = _wash(tiny_tokenizer, tmp_path, monkeypatch)
    with pytest.raises(WorkdirMismatch, match=r"made for another job: the facts \(3 facts there, 2 here"):
        _wash(tiny_tokenizer, tmp_path, monkeypatch, facts=FACTS[:2])
    other = make_tiny_model("gpt2", len(tiny_tokenizer), seed=1)
    with pytest.raises(WorkdirMismatch, match=r"the model \(weights"):
        _wash(tiny_tokenizer, tmp_path, monkeypatch, model=other)
    (stage,) = tmp_path.glob("stages-*")
    damaged = stage / "law-L2.pt"
    damaged.write_bytes(damaged.read_bytes()[:-50] + bytes(50))
    with pytest.warns(UserWarning, match="law-L2.pt is unusable"):
        again, calls, _ = _wash(tiny_tokenizer, tmp_path, monkeypatch)
    assert calls == {"memit_update": 0, "law_optimize": 1}
    assert all(torch.equal(again[k], plain[k]) for k in plain)
    # another config of the same job: its own stages, the same z*
    other_config = CONFIG.replace(total_iters=12)
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    lf.wash(model, tiny_tokenizer, FACTS, other_config, corpus=TOKENIZER_TEXT * 4, progress=False, workdir=tmp_path)
    assert len(list(tmp_path.glob("stages-*"))) == 2 and len(list(tmp_path.glob("targets-*"))) == 1


def test_the_elimination_decisions_are_checkpointed(tiny_tokenizer, tmp_path, monkeypatch):
    """With successive elimination the facts still produced after each LaW layer are saved with it: the
    tiny random model produces none of them, so the plain run stops after the first LaW layer, and so
    does a resumed one, from the checkpoint."""
    config = CONFIG.replace(prune_requests=True)
    plain, calls, result = _wash(tiny_tokenizer, None, monkeypatch, config=config)
    assert calls["law_optimize"] == 1 and result.report.per_layer[0]["still_known_after"] == 0
    with pytest.raises(Crash):
        _wash(tiny_tokenizer, tmp_path, monkeypatch, ("memit_update", 3), config=config)
    resumed, calls, result = _wash(tiny_tokenizer, tmp_path, monkeypatch, config=config)
    assert calls == {"memit_update": 1, "law_optimize": 1}
    again, calls, result = _wash(tiny_tokenizer, tmp_path, monkeypatch, config=config)
    assert calls == {"memit_update": 0, "law_optimize": 0} and result.report.per_layer[0]["still_known_after"] == 0
    assert sorted(again) == sorted(plain) and all(torch.equal(again[k], plain[k]) for k in plain)


def _edit_energy(model, deltas_of, tok, config, templates):
    """Σ_layers ‖Δ_l K_wᵀ‖² with the realised Δ (weights after − before, in float32) and the float32 model's keys."""
    from law_fast.washing.keys import compute_keys

    adapter = lf.get_adapter(model)
    keys, _ = compute_keys(model, adapter, tok, FACTS, templates, list(config.layers))
    return sum(float((deltas_of[layer].double() @ keys[layer].double().T).pow(2).sum()) for layer in config.layers)


def test_a_bfloat16_model_keeps_the_edits_of_law(tiny_tokenizer):
    """On a bfloat16 model the edited down-projections are float32 islands.  (1) LaW's refinement of the
    MEMIT init (Δ_law − Δ_memit of a float32 run: Adam steps of ~1e-5) added to the bfloat16 weights
    keeps ‖ΔK_w‖² within 1 % — plain bfloat16 weights would round most of it away; (2) the whole wash run
    in bfloat16 ends with a ‖ΔK_w‖² close to the float32 run's (measured 5 % apart on this tiny model:
    the bfloat16 forward passes behind keys, z* and statistics, not the edits' storage), and revert gives
    the bfloat16 model back bit for bit."""
    tok = tiny_tokenizer
    config = CONFIG.replace(learning_rate=1e-5, total_iters=20)

    def fresh(dtype):
        return make_tiny_model("llama", len(tok)).to(torch.bfloat16).to(dtype)  # the same weights in both

    def realised(model, before, adapter):
        out = {}
        for layer in config.layers:
            W = model.get_parameter(adapter.down_proj_name(layer)).detach().float() - before[layer].float()
            out[layer] = W.T if adapter.transposed else W
        return out

    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = fresh(dtype)
        adapter = lf.get_adapter(model)
        names = {layer: adapter.down_proj_name(layer) for layer in config.layers}
        before = {layer: model.get_parameter(n).detach().clone() for layer, n in names.items()}
        result = lf.wash(model, tok, FACTS, config, corpus=TOKENIZER_TEXT * 4, progress=False)
        runs[dtype] = (realised(model, before, adapter), result.report.context_templates, result.deltas)
        result.revert()
        assert all(torch.equal(model.get_parameter(n), before[layer]) for layer, n in names.items())
        assert all(model.get_parameter(n).dtype == dtype for n in names.values())
        assert not any(adapter.down_proj_module(model, layer)._forward_hooks for layer in config.layers)
    templates = runs[torch.float32][1]
    reference = fresh(torch.float32)
    memit = lf.wash(
        fresh(torch.float32), tok, FACTS, config.replace(method="memit"), corpus=TOKENIZER_TEXT * 4, progress=False
    )
    refinement = {layer: runs[torch.float32][2][layer] - memit.deltas[layer] for layer in config.layers}
    exact = _edit_energy(reference, refinement, tok, config, templates)
    model = fresh(torch.bfloat16)
    adapter = lf.get_adapter(model)
    before = {layer: adapter.weight(model, layer).detach().clone() for layer in config.layers}
    plain = {
        layer: (before[layer].float() + refinement[layer]).to(torch.bfloat16).float() - before[layer].float()
        for layer in config.layers
    }
    for layer in config.layers:
        adapter.add_to_weight(model, layer, refinement[layer])
    before_stored = {layer: b.T if adapter.transposed else b for layer, b in before.items()}
    kept = realised(model, before_stored, adapter)
    island = _edit_energy(reference, kept, tok, config, templates)
    assert abs(island / exact - 1) < 0.01, (island, exact)

    # the island stores the refinement itself (float32); bfloat16 weights alone would not (measured: 15 % of
    # its norm off — its steps are near the weights' bfloat16 spacing; the energy ‖ΔK_w‖² of that rounded
    # refinement lands 3 to 9 % off, by chance, depending on the CPU's BLAS)
    def distance(edits):
        return sum(float((edits[layer] - refinement[layer]).norm() ** 2) for layer in config.layers) ** 0.5

    size = sum(float(refinement[layer].norm() ** 2) for layer in config.layers) ** 0.5
    assert distance(kept) < 1e-3 * size and distance(plain) > 0.1 * size, (distance(kept), distance(plain), size)
    whole = {d: _edit_energy(reference, runs[d][0], tok, config, templates) for d in runs}
    assert abs(whole[torch.bfloat16] / whole[torch.float32] - 1) < 0.1, whole


def test_revert_of_a_second_wash_keeps_the_first_washs_float32_island(tiny_tokenizer):
    """Two washes of one bfloat16 model: reverting the second gives back the first's float32 edits exactly
    (the island stays); reverting the first then gives back the bfloat16 model."""
    tok = tiny_tokenizer
    config = CONFIG.replace(method="memit")
    model = make_tiny_model("llama", len(tok)).to(torch.bfloat16)
    adapter = lf.get_adapter(model)
    names = [adapter.down_proj_name(layer) for layer in config.layers]
    original = {n: model.get_parameter(n).detach().clone() for n in names}
    first = lf.wash(model, tok, FACTS[:2], config, corpus=TOKENIZER_TEXT * 4, progress=False)
    edited = {n: model.get_parameter(n).detach().clone() for n in names}
    assert all(w.dtype == torch.float32 for w in edited.values())
    second = lf.wash(model, tok, FACTS[2:], config, corpus=TOKENIZER_TEXT * 4, progress=False)
    assert not all(torch.equal(model.get_parameter(n), edited[n]) for n in names)
    second.revert()
    assert all(torch.equal(model.get_parameter(n), edited[n]) for n in names)
    first.revert()
    assert all(torch.equal(model.get_parameter(n), original[n]) and original[n].dtype == torch.bfloat16 for n in names)
