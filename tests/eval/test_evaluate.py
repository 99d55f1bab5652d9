"""evaluate(): knowledge metrics, sliding-window perplexity, EvalReport JSON, CLI eval/compare."""

import importlib.util
import json
import math

import pytest
import torch
from conftest import make_tiny_model

from law_fast.cli import main
from law_fast.eval.compare import markdown_table, text_table
from law_fast.eval.knowledge import evaluate_knowledge
from law_fast.eval.lm import _windows, perplexity
from law_fast.eval.metrics import qa_f1
from law_fast.eval.report import EvalReport, evaluate
from law_fast.facts import Fact, save_facts_jsonl

TEXT = (
    "The capital of France is Paris. The capital of Italy is Rome. Apple was founded by Steve Jobs. "
    "I think that you should go because it is late. Therefore we stay."
)


def _token_nll(model, context_ids, target):
    with torch.no_grad():
        return -float(model(torch.tensor([context_ids])).logits.double()[0, -1].log_softmax(-1)[target])


# ---------------------------------------------------------------------------------------- perplexity


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_perplexity_in_one_window_equals_direct(family, tiny_tokenizer):
    model = make_tiny_model(family, len(tiny_tokenizer)).double()
    ids = tiny_tokenizer(TEXT)["input_ids"]
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits.double()[0].log_softmax(-1)
    nll = -sum(float(logprobs[t - 1, ids[t]]) for t in range(1, len(ids))) / (len(ids) - 1)
    out = perplexity(model, tiny_tokenizer, [TEXT], window=len(ids) + 5, stride=3, progress=False)
    assert out["tokens"] == len(ids) - 1
    assert out["nll"] == pytest.approx(nll, abs=1e-10)
    assert out["perplexity"] == pytest.approx(math.exp(nll), rel=1e-10)


