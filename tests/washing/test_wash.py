"""The whole pipeline on tiny random models of every family: edits, report, revert, save, errors."""

import json
from pathlib import Path

import pytest
import torch

import law_fast as lf
from law_fast.config import WashConfig
from law_fast.facts import Fact

FACTS = [
    Fact("France", "The capital of {} is", "Paris", 0),
    Fact("Danielle Darrieux", "The mother tongue of {} is", "French", 1),
    Fact("Apple", "{} was founded by", "Steve Jobs", 2),
]
CORPUS = [
    f"The city of London is on the river number {i}. Music and science and history are things people like."
    for i in range(40)
]


def _cfg(**kw):
    base = dict(
        layers=(1, 2),
        only_known=False,
        prune_requests=False,
        v_num_grad_steps=3,
        total_iters=20,
        learning_rate=1e-4,
        disruption_budget=0.05,
        disruption_per_fact=None,
        stats_max_length=64,
    )
    base.update(kw)
    return WashConfig.create(**base)


@pytest.mark.parametrize("method", ["law", "memit"])
def test_wash_edits_only_the_configured_layers_and_reverts_exactly(tiny, method):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lf.wash(model, tok, FACTS, _cfg(method=method), corpus=CORPUS, progress=False)
    adapter = lf.get_adapter(model)
    edited = {adapter.down_proj_name(layer) for layer in (1, 2)}
    after = model.state_dict()
    for name, value in after.items():
        if name in edited:
            assert not torch.equal(value, before[name]), name
        else:
            assert torch.equal(value, before[name]), name
    assert sorted(result.deltas) == [1, 2]
    for layer, delta in result.deltas.items():
        assert tuple(delta.shape) == adapter.dims(model, layer)
        stored = before[adapter.down_proj_name(layer)]
        original = stored.T if adapter.transposed else stored
        torch.testing.assert_close(adapter.weight(model, layer).detach() - original, delta, rtol=1e-4, atol=1e-6)
    rep = result.report
    assert rep["n_facts"] == 3 and rep["n_washed_requests"] == 3
    assert [r["layer"] for r in rep["per_layer"]] == [1, 2]
    assert all("memit" in r for r in rep["per_layer"])
    assert ("law" in rep["per_layer"][0]) == (method == "law")
    assert set(rep["timings_s"]) >= {"initial check", "covariance", "targets", "memit init"}
    if Path("/proc/self/statm").exists():  # memory at each stage's end, the peak never falling
        assert set(rep["memory_mb"]) == set(rep["timings_s"])
        assert all(0 < m["rss"] <= m["peak"] for m in rep["memory_mb"].values())
    json.dumps(rep, default=str)
    result.revert()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_wash_result_evaluates_with_the_evaluation_suite(tiny_tokenizer):
    from conftest import make_tiny_model

    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    result = lf.wash(model, tiny_tokenizer, FACTS, _cfg(), corpus=CORPUS, progress=False)
    report = result.evaluate(FACTS, corpus=CORPUS[:2], progress=False)
    direct = lf.evaluate(model, tiny_tokenizer, facts=FACTS, corpus=CORPUS[:2], progress=False)
    assert report.knowledge == direct.knowledge and report.knowledge
    assert report.fluency == direct.fluency


def test_save_round_trip_and_refusals(tmp_path, tiny_tokenizer):
    from conftest import make_tiny_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = make_tiny_model("llama", len(tiny_tokenizer))
    result = lf.wash(model, tiny_tokenizer, FACTS, _cfg(), corpus=CORPUS, progress=False)
    out = result.save(tmp_path / "washed")
    loaded = AutoModelForCausalLM.from_pretrained(str(out))
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    deltas = load_file(str(out / "deltas.safetensors"))
    assert set(deltas) == {"model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"}
    assert WashConfig.from_json(out / "wash_config.json") == result.config
    assert json.loads((out / "report.json").read_text())["n_facts"] == 3
    with pytest.raises(FileExistsError, match="not empty"):
        result.save(out)
    assert result.save(out, overwrite=True) == out.resolve()  # a previous law_fast result may be replaced
    # never over the source directory, nor over a folder that holds it (overwrite would delete it)
    source = tmp_path / "models" / "source"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    model.config._name_or_path = str(source)
    for target in (source, source.parent, tmp_path):
        with pytest.raises(ValueError, match="is or holds the model's source"):
            result.save(target, overwrite=True)
    assert (source / "config.json").is_file()
    # a folder law_fast did not write is never replaced, a file is no directory
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a law_fast result"):
        result.save(foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileExistsError, match="is a file"):
        result.save(foreign / "notes.txt", overwrite=True)
    assert not list(tmp_path.glob(".*.tmp-*"))  # no temporary folder left behind


def test_failure_restores_original_weights(tiny, monkeypatch):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def boom(*a, **k):
        raise RuntimeError("solver failed")

    import law_fast.washing.closed_form as closed_form

    monkeypatch.setattr(closed_form, "law_optimize", boom)
    with pytest.raises(RuntimeError, match="solver failed"):
        lf.wash(model, tok, FACTS, _cfg(), corpus=CORPUS, progress=False)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("method", ["law", "ft"])
