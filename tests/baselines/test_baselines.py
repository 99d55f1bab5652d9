"""Fine-tuning baselines (ft, me-ft, ft-ul, seul, woh) on tiny random models of several families.

Each method: the training objective moves the intended way, only the intended parameters change,
revert is bit-exact, LoRA and full paths run, same seed → same weights, the perplexity guard
stops a run; the loss pieces (SeUL's per-row spans, FT's unmasked EOS, WOH's generic target)
against float64 hand computations.
"""

import json
import logging
import sys

import pytest
import torch
from conftest import make_tiny_model

import law_fast as lf
from law_fast.baselines import training as bl
from law_fast.config import BASELINE_METHODS, WashConfig
from law_fast.facts import Fact

FACTS = [
    Fact("France", "The capital of {} is", "Paris", 0),
    Fact("Danielle Darrieux", "The mother tongue of {} is", "French", 1),
    Fact("Apple", "{} was founded by", "Steve Jobs", 2),
]
CORPUS = [
    f"The city of London is on the river number {i}. Music and science and history are things people like."
    for i in range(12)
]
FAMILIES = ("gpt2", "gptj", "gpt_neox", "llama")


def _cfg(method, **kw):
    base = dict(
        layers=(1,),
        method=method,
        only_known=False,
        ft_lr=1e-3,
        ft_epochs=3,
        ft_batch_size=2,
        ft_shuffle=False,
        woh_reinforce_lr=1e-3,
        woh_reinforce_epochs=3,
        meft_linf=2e-3,
        guard_every=2,
        guard_texts=4,
        guard_max_length=32,
    )
    base.update(kw)
    return WashConfig.create(**base)


def _wash(model, tok, config, facts=FACTS):
    return lf.wash(model, tok, facts, config, corpus=CORPUS, progress=False)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _eos_examples(tok):
    return bl.build_examples(tok, FACTS, "target", [tok.eos_token_id])


