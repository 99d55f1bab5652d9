"""Reasoning loaders and scorers: tiny hand-made items, log-likelihoods recomputed independently
(one plain full-sequence forward per item, float64), left-padding invariance, and agreement
with lm-evaluation-harness when it is installed."""

import importlib.util
import json
import math

import pytest
import torch
from conftest import make_tiny_model, shared_data

from law_fast.eval.lm import encode_pair, generate_until, loglikelihoods
from law_fast.eval.tasks import (
    GSM8K_FEWSHOT,
    ReasoningDataError,
    _capitalize_last_fragment,
    default_data_dir,
    gsm8k_prompt,
    hellaswag_preprocess,
    load_task,
    resolve_task,
    run_reasoning,
    score_gsm8k,
    score_lambada,
    score_multiple_choice,
)

LAMBADA = [
    "The capital of France is Paris",
    "I think that you should go because it is late",
    "The man is a teacher and a writer",
    "hello world this is text about science",
]
HELLASWAG = [
    {
        "query": "Cooking: The man is in the kitchen. he",
        "label": 1,
        "endings": ["goes to Paris.", "cooks the food [title] now.", "is a teacher.", "writes."],
    },
    {
        "query": "Travel: I think that you should go",
        "label": 0,
        "endings": ["because it is late.", "to Rome.", "home now.", "to Berlin and Madrid."],
    },
]
ARC = [
    {
        "id": "a",
        "question": "What is the capital of France?",
        "choices": {"text": ["Paris", "Rome", "Berlin"], "label": ["A", "B", "C"]},
        "answerKey": "A",
    },
    {
        "id": "b",
        "question": "Who founded Apple?",
        "choices": {"text": ["Steve Jobs", "a teacher", "the river", "London"], "label": ["1", "2", "3", "4"]},
        "answerKey": "1",
    },
]
GSM8K = [
    {"question": "Tom has 3 apples and gets 2 more. How many apples?", "answer": "3+2=5\n#### 5"},
    {"question": "A box has 10 pens. 4 are taken. How many are left?", "answer": "10-4=6\n#### 6"},
]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def task_files(tmp_path):
    return {
        "lambada": _write(tmp_path / "lambada.jsonl", [{"text": t} for t in LAMBADA]),
        "hellaswag": _write(tmp_path / "hellaswag.jsonl", HELLASWAG),
        "arc_easy": _write(tmp_path / "arc.jsonl", ARC),
        "gsm8k": _write(tmp_path / "gsm8k.jsonl", GSM8K),
    }


def _direct_loglikelihood(model, tokenizer, context, continuation):
    """Sum of log p(continuation tokens): one forward of the whole sequence, no padding."""
    n_context = len(tokenizer(context.rstrip())["input_ids"])
    full = tokenizer(context.rstrip() + context[len(context.rstrip()) :] + continuation)["input_ids"]
    with torch.no_grad():
        logprobs = model(torch.tensor([full])).logits.double().log_softmax(-1)[0]
    targets = full[n_context:]
    token_lp = [float(logprobs[n_context - 1 + k, t]) for k, t in enumerate(targets)]
    greedy = all(int(logprobs[n_context - 1 + k].argmax()) == t for k, t in enumerate(targets))
    return sum(token_lp), greedy


# ---------------------------------------------------------------------------------------- loaders


def test_task_names_and_aliases():
    assert resolve_task("lambada") == "lambada_openai"
    assert resolve_task("ARC-Easy") == "arc_easy"
    with pytest.raises(ValueError, match="unknown reasoning task 'mmlu'"):
        resolve_task("mmlu")


def test_loaders_normalise_documents(task_files):
    docs = load_task("hellaswag", task_files["hellaswag"])
    assert docs[0]["query"] == "Cooking: The man is in the kitchen. He"  # ctx_b.capitalize() reconstructed
    assert docs[0]["choices"][1] == "cooks the food. now."  # the harness's preprocess
    assert docs[1]["query"] == "Travel: I think that you should go"
    arc = load_task("arc_easy", task_files["arc_easy"])
    assert [d["gold"] for d in arc] == [0, 0] and arc[1]["choices"][0] == "Steve Jobs"
    assert [d["index"] for d in load_task("lambada", task_files["lambada"])] == [0, 1, 2, 3]


