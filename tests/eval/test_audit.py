"""law_fast.audit on hand-checkable models: one that says " Paris" whatever it is asked is found by
every probe for facts whose object is Paris; one that says " the" is found by none; chance levels."""

from __future__ import annotations

import pytest
import torch

import law_fast as lf
from law_fast.eval.audit import AuditConfig, AuditReport, _partners, audit, phrasings_of
from law_fast.facts import Fact

PARIS = [
    Fact("France", "The capital of {} is", "Paris", 0, paraphrases=("France's capital city is",)),
    Fact("Apple", "{} was founded in", "Paris", 1),
    Fact("Danielle Darrieux", "{} was born in", "Paris", 2),
]
DEMOS = [
    Fact("Italy", "The capital of {} is", "Rome", 10),
    Fact("Germany", "The capital of {} is", "Berlin", 11),
    Fact("Spain", "The capital of {} is", "Madrid", 12),
    Fact("Toyota", "{} was founded in", "Japan", 13),
    Fact("Steve", "{} was born in", "London", 14),
]


def _saying(tok, word: str):
    """A tiny GPT-2 whose every position decodes to ``word``'s token: the final norm's weight is 0
    (its output is its bias c, whatever the layer) and the untied head scores only that token (= c)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=3, n_head=4, n_inner=64, tie_word_embeddings=False
    )
    model = GPT2LMHeadModel(config)
    (token,) = tok(word, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        c = torch.randn(32)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(c)
        model.lm_head.weight.zero_()
        model.lm_head.weight[token] = 10 * c / c.norm()
    return model.eval()


@pytest.mark.parametrize("word, found", [(" Paris", True), (" the", False)])
def test_every_probe_finds_what_the_model_says(tiny_tokenizer, word, found):
    model = _saying(tiny_tokenizer, word)
    report = audit(model, tiny_tokenizer, PARIS, demos=DEMOS, relearn_steps=3, samples=4)
    assert list(report.probes) == list(lf.eval.audit.PROBES)
    for name, block in report.probes.items():
        assert block["found"] == (1.0 if found else 0.0), (name, block["found"])
        assert block["n"] == 3 and len(block["per_fact"]) == 3
    assert report.probes["ranking"]["chance"] == pytest.approx(1 / 5)
    assert all(sorted(r) == sorted(lf.eval.audit.PROBES) if found else r == [] for r in report.receipts.values())
    lens = report.probes["lens"]["per_fact"][0]
    assert len(lens["ranks"]) == 3 and lens["best_rank"] == (1 if found else 2)  # " the" beats it at every layer
    assert report.probes["phrasings"]["per_fact"][0]["by_phrasing"]["paraphrase_0"] is found


def test_chance_is_the_partner_answer_and_the_report_round_trips(tiny_tokenizer, tmp_path):
    """A model that says Paris to everything finds the Paris facts — and, at the same rate, a Paris
    partner in the Rome facts' outputs: it is at chance, as it should be."""
    facts = [PARIS[0], DEMOS[0], PARIS[1], DEMOS[1]]
    assert _partners(facts) == [1, 2, 3, 0]
    model = _saying(tiny_tokenizer, " Paris")
    report = audit(model, tiny_tokenizer, facts, original=model, probes=("phrasings", "lens"), demos=DEMOS[2:])
    for block in report.probes.values():
        assert block["found"] == 0.5 and block["chance"] == 0.5
    assert report.original["lens"]["found"] == 0.5
    path = tmp_path / "audit.json"
    report.to_json(path)
    back = AuditReport.from_json(path)
    assert back.to_dict() == report.to_dict() and back.receipts["0"] == ["phrasings", "lens"]
    assert "| lens | 50.0 % | 50.0 % | 50.0 % |" in back.summary()


def test_phrasings_and_bad_inputs(tiny_tokenizer):
    names = phrasings_of(tiny_tokenizer, PARIS[0])
    assert names["question"] == "Question: The capital of France is what?\nAnswer:"
    assert names["inside"] == "Everyone who was there agreed that the capital of France is"
    assert "chat" not in names  # the tiny tokenizer has no chat template
    model = _saying(tiny_tokenizer, " Paris")
    with pytest.raises(ValueError, match=r"probes \['context', 'relearn'\] need demos="):
        audit(model, tiny_tokenizer, PARIS)
    with pytest.raises(ValueError, match="demos must not hold audited facts"):
        audit(model, tiny_tokenizer, PARIS, demos=[PARIS[0]])
    with pytest.raises(ValueError, match=r"probes \['echo'\]"):
        AuditConfig(probes=("echo",))
    with pytest.raises(ValueError, match="needs 4 distractors"):
        audit(model, tiny_tokenizer, PARIS, probes=("ranking",))
    with pytest.raises(ValueError, match="not an audit report"):
        AuditReport.from_dict({"kind": "eval"})