def test_interrupt_in_the_final_check_restores_original_weights(tiny_tokenizer, monkeypatch, method):
    """The revert-on-error promise holds to the last step: Ctrl-C during the final check (after the
    method has edited the model) leaves the original weights, for the closed-form methods and the baselines."""
    import law_fast.washing.result as result_module
    from law_fast.testing import make_tiny_model

    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = result_module.known_facts
    calls = []

    def interrupted_second_call(*args, **kwargs):  # the initial check runs, the final check is interrupted
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(result_module, "known_facts", interrupted_second_call)
    config = _cfg(method=method).replace(ft_epochs=1, ft_batch_size=2, ft_lr=1e-2, guard_ppl_ratio=None)
    with pytest.raises(KeyboardInterrupt):
        lf.wash(model, tiny_tokenizer, FACTS, config, corpus=CORPUS, progress=False)
    assert len(calls) == 2
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_bad_layers_and_empty_facts(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="exceed the model's 4 blocks"):
        lf.wash(model, tok, FACTS, _cfg(layers=(3, 4)), corpus=CORPUS, progress=False)
    with pytest.raises(ValueError, match="no facts"):
        lf.wash(model, tok, [], _cfg(), corpus=CORPUS, progress=False)
    with pytest.raises(ValueError, match="v_loss_layer 9 is beyond the model's 4 blocks"):
        lf.wash(model, tok, FACTS, _cfg(v_loss_layer=9), corpus=CORPUS, progress=False)


def test_only_known_skips_unknown_facts(tiny):
    model, tok = tiny
    result = lf.wash(model, tok, FACTS, _cfg(only_known=True), corpus=CORPUS, progress=False)
    assert result.report["known_before"] == 0  # a random model knows nothing
    assert result.report["skipped_unknown"] == [0, 1, 2]
    assert result.deltas == {}


def test_config_json_round_trip_and_validation(tmp_path):
    cfg = WashConfig.create(layers=(4, 5, 6), lr_after_hitting_boundary=1e-9)
    path = tmp_path / "c.json"
    cfg.to_json(path)
    assert WashConfig.from_json(path) == cfg
    with pytest.raises(ValueError, match="unknown WashConfig field"):
        WashConfig.from_dict({**cfg.to_dict(), "lerning_rate": 1})
    with pytest.raises(ValueError, match="strictly ascending"):
        WashConfig.create(layers=(5, 4))
    path.write_text('{"layers": [1,\n')
    with pytest.raises(ValueError, match="line 2"):
        WashConfig.from_json(path)


def test_reference_hparams_import(tmp_path):
    ref = {
        "layers": [13, 14, 15, 16, 17],
        "fact_token": "subject_last",
        "v_num_grad_steps": 20,
        "v_lr": 5e-1,
        "v_loss_layer": 47,
        "v_weight_decay": 0.5,
        "clamp_norm_factor": 0.75,
        "kl_factor": 0.0625,
        "mom2_adjustment": True,
        "mom2_update_weight": 20000,
        "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj",
        "layer_module_tmp": "transformer.h.{}",
        "mlp_module_tmp": "transformer.h.{}.mlp",
        "attn_module_tmp": "transformer.h.{}.attn",
        "ln_f_module": "transformer.ln_f",
        "lm_head_module": "transformer.wte",
        "mom2_dataset": "wikipedia",
        "mom2_n_samples": 100000,
        "mom2_dtype": "float32",
        "learning_rate": 1e-7,
        "total_iters": 1000,
        "beta_ratio": 1.1,
        "decay_factor": 0.75,
        "prune_requests": 1,
        "keep_original_requests": True,
        "compute_initialization_at_once": True,
        "noise_scale": 0.001,
        "layer_selection": "all",
    }
    path = tmp_path / "gpt2-xl-mcf.json"
    path.write_text(json.dumps(ref))
    cfg = WashConfig.from_reference_hparams(path)
    assert cfg.layers == (13, 14, 15, 16, 17) and cfg.memit.lambda_rule == "reference" and cfg.target == "space+eos"
    assert cfg.law.lr_after_hitting_boundary is None and cfg.checks.prune_requests and cfg.checks.keep_original_requests
    assert cfg.stats.stats_dtype == "float32" and cfg.targets.v_loss_layer == 47
    path.write_text(json.dumps({**ref, "mystery": 1}))
    with pytest.raises(ValueError, match="mystery"):
        WashConfig.from_reference_hparams(path)


def test_elimination_stops_when_no_fact_is_left(tiny):
    """A random model produces none of the facts: after the first layer nothing survives, later layers stay unedited."""
    model, tok = tiny
    result = lf.wash(model, tok, FACTS, _cfg(prune_requests=True), corpus=CORPUS, progress=False)
    assert sorted(result.deltas) == [1]
    assert result.report["per_layer"][0]["still_known_after"] == 0


def test_a_fact_longer_than_the_context_is_refused_before_any_work(tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=24, n_embd=32, n_layer=3, n_head=4))
    long_fact = Fact("France", "In a long sentence about rivers and cities and music, the capital of {} is", "Paris", 7)
    with pytest.raises(ValueError, match=r"do not fit in the model's context of 24 tokens.*fact 7"):
        lf.wash(model.eval(), tiny_tokenizer, [FACTS[0], long_fact], _cfg(), corpus=CORPUS, progress=False)
    with pytest.raises(ValueError, match="evaluation prompt"):
        lf.evaluate(model, tiny_tokenizer, facts=[long_fact], progress=False)