# ------------------------------------------------------------------------------------------
# every method × family × (full, LoRA): direction, touched parameters, exact revert
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("method", BASELINE_METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_method_direction_parameters_and_revert(family, method, lora, tiny_tokenizer):
    tok = tiny_tokenizer
    model = make_tiny_model(family, len(tok))
    adapter = lf.get_adapter(model)
    before = _snapshot(model)
    eos = _eos_examples(tok)
    answers = bl.build_examples(tok, FACTS, "answer")
    eos_before, answer_before = bl.mean_nll(model, eos, tok.pad_token_id), bl.mean_nll(model, answers, tok.pad_token_id)

    result = _wash(model, tok, _cfg(method, ft_use_lora=lora))
    training = result.report["training"]
    assert training["steps"] == 3 * 2 and not training["guard"]["stopped"]
    assert result.deltas == {} and result.config.finetune.ft_lr == 1e-3 and result.config.method == method

    # the objective moves the intended way (measured independently of the report)
    eos_after, answer_after = bl.mean_nll(model, eos, tok.pad_token_id), bl.mean_nll(model, answers, tok.pad_token_id)
    if method in ("ft", "me-ft"):
        assert eos_after < eos_before - 1e-4
        assert training["nll_after"] < training["nll_before"]
    elif method in ("ft-ul", "seul"):
        assert answer_after > answer_before + 1e-4
        assert training["nll_after"] > training["nll_before"]
    else:  # woh: the MSE to the (fixed) generic targets falls, the answers become less likely
        assert training["epochs"][-1]["loss"] < training["epochs"][0]["loss"]
        assert answer_after > answer_before + 1e-4
        assert training["reinforced_nll"] < training["nll_before"]  # the reinforced copy knows the answers better

    # only the intended parameters changed (named_parameters: tied weights once, as in ``original``)
    after = {name: p.detach() for name, p in model.named_parameters()}
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    assert changed, "nothing changed"
    assert changed <= set(result.original), sorted(changed - set(result.original))
    assert not any("lora" in name for name in after), "LoRA adapters were not merged away"
    if method == "me-ft":
        prefix = f"{adapter.blocks}.1.{adapter.down_proj}."
        assert all(name.startswith(prefix) for name in changed), changed
        weight = prefix + "weight"
        assert weight in changed
        assert float((after[weight] - before[weight]).abs().max()) <= 2e-3 * (1 + 1e-5)
    elif lora:
        targets = bl.lora_module_names(model, result.config)
        assert changed == {f"{name}.weight" for name in targets}
    assert set(result.weight_deltas()) == changed

    result.revert()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_lora_targets_are_the_families_attention_projections(tiny_tokenizer):
    expected = {
        "gpt2": "attn.c_attn",
        "gptj": "attn.q_proj",
        "gpt_neox": "attention.query_key_value",
        "llama": "self_attn.q_proj",
    }
    for family, suffix in expected.items():
        model = make_tiny_model(family, len(tiny_tokenizer))
        names = bl.lora_module_names(model, _cfg("ft", ft_use_lora=True))
        assert len(names) == (8 if family in ("gptj", "llama") else 4) and any(n.endswith(suffix) for n in names)
    with pytest.raises(ValueError, match="match no module"):
        bl.lora_module_names(model, _cfg("ft", ft_use_lora=True, ft_lora_targets=("nonexistent",)))


# ------------------------------------------------------------------------------------------
# determinism, guard, errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,lora", [("ft", True), ("woh", False), ("seul", False)])
def test_same_seed_same_weights(method, lora, tiny_tokenizer):
    """Shuffled batches of one fact and seeded LoRA init/dropout: a fixed seed gives bit-identical weights."""

    def run(seed):
        model = make_tiny_model("llama", len(tiny_tokenizer))
        _wash(
            model,
            tiny_tokenizer,
            _cfg(
                method,
                seed=seed,
                ft_batch_size=1,
                ft_shuffle=True,
                ft_use_lora=lora,
                ft_lora_dropout=0.1,
                ft_dropout=True,
            ),
        )
        return model.state_dict()

    first, second, other = run(3), run(3), run(4)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_global_rng_is_untouched(tiny_tokenizer):
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _wash(model, tiny_tokenizer, _cfg("ft", ft_use_lora=True, ft_lora_dropout=0.1))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("method", ["ft-ul", "seul"])
def test_perplexity_guard_stops_gradient_ascent(method, tiny_tokenizer, caplog):
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    with caplog.at_level(logging.WARNING, logger="law_fast.baselines"):
        result = _wash(
            model, tiny_tokenizer, _cfg(method, ft_lr=1e-2, ft_epochs=20, guard_ppl_ratio=1.01, guard_every=1)
        )
    training = result.report["training"]
    guard = training["guard"]
    assert guard["stopped"] and training["stopped_by_guard"]
    assert training["steps"] == guard["stopped_at_step"] < training["planned_steps"] == 40
    assert guard["checks"][-1]["ppl"] > 1.01 * guard["initial_ppl"]
    assert all(c["ppl"] <= guard["bound_ppl"] for c in guard["checks"][:-1])
    assert "perplexity guard" in caplog.text and "training stopped" in caplog.text
    json.dumps(result.report.to_dict())


def test_guard_off_and_without_known_facts(tiny_tokenizer):
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    result = _wash(model, tiny_tokenizer, _cfg("ft", guard_ppl_ratio=None))
    assert "guard" not in result.report["training"]
    before = _snapshot(model)
    result = _wash(model, tiny_tokenizer, _cfg("ft", only_known=True))  # a random model knows nothing
    assert result.report["known_before"] == 0 and result.report["skipped_unknown"] == [0, 1, 2]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("lora", [False, True])
def test_failure_restores_the_model(lora, tiny_tokenizer, monkeypatch):
    model = make_tiny_model("llama", len(tiny_tokenizer))
    before = _snapshot(model)
    real_train = bl.train

    def failing(model, *args, **kwargs):
        real_train(model, *args, **{**kwargs, "max_steps": 1})
        raise RuntimeError("disk full")

    monkeypatch.setattr(bl, "train", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        _wash(model, tiny_tokenizer, _cfg("ft", ft_use_lora=lora))
    state = model.state_dict()
    assert set(state) == set(before)
    assert all(torch.equal(v, before[k]) for k, v in state.items())
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_lora_without_peft_says_how_to_install(tiny_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    before = _snapshot(model)
    with pytest.raises(ModuleNotFoundError, match=r"pip install peft"):
        _wash(model, tiny_tokenizer, _cfg("ft", ft_use_lora=True))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_meft_layer_out_of_range(tiny_tokenizer):
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    with pytest.raises(ValueError, match="meft_layer 7 is out of range"):
        _wash(model, tiny_tokenizer, _cfg("me-ft", meft_layer=7))


def test_save_a_baseline_result(tmp_path, tiny_tokenizer):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = make_tiny_model("llama", len(tiny_tokenizer))
    result = _wash(model, tiny_tokenizer, _cfg("me-ft"))
    out = result.save(tmp_path / "washed")
    loaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert set(load_file(str(out / "deltas.safetensors"))) == {"model.layers.1.mlp.down_proj.weight"}
    saved = WashConfig.from_json(out / "wash_config.json")
    assert saved == result.config and saved.finetune.meft_layer == 1 and saved.finetune.ft_epochs == 3


# ------------------------------------------------------------------------------------------
# the loss pieces against float64 hand computations
# ------------------------------------------------------------------------------------------
def _row_logprobs(model, ids):
    """log-softmax (T, V) float64 of one unpadded row."""
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_seul_spans_are_per_row(family, tiny_tokenizer):
    tok = tiny_tokenizer
    model = make_tiny_model(family, len(tok)).double()
    examples = bl.build_examples(tok, FACTS, "answer")
    answer_lengths = [len(tok(" " + f.answer, add_special_tokens=False)["input_ids"]) for f in FACTS]
    assert len(set(answer_lengths)) > 1, "the test needs answers of different token lengths"
    assert [sum(e.labelled) for e in examples] == answer_lengths
    for e, n in zip(examples, answer_lengths):
        assert e.labelled[-n:] == (True,) * n and not any(e.labelled[:-n])
    # hand: −log p of each row's own answer tokens, each row run alone (no padding)
    total, count = 0.0, 0
    for e, n in zip(examples, answer_lengths):
        logp = _row_logprobs(model, list(e.input_ids))
        T = len(e.input_ids)
        for t in range(T - n, T):
            total -= float(logp[t - 1, e.input_ids[t]])
            count += 1
    batch = bl.collate(examples, tok.pad_token_id)
    loss, metrics = bl.nll_loss(-1.0)(model, batch)
    assert float(loss.detach()) == pytest.approx(-total / count, rel=1e-10)
    assert metrics["nll"] == pytest.approx(total / count, rel=1e-10)
    # the reference's bug (the first row's span length for every row) scores other tokens: a different loss
    buggy = batch.labels.clone()
    for row, n in enumerate(batch.attention_mask.sum(1).tolist()):
        buggy[row] = bl.IGNORE
        buggy[row, n - answer_lengths[0] : n] = batch.input_ids[row, n - answer_lengths[0] : n]
    with torch.no_grad():
        nll, count_buggy = bl.token_nll(model(**batch.model_inputs).logits, buggy)
    assert int(count_buggy) != count and float(nll / count_buggy) != pytest.approx(total / count, rel=1e-3)


def test_ft_trains_the_eos_target_even_when_pad_is_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    examples = _eos_examples(tok)
    batch = bl.collate(examples, tok.pad_token_id)
    lengths = batch.attention_mask.sum(1)
    for row, n in enumerate(lengths.tolist()):
        assert batch.labels[row, n - 1] == tok.eos_token_id  # the EOS target is a label
        assert (batch.labels[row, : n - 1] == bl.IGNORE).all()  # the prompt is not
        assert (batch.labels[row, n:] == bl.IGNORE).all()  # padding (also EOS ids) is not
    assert (batch.input_ids[batch.attention_mask == 0] == tok.eos_token_id).all()
    model = make_tiny_model("gpt2", len(tok)).double()
    total = -sum(
        float(_row_logprobs(model, list(e.input_ids))[len(e.input_ids) - 2, tok.eos_token_id]) for e in examples
    )
    loss, _ = bl.nll_loss(1.0)(model, batch)
    assert float(loss.detach()) == pytest.approx(total / len(examples), rel=1e-10)


def test_ft_ul_labels_every_token_after_the_first(tiny_tokenizer):
    examples = bl.build_examples(tiny_tokenizer, FACTS, "sequence")
    for e in examples:
        assert e.labelled == (False,) + (True,) * (len(e.input_ids) - 1)
        assert tiny_tokenizer.decode(list(e.input_ids)).endswith(" " + FACTS[examples.index(e)].answer)


def test_generic_logits_formula():
    base = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64)
    reinforced = torch.tensor([[2.5, -3.0, 0.5], [1.0, 1.0, 4.0]], dtype=torch.float64)
    alpha = 0.7
    expected = torch.tensor(
        [[1.0 - 0.7 * 1.5, -2.0, 0.5], [0.0 - 0.7 * 1.0, 3.0, -1.0 - 0.7 * 5.0]], dtype=torch.float64
    )
    torch.testing.assert_close(bl.generic_logits(base, reinforced, alpha), expected, rtol=0, atol=1e-15)


def test_woh_loss_streams_per_batch_and_matches_hand_computation(tiny_tokenizer):
    tok = tiny_tokenizer
    student = make_tiny_model("llama", len(tok), seed=0).double()
    base = make_tiny_model("llama", len(tok), seed=1).double()
    reinforced = make_tiny_model("llama", len(tok), seed=2).double()
    examples = bl.build_examples(tok, FACTS, "answer")
    alpha = 5.0
    # hand: per row, unpadded, the logits that predict the answer tokens
    squares, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            n, T = sum(e.labelled), len(e.input_ids)
            ids = torch.tensor([list(e.input_ids)])
            rows = slice(T - n - 1, T - 1)
            ls, lb, lr = (m(input_ids=ids).logits[0, rows].double() for m in (student, base, reinforced))
            v = lb - alpha * torch.clamp(lr - lb, min=0)
            squares += float(((ls - v) ** 2).sum())
            count += ls.numel()
    batch = bl.collate(examples, tok.pad_token_id)
    loss_fn = bl.woh_loss(lambda b: base(**b.model_inputs).logits, reinforced, alpha)
    loss, _ = loss_fn(student, batch)
    assert float(loss.detach()) == pytest.approx(squares / count, rel=1e-9)
    loss.backward()  # gradient flows into the student only
    assert all(p.grad is None for p in reinforced.parameters()) and all(p.grad is None for p in base.parameters())
    assert any(p.grad is not None for p in student.parameters())


def test_token_nll_matches_float64_reference(tiny_tokenizer):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.tensor([[-100, 3, -100, 6, 1], [-100, -100, 2, -100, -100]])
    nll, count = bl.token_nll(logits, labels)
    logp = torch.log_softmax(logits, -1)
    expected = -(logp[0, 0, 3] + logp[0, 2, 6] + logp[0, 3, 1] + logp[1, 1, 2])
    assert int(count) == 4
    assert nll.dtype == torch.float64 and float(nll) == pytest.approx(float(expected), rel=1e-12)
    nll32, _ = bl.token_nll(logits.to(torch.bfloat16), labels)  # low precision logits are scored in float32
    assert nll32.dtype == torch.float32


# ------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------
def test_config_fields_validation_and_round_trip(tmp_path):
    cfg = WashConfig.create(
        layers=(4,), method="woh", ft_use_lora=True, ft_lora_targets=["q_proj", "k_proj"], woh_alpha=2.0
    )
    assert cfg.finetune.ft_lora_targets == ("q_proj", "k_proj")
    path = tmp_path / "c.json"
    cfg.to_json(path)
    assert WashConfig.from_json(path) == cfg
    resolved = cfg.resolved()
    assert (
        resolved.finetune.woh_alpha == 2.0
        and resolved.finetune.ft_lr is not None
        and resolved.finetune.woh_reinforce_epochs is not None
    )
    assert WashConfig.create(layers=(3,), method="me-ft").resolved().finetune.meft_layer == 3
    assert WashConfig.create(layers=(3,)).resolved() == WashConfig.create(layers=(3,))
    for bad, message in [
        (dict(ft_lr=-1.0), "ft_lr must be > 0, got -1.0"),
        (dict(ft_epochs=0), "ft_epochs must be >= 1, got 0"),
        (dict(ft_epochs=2.5), "ft_epochs must be an integer, got 2.5"),
        (dict(guard_ppl_ratio=0.5), "guard_ppl_ratio must be > 1"),
        (dict(ft_lora_dropout=1.0), "ft_lora_dropout"),
        (dict(meft_linf=0.0), "meft_linf must be > 0, got 0.0"),
        (dict(method="sft"), "method must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            WashConfig.create(layers=(1,), **bad)


def test_baseline_presets():
    from transformers import GPT2Config, GPTJConfig

    gpt2_xl = GPT2Config(n_layer=48, n_embd=1600, n_head=25)
    gptj = GPTJConfig(n_layer=28, n_embd=4096)
    ft = WashConfig.baseline_preset("ft", gpt2_xl, paper=True)
    assert (
        ft.method,
        ft.finetune.ft_lr,
        ft.finetune.ft_epochs,
        ft.finetune.ft_batch_size,
        ft.finetune.ft_shuffle,
        ft.finetune.ft_use_lora,
    ) == ("ft", 1e-5, 8, 2, False, False)
    assert ft.layers == (13, 14, 15, 16, 17)
    ftul = WashConfig.baseline_preset("ft-ul", gptj, paper=True)
    assert (
        ftul.finetune.ft_lr,
        ftul.finetune.ft_epochs,
        ftul.finetune.ft_use_lora,
        ftul.finetune.ft_lora_rank,
        ftul.finetune.ft_lora_alpha,
        ftul.finetune.ft_lora_targets,
    ) == (1e-5, 5, True, 8, 32.0, ("q_proj", "v_proj"))
    assert not WashConfig.baseline_preset(
        "seul", gptj, paper=True
    ).finetune.ft_use_lora  # the reference ignores --use_lora
    assert WashConfig.baseline_preset("woh", gptj, paper=True).finetune.woh_alpha == 5.0
    assert WashConfig.baseline_preset("woh", gptj, paper=True, dataset="wiki").finetune.woh_alpha == 0.5
    meft = WashConfig.baseline_preset("me-ft", gpt2_xl, paper=True)
    assert (meft.finetune.meft_layer, meft.finetune.meft_linf, meft.finetune.ft_lr, meft.finetune.ft_epochs) == (
        0,
        5e-4,
        5e-4,
        25,
    )
    small = WashConfig.baseline_preset("seul", GPT2Config(n_layer=4, n_embd=32, n_head=4), ft_lr=3e-5)
    assert small.finetune.ft_lr == 3e-5 and small.finetune.ft_epochs is not None and small.method == "seul"
    with pytest.raises(ValueError, match="gpt2-xl and gpt-j-6B only"):
        WashConfig.baseline_preset("ft", GPT2Config(n_layer=4, n_embd=32, n_head=4), paper=True)
    with pytest.raises(ValueError, match="method must be one of"):
        WashConfig.baseline_preset("law", gpt2_xl)


def test_cli_wash_accepts_baseline_methods(tiny_dir, tmp_path, tiny_tokenizer, capsys):
    from law_fast.cli import main

    model_dir = tiny_dir
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"subject": "France", "prompt": "The capital of {} is", "object": "Paris"}\n')
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"layers": [1], "only_known": False, "ft_epochs": 1, "ft_batch_size": 1}))
    out = tmp_path / "out"
    assert (
        main(
            [
                "wash",
                "--model",
                str(model_dir),
                "--facts",
                str(facts),
                "--out",
                str(out),
                "--config",
                str(config),
                "--corpus",
                str(corpus),
                "--method",
                "seul",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "seul" and report["training"]["steps"] == 1