def test_audit_command_writes_report_summary_and_plot(tiny_tokenizer, tmp_path, capsys):
    from law_fast.cli import main
    from law_fast.facts import save_facts_jsonl

    folder = tmp_path / "paris"
    _saying(tiny_tokenizer, " Paris").save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    save_facts_jsonl(PARIS, tmp_path / "facts.jsonl")
    save_facts_jsonl(DEMOS, tmp_path / "demos.jsonl")
    out = tmp_path / "audit.json"
    argv = ["audit", "--model", str(folder), "--original", str(folder), "--facts", str(tmp_path / "facts.jsonl")]
    argv += ["--demos", str(tmp_path / "demos.jsonl"), "--probes", "phrasings,ranking,lens", "--out", str(out)]
    assert main([*argv, "--markdown", str(tmp_path / "a.md"), "--plot", str(tmp_path / "a.png")]) == 0
    report = AuditReport.from_json(out)
    assert list(report.probes) == ["phrasings", "ranking", "lens"] and report.probes["lens"]["found"] == 1.0
    assert (tmp_path / "a.png").stat().st_size > 1000 and "| ranking |" in (tmp_path / "a.md").read_text()
    assert main(["compare", str(out), str(out), "--labels", "a,b"]) == 0
    assert "| phrasings | 100.0 % | 100.0 % |" in capsys.readouterr().out


def test_wash_result_audit_compares_with_the_original(tiny_tokenizer):
    from law_fast.testing import make_tiny_model

    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    config = lf.WashConfig.create(layers=(1, 2), method="memit", only_known=False, v_num_grad_steps=2)
    result = lf.wash(model, tiny_tokenizer, PARIS, config, corpus=["Some text about the city of London."] * 8)
    before = {n: p.clone() for n, p in model.named_parameters()}
    report = result.audit(PARIS, probes=("phrasings", "lens"))
    assert report.original is not None and set(report.original) == {"phrasings", "lens"}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the washed model is untouched


@pytest.mark.parametrize("family", lf.testing.FAMILIES)
def test_lens_decodes_each_blocks_output_on_every_architecture(tiny_tokenizer, family):
    """The lens rank per layer = the answer's rank in the final norm and head applied to the block's output as
    transformers returns it (``output_hidden_states``, one unpadded prompt at a time); at the last block, the
    rank in the model's own logits. Facts of different lengths share a padded batch."""
    from law_fast.eval.audit import _answer_ranks
    from law_fast.hf.adapters import get_adapter
    from law_fast.testing import make_tiny_model

    model = make_tiny_model(family, len(tiny_tokenizer), n_layers=3).double().eval()
    facts = PARIS + DEMOS
    (ranks,) = _answer_ranks(model, tiny_tokenizer, facts, [[f.answer for f in facts]], batch_size=3)
    adapter = get_adapter(model)
    norm, head = model.get_submodule(adapter.final_norm), adapter.lm_head(model)
    for fact, got in zip(facts, ranks):
        enc = tiny_tokenizer(fact.prompt.strip(), return_tensors="pt")
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True)
            logits = [head(norm(h[0, -1])) for h in out.hidden_states[1:-1]] + [out.logits[0, -1]]
        answer = tiny_tokenizer(" " + fact.answer, add_special_tokens=False)["input_ids"][0]
        assert got.tolist() == [1 + int((z > z[answer]).sum()) for z in logits], (family, fact.case_id)


@pytest.mark.parametrize("family", lf.testing.FAMILIES)
def test_every_probe_runs_on_every_architecture(tiny_tokenizer, family):
    """All six probes on a tiny random model of each family, the original alongside: one result per fact and
    probe, rates in [0, 1], and the relearning probe leaves the audited model's weights as they were."""
    from law_fast.testing import make_tiny_model

    model = make_tiny_model(family, len(tiny_tokenizer), n_layers=3).eval()
    before = {n: p.clone() for n, p in model.named_parameters()}
    report = audit(model, tiny_tokenizer, PARIS, original=model, demos=DEMOS, relearn_steps=2, samples=2)
    assert list(report.probes) == list(lf.eval.audit.PROBES) and set(report.original) == set(report.probes)
    for name, block in report.probes.items():
        assert block["n"] == 3 and len(block["per_fact"]) == 3 and 0 <= block["found"] <= 1, name
        assert block["found"] == report.original[name]["found"], name  # the same model, the same settings
    assert report.probes["relearn"]["steps"] == 2
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_progress_bar_names_each_probe_and_is_silent_when_off(tiny_tokenizer, capsys):
    model = _saying(tiny_tokenizer, " Paris")
    audit(model, tiny_tokenizer, PARIS, original=model, probes=("phrasings", "lens"))
    err = capsys.readouterr().err
    assert "audit of 3 facts:" in err and "audit of 3 facts, original:" in err and "lens" in err and "2/2" in err
    audit(model, tiny_tokenizer, PARIS, probes=("phrasings", "lens"), progress=False)
    assert "audit" not in capsys.readouterr().err