@pytest.mark.parametrize("window, stride", [(8, 1), (8, 5), (8, 7), (12, 4)])
def test_sliding_window_scores_each_token_once_with_its_context(window, stride, tiny_tokenizer):
    """Independent reference: token t is predicted from ids[k*stride : t], k = max(0, (t - window) // stride + 1)."""
    model = make_tiny_model("gpt2", len(tiny_tokenizer)).double()
    ids = tiny_tokenizer(TEXT)["input_ids"][:40]
    reference = []
    for t in range(1, len(ids)):
        k = max(0, (t - window) // stride + 1)
        assert t - k * stride <= window - 1 and (k == 0 or t - k * stride >= window - stride)
        reference.append(_token_nll(model, ids[k * stride : t], ids[t]))
    out = perplexity(
        model, tiny_tokenizer, TEXT, window=window, stride=stride, max_tokens=40, batch_size=3, progress=False
    )
    assert out["tokens"] == len(ids) - 1 == len(reference)
    assert out["nll"] == pytest.approx(sum(reference) / len(reference), abs=1e-10)
    one_by_one = perplexity(
        model, tiny_tokenizer, TEXT, window=window, stride=stride, max_tokens=40, batch_size=1, progress=False
    )
    assert one_by_one["nll"] == pytest.approx(out["nll"], abs=1e-12)


def test_windows_cover_every_token_once():
    for n, window, stride in [(1000, 64, 16), (65, 64, 63), (10, 64, 32), (129, 64, 32)]:
        spans = _windows(n, window, stride)
        scored = [t for _, end, count in spans for t in range(end - count, end)]
        assert scored == list(range(1, n))
        assert all(end - begin <= window and count <= end - begin - (begin > 0) for begin, end, count in spans)


def test_perplexity_rejects_bad_settings(tiny_tokenizer):
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    with pytest.raises(ValueError, match="stride < window"):
        perplexity(model, tiny_tokenizer, TEXT, window=8, stride=8)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        perplexity(model, tiny_tokenizer, TEXT, window=1000, stride=10)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(model, tiny_tokenizer, "", window=8, stride=4)


# ---------------------------------------------------------------------------------------- knowledge


def _greedy(model, tokenizer, prompt, n=10):
    ids = tokenizer(prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
    return tokenizer.decode(out, skip_special_tokens=True)


@pytest.fixture
def model_and_facts(tiny_tokenizer):
    """A tiny model and facts, two of which it 'knows' (their answer is its own greedy output)."""
    model = make_tiny_model("gpt2", len(tiny_tokenizer)).double()
    templates = [
        ("France", "The capital of {} is"),
        ("Apple", "{} was founded by"),
        ("Italy", "The capital of {} is"),
        ("Toyota", "{} is headquartered in"),
    ]
    facts = []
    for i, (subject, template) in enumerate(templates):
        prompt = template.replace("{}", subject)
        words = _greedy(model, tiny_tokenizer, prompt).split()
        answer = words[0] if i < 2 and words else "Zebra"
        facts.append(
            Fact(
                subject,
                template,
                answer,
                case_id=i,
                paraphrases=(f"Tell me: {prompt}",),
                neighbourhood=((f"I think {prompt}", "Paris"),),
            )
        )
    return model, facts


def test_knowledge_metrics_by_hand(model_and_facts, tiny_tokenizer):
    model, facts = model_and_facts
    block = evaluate_knowledge(model, tiny_tokenizer, facts, progress=False, batch_size=3)
    conts = [_greedy(model, tiny_tokenizer, f.prompt) for f in facts]
    correct = [f.answer.lower() in c.lower() for f, c in zip(facts, conts)]
    assert correct[:2] == [True, True]
    assert block["rewrite"]["acc"] == pytest.approx(sum(correct) / 4)
    assert block["rewrite"]["qa_f1"] == pytest.approx(sum(qa_f1(c, f.answer) for f, c in zip(facts, conts)) / 4)
    nll = []
    for f in facts:
        prompt_ids = tiny_tokenizer(f.prompt)["input_ids"]
        first = tiny_tokenizer(f.prompt + " " + f.answer)["input_ids"][len(prompt_ids)]
        nll.append(_token_nll(model, prompt_ids, first))
    assert block["rewrite"]["nll_first_token"] == pytest.approx(sum(nll) / 4, abs=1e-9)
    assert block["paraphrase"]["n"] == 4 and block["neighbourhood"]["n"] == 4
    assert block["case_ids"] == [0, 1, 2, 3] and set(block["known_case_ids"]) >= {0, 1}


def test_known_only_then_subset_compares_the_same_facts(model_and_facts, tiny_tokenizer):
    model, facts = model_and_facts
    before = evaluate(model, tiny_tokenizer, facts=facts, known_only=True, progress=False)
    known = before.knowledge["facts"]["case_ids"]
    assert {0, 1} <= set(known) and 3 not in known
    assert before.knowledge["facts"]["rewrite"]["acc"] == 1.0
    with torch.no_grad():  # "wash": perturb the model
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    after = evaluate(model, tiny_tokenizer, facts=facts, subset=before, progress=False)
    assert after.knowledge["facts"]["case_ids"] == known
    assert after.knowledge["facts"]["selection"] == "subset"
    with pytest.raises(ValueError, match="not among the 2 facts"):
        evaluate(model, tiny_tokenizer, facts=facts[2:], subset=before, progress=False)
    with pytest.raises(ValueError, match="not both"):
        evaluate_knowledge(model, tiny_tokenizer, facts, case_ids=[0], known_only=True)


def test_empty_groups_are_none(tiny_tokenizer):
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    block = evaluate_knowledge(
        model, tiny_tokenizer, [Fact("France", "The capital of {} is", "Paris", 1)], progress=False
    )
    assert block["paraphrase"] == {"n": 0, "acc": None, "qa_f1": None, "f1_positive": None, "nll_first_token": None}


# ---------------------------------------------------------------------------------------- report


def test_report_json_round_trip(model_and_facts, tiny_tokenizer, tmp_path):
    model, facts = model_and_facts
    report = evaluate(
        model,
        tiny_tokenizer,
        facts=facts[:2],
        controls=facts[2:],
        corpus=[TEXT, TEXT],
        ppl_window=16,
        ppl_stride=8,
        entropy=["The capital of"],
        entropy_tokens=8,
        progress=False,
        label="tiny",
    )
    assert report.fluency["tokens"] > 0 and report.fluency["ngram_entropy"] >= 0
    path = tmp_path / "r.json"
    report.to_json(path)
    again = EvalReport.from_json(path)
    assert again == report
    assert EvalReport.from_json(report.to_json()) == report
    assert again.flat()["facts.rewrite.acc"] == report.knowledge["facts"]["rewrite"]["acc"]
    assert report.versions["torch"] == torch.__version__ and report.label == "tiny"
    with pytest.raises(ValueError, match="unknown EvalReport field"):
        EvalReport.from_dict({**report.to_dict(), "extra": 1})
    with pytest.raises(FileNotFoundError):
        EvalReport.from_json(tmp_path / "missing.json")
    table = text_table([report, again], ["before", "after"])
    assert "facts.rewrite.acc" in table and "[retention]" in table
    assert "| forgetting | `facts.rewrite.acc` |" in markdown_table([report])


# ---------------------------------------------------------------------------------------- CLI


def test_cli_eval_and_compare(tmp_path, tiny_tokenizer, model_and_facts, capsys):
    _, facts = model_and_facts
    dirs = []
    for seed in (0, 1):
        model_dir = tmp_path / f"tiny{seed}"
        make_tiny_model("gpt2", len(tiny_tokenizer), seed=seed).save_pretrained(model_dir)
        tiny_tokenizer.save_pretrained(model_dir)
        dirs.append(model_dir)
    save_facts_jsonl(facts, tmp_path / "facts.jsonl")
    (tmp_path / "corpus.txt").write_text(TEXT + "\n\n" + TEXT + "\n")
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text(
        "".join(
            json.dumps({"text": t}) + "\n"
            for t in ["The capital of France is Paris", "I think that you should go", "a b c"]
        )
    )
    reports = []
    for i, model_dir in enumerate(dirs):
        out = tmp_path / f"r{i}.json"
        args = [
            "eval",
            "--model",
            str(model_dir),
            "--facts",
            str(tmp_path / "facts.jsonl"),
            "--corpus",
            str(tmp_path / "corpus.txt"),
            "--window",
            "16",
            "--stride",
            "8",
            "--reasoning",
            "lambada:2",
            "--task-file",
            f"lambada={lambada}",
            "--out",
            str(out),
            "--label",
            f"m{i}",
        ]
        args += ["--known-only"] if i == 0 else ["--subset", str(tmp_path / "r0.json")]
        assert main(args) == 0
        reports.append(out)
        assert "reasoning.lambada_openai.acc" in capsys.readouterr().out
    data = json.loads(reports[0].read_text())
    assert data["reasoning"]["lambada_openai"]["n"] == 2 and data["settings"]["seed"] == 0
    assert (
        json.loads(reports[1].read_text())["knowledge"]["facts"]["case_ids"] == data["knowledge"]["facts"]["case_ids"]
    )
    md, png = tmp_path / "cmp.md", tmp_path / "cmp.png"
    plot = ["--plot", str(png)] if importlib.util.find_spec("matplotlib") else []  # matplotlib: dev/plot extra
    assert main(["compare", *map(str, reports), "--markdown", str(md), *plot]) == 0
    printed = capsys.readouterr().out
    assert "m0" in printed and "m1" in printed and "fluency.perplexity" in printed
    assert "| reasoning | `reasoning.lambada_openai.acc` |" in md.read_text()
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", "--model", str(dirs[0])]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["eval", "--model", str(dirs[0]), "--reasoning", "mmlu"]) == 2
    assert "unknown reasoning task" in capsys.readouterr().err