def test_hellaswag_original_schema_is_processed_as_the_harness():
    record = {
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "endings": ["is using wrap [step] to wrap a pair of skis.", "b", "c", "d"],
        "label": "3",
    }
    from law_fast.eval.tasks import _hellaswag_doc

    doc = _hellaswag_doc(record, "x")
    assert doc["query"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert doc["choices"][0] == "is using wrap to wrap a pair of skis." and doc["gold"] == 3


def test_hellaswag_helpers():
    assert hellaswag_preprocess(" A [title] B [header] c  d ") == "A. B c d"
    assert _capitalize_last_fragment("Sport: A man runs. the man") == "Sport: A man runs. The man"
    assert _capitalize_last_fragment("Sport: A man runs. 5 the man") == "Sport: A man runs. 5 the man"
    assert _capitalize_last_fragment("Sport: a man runs") == "Sport: a man runs"


def test_subset_is_fixed_by_seed(task_files):
    a = [d["index"] for d in load_task("lambada", task_files["lambada"], limit=2, seed=3)]
    assert a == [d["index"] for d in load_task("lambada", task_files["lambada"], limit=2, seed=3)]
    assert a == sorted(a) and len(a) == 2
    seeds = {tuple(d["index"] for d in load_task("lambada", task_files["lambada"], limit=2, seed=s)) for s in range(8)}
    assert len(seeds) > 1


@pytest.mark.parametrize(
    "task, line, message",
    [
        ("gsm8k", '{"question": "q", "answer": "5"}', "must end with '#### <number>'"),
        (
            "arc_easy",
            '{"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}',
            "answerKey 'C'",
        ),
        ("hellaswag", '{"query": "q", "endings": ["a", "b"], "label": 2}', "field 'label'"),
        ("lambada", '{"txt": "a b"}', "missing field 'text'"),
        ("lambada", "{not json", "invalid JSON"),
    ],
)
def test_bad_files_name_file_line_and_field(tmp_path, task, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n" + line + "\n")
    with pytest.raises(ReasoningDataError, match=message) as err:
        load_task(task, path)
    assert f"{path}:2" in str(err.value)


def test_missing_file_and_data_dir(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="benchmark file not found"):
        load_task("gsm8k", tmp_path / "nope.jsonl")
    monkeypatch.setenv("LAW_FAST_REASONING_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="gsm8k_test.jsonl"):
        load_task("gsm8k")


@pytest.mark.skipif(shared_data() is None, reason="../shared/data is not present")
def test_local_benchmark_files_load():
    root = shared_data() / "reasoning"
    sizes = {"lambada": 5153, "hellaswag": 10042, "arc_easy": 2376, "gsm8k": 1319}
    for task, size in sizes.items():
        docs = load_task(task, data_dir=root, limit=200, seed=0)
        assert len(docs) == 200 and max(d["index"] for d in docs) < size
    assert len(load_task("arc_easy", data_dir=root)) == 2376
    assert all(len(d["choices"]) == 4 for d in load_task("hellaswag", data_dir=root, limit=300))


# ---------------------------------------------------------------------------------------- scoring


def test_encode_pair_moves_trailing_space(tiny_tokenizer):
    context, continuation = encode_pair(tiny_tokenizer, "The capital of France is ", "Paris")
    assert context == tiny_tokenizer("The capital of France is")["input_ids"]
    assert tiny_tokenizer.decode(continuation) == " Paris"
    assert encode_pair(tiny_tokenizer, "", "Paris")[0] == [tiny_tokenizer.eos_token_id]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_loglikelihoods_match_direct_forward(family, tiny_tokenizer):
    model = make_tiny_model(family, len(tiny_tokenizer)).double()
    requests = [
        ("The capital of France is ", "Paris"),
        ("I think", " that you should go"),
        ("hello world this is text about science, history", " and music"),
        ("A", " b"),
        ("The man is a teacher", " and a writer in London, Berlin, Madrid."),
    ]
    scores = loglikelihoods(model, tiny_tokenizer, requests, batch_size=3)
    for (context, continuation), score in zip(requests, scores):
        ll, greedy = _direct_loglikelihood(model, tiny_tokenizer, context, continuation)
        assert score.logprob == pytest.approx(ll, abs=1e-9)
        assert score.greedy == greedy


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "gptj"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_left_padding_batch_equals_one_by_one(family, dtype, tol, tiny_tokenizer):
    model = make_tiny_model(family, len(tiny_tokenizer)).to(dtype)
    requests = [
        (c, " " + w)
        for c, w in [
            ("The capital of France is", "Paris"),
            ("I", "think that you should go"),
            ("hello world this is text about science, history, music and", "the"),
            ("Toyota is headquartered in", "Japan. The Eiffel Tower"),
        ]
    ]
    batched = loglikelihoods(model, tiny_tokenizer, requests, batch_size=4)
    alone = [loglikelihoods(model, tiny_tokenizer, [r], batch_size=1)[0] for r in requests]
    for b, a in zip(batched, alone):
        assert b.logprob == pytest.approx(a.logprob, abs=tol)
        assert b.first_logprob == pytest.approx(a.first_logprob, abs=tol)
        assert b.n_tokens == a.n_tokens


def test_multiple_choice_and_lambada_scores_by_hand(task_files, tiny_tokenizer):
    model = make_tiny_model("gpt2", len(tiny_tokenizer)).double()
    for task in ("hellaswag", "arc_easy"):
        docs = load_task(task, task_files[task])
        result = score_multiple_choice(model, tiny_tokenizer, task, docs, batch_size=3)
        acc, acc_norm = [], []
        for doc, item in zip(docs, result.items):
            context = doc["query"] if task == "hellaswag" else f"Question: {doc['question']}\nAnswer:"
            lls = [_direct_loglikelihood(model, tiny_tokenizer, context, " " + c)[0] for c in doc["choices"]]
            assert item["lls"] == pytest.approx(lls, abs=1e-9)
            acc.append(float(max(range(len(lls)), key=lambda k: lls[k]) == doc["gold"]))
            normed = [ll / len(c) for ll, c in zip(lls, doc["choices"])]
            acc_norm.append(float(max(range(len(lls)), key=lambda k: normed[k]) == doc["gold"]))

        def se(xs):  # sample standard error of the mean, by hand
            mu = sum(xs) / len(xs)
            return (sum((x - mu) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5

        expected = {"acc": sum(acc) / len(acc), "acc_norm": sum(acc_norm) / len(acc_norm), "n": len(docs)}
        expected |= {"acc_stderr": se(acc), "acc_norm_stderr": se(acc_norm)}
        assert result.metrics == pytest.approx(expected, abs=1e-12)
    docs = load_task("lambada", task_files["lambada"])
    result = score_lambada(model, tiny_tokenizer, docs, batch_size=2)
    direct = [
        _direct_loglikelihood(model, tiny_tokenizer, t.rsplit(" ", 1)[0], " " + t.rsplit(" ", 1)[1]) for t in LAMBADA
    ]
    assert result.metrics["perplexity"] == pytest.approx(math.exp(-sum(ll for ll, _ in direct) / len(direct)), rel=1e-9)
    assert result.metrics["acc"] == sum(g for _, g in direct) / len(direct)


def test_multiple_choice_can_be_right(tiny_tokenizer):
    """A model that prefers the gold ending gets acc = 1 (the scorer is not trivially 0)."""
    model = make_tiny_model("gpt2", len(tiny_tokenizer)).double()
    docs = [{"query": "The capital of France is", "choices": ["Paris", "x"], "gold": 0, "index": 0}]
    lls = [
        _direct_loglikelihood(model, tiny_tokenizer, "The capital of France is", " " + c)[0] for c in docs[0]["choices"]
    ]
    docs[0]["gold"] = int(lls[1] > lls[0])
    assert score_multiple_choice(model, tiny_tokenizer, "hellaswag", docs).metrics["acc"] == 1.0


def _greedy_by_hand(model, tokenizer, prompt, max_new_tokens):
    ids = tokenizer(prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tokenizer.eos_token_id:
                break
    return tokenizer.decode(out, skip_special_tokens=True)


def test_generate_until_matches_manual_greedy_and_cuts(tiny_tokenizer):
    model = make_tiny_model("llama", len(tiny_tokenizer)).double()
    prompts = ["The capital of France is", "I think that", "hello world this is text about"]
    generated = generate_until(model, tiny_tokenizer, prompts, until=["zzz"], max_new_tokens=6, batch_size=3)
    manual = [_greedy_by_hand(model, tiny_tokenizer, p, 6) for p in prompts]
    assert generated == manual
    stop = manual[0][2:4]
    cut = generate_until(model, tiny_tokenizer, prompts[:1], until=[stop], max_new_tokens=6)
    assert cut == [manual[0].split(stop)[0]]


def test_gsm8k_prompt_and_scorer(task_files, tiny_tokenizer):
    prompt = gsm8k_prompt("How many?", num_fewshot=2)
    q0, a0 = GSM8K_FEWSHOT[0]
    assert prompt.startswith(f"Q: {q0}\nA: {a0}\n\nQ: ") and prompt.endswith("\n\nQ: How many?\nA:")
    assert gsm8k_prompt("How many?", 0) == "Q: How many?\nA:"
    with pytest.raises(ValueError, match="num_fewshot"):
        gsm8k_prompt("q", 9)
    model = make_tiny_model("gpt2", len(tiny_tokenizer)).double()
    docs = load_task("gsm8k", task_files["gsm8k"])
    result = score_gsm8k(model, tiny_tokenizer, docs, num_fewshot=0, max_new_tokens=5, batch_size=2)
    manual = [_greedy_by_hand(model, tiny_tokenizer, gsm8k_prompt(d["question"], 0), 5).split("Q:")[0] for d in docs]
    assert [i["generation"] for i in result.items] == manual
    assert result.metrics["n"] == 2 and 0.0 <= result.metrics["exact_match"] <= 1.0


def test_run_reasoning_limits_per_task(task_files, tiny_tokenizer):
    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    out = run_reasoning(
        model,
        tiny_tokenizer,
        ["lambada", "arc_easy"],
        limit={"lambada": 2, "default": 1},
        paths=task_files,
        progress=False,
    )
    assert out["lambada_openai"]["n"] == 2 and out["arc_easy"]["n"] == 1


@pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm-evaluation-harness is not installed (pip install lm-eval); it is not a dev dependency",
)
def test_lm_eval_adapter_agrees_with_builtin_scorers(task_files, tiny_tokenizer):
    from law_fast.eval.harness import run_lm_eval

    model = make_tiny_model("gpt2", len(tiny_tokenizer))
    tasks = ["lambada", "hellaswag", "arc_easy", "gsm8k"]
    kwargs = dict(paths=task_files, details=True, gsm8k_fewshot=0, gsm8k_max_new_tokens=12, batch_size=4)
    ours = run_reasoning(model, tiny_tokenizer, tasks, progress=False, **kwargs)
    theirs = run_lm_eval(model, tiny_tokenizer, tasks, **kwargs)
    for task in ours:
        for metric, value in ours[task].items():
            if metric != "items":
                assert theirs[task][metric] == pytest.approx(value, rel=1e-5), (task, metric)
    for ours_item, their_item in zip(ours["hellaswag"]["items"], theirs["hellaswag"]["items"]):
        assert ours_item["lls"] == pytest.approx([r[0][0] for r in their_item["resps"]], abs=1e-4)
    assert [i["generation"] for i in ours["gsm8k"]["items"]] == [s["resps"][0][0] for s in theirs["gsm8k"]["items"]]
