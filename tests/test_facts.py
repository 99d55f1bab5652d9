"""Tests for law_fast.facts: the Fact type, the five file formats, detection and errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from law_fast.facts import (
    FORMATS,
    Fact,
    FactError,
    FactFormatError,
    detect_facts_format,
    facts_from_records,
    load_facts,
    save_facts_jsonl,
)

SHARED_DATA = Path(
    os.environ.get("LAW_FAST_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
COUNTERFACT = SHARED_DATA / "counterfact"
needs_counterfact = pytest.mark.skipif(
    not (COUNTERFACT / "counterfact-edit.json").is_file(),
    reason=f"shared CounterFact data not found at {COUNTERFACT} (set LAW_FAST_SHARED_DATA to the shared/data folder)",
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def write_json(path: Path, records: list) -> Path:
    return write(path, json.dumps(records, indent=4))


def record_lines(path: Path) -> list[int]:
    """Lines where the records of a ``write_json`` file (indent=4) start."""
    return [n for n, line in enumerate(path.read_text().split("\n"), start=1) if line == "    {"]


def load_error(path: Path, **kwargs) -> FactFormatError:
    with pytest.raises(FactFormatError) as info:
        load_facts(path, **kwargs)
    return info.value


def assert_names(err: FactFormatError, path: Path, line: int | None, field: str | None) -> None:
    message = str(err)
    assert path.name in message
    if line is not None:
        assert f":{line}:" in message, message
        assert err.line == line
    if field is not None:
        assert f"'{field}'" in message, message
        assert err.field == field


FRANCE = {
    "case_id": 7,
    "subject": "France",
    "prompt": "The capital of {} is",
    "object": "Paris",
    "paraphrases": ["France's capital city is"],
    "neighbourhood": [{"prompt": "The capital of Italy is", "answer": "Rome"}],
}
GERMANY = {"case_id": 8, "subject": "Germany", "prompt": "The capital of {} is", "object": "Berlin"}


# ------------------------------------------------------------------------------ Fact


def test_fact_prompt_fills_the_slot_and_keeps_other_braces():
    fact = Fact(subject="{weird} name", template="In {x} notation, {} is", answer="a", case_id=0)
    assert fact.prompt == "In {x} notation, {weird} name is"


def test_fact_strips_subject_and_answer_and_makes_tuples():
    fact = Fact(" France ", "The capital of {} is", " Paris", "fr", ["p1"], [["q", "a"]])
    assert (fact.subject, fact.answer) == ("France", "Paris")
    assert fact.paraphrases == ("p1",)
    assert fact.neighbourhood == (("q", "a"),)
    hash(fact)  # frozen and made of tuples


@pytest.mark.parametrize(
    "kwargs, field, text",
    [
        ({"template": "The capital of France is"}, "template", "exactly one '{}'"),
        ({"template": "{} and {} are"}, "template", "found 2"),
        ({"template": "The capital of({}) is"}, "template", "whitespace"),
        ({"subject": "  "}, "subject", "non-empty"),
        ({"answer": ""}, "answer", "non-empty"),
        ({"case_id": 1.5}, "case_id", "int or a str"),
        ({"case_id": True}, "case_id", "int or a str"),
        ({"paraphrases": "one string"}, "paraphrases", "list or tuple"),
        ({"paraphrases": ["ok", ""]}, "paraphrases", "paraphrases[1]"),
        ({"neighbourhood": [("only prompt",)]}, "neighbourhood", "neighbourhood[0]"),
    ],
)
def test_fact_validation(kwargs, field, text):
    args = {"subject": "France", "template": "The capital of {} is", "answer": "Paris", "case_id": 0}
    args.update(kwargs)
    with pytest.raises(FactError) as info:
        Fact(**args)
    assert info.value.field == field
    assert text in str(info.value)
    assert isinstance(info.value, ValueError)


def test_fact_slot_at_start_is_fine():
    assert Fact("Paris", "{}, the capital of", "France", 1).prompt == "Paris, the capital of"


# ------------------------------------------------------------------------------ real data


@needs_counterfact
def test_shared_counterfact_files_load_with_disjoint_case_ids():
    expected = {"edit": 10_000, "train": 10_000, "val": 1_919}
    seen: set = set()
    for name, count in expected.items():
        path = COUNTERFACT / f"counterfact-{name}.json"
        assert detect_facts_format(path) == "counterfact-simple"
        facts = load_facts(path)
        assert len(facts) == count
        ids = {f.case_id for f in facts}
        assert len(ids) == count
        assert not ids & seen, f"{name} shares case ids with another split"
        seen |= ids
    assert seen == set(range(21_919))


@needs_counterfact
def test_shared_counterfact_first_record():
    fact = load_facts(COUNTERFACT / "counterfact-edit.json", limit=1)[0]
    assert fact == Fact(
        subject="Danielle Darrieux",
        template="The mother tongue of {} is",
        answer="French",
        case_id=0,
        paraphrases=("Where Danielle Darrieux is from, people speak the language of",),
        neighbourhood=(("Michel Rocard is a native speaker of", "French"),),
    )
    assert fact.prompt == "The mother tongue of Danielle Darrieux is"


@needs_counterfact
def test_shared_counterfact_loads_fast():
    path = COUNTERFACT / "counterfact-edit.json"
    start = time.perf_counter()
    facts = load_facts(path)
    elapsed = time.perf_counter() - start
    assert len(facts) == 10_000
    assert elapsed < 2.0, f"loading 10,000 CounterFact records took {elapsed:.2f} s"


# ------------------------------------------------------------------------------ jsonl


def test_jsonl_full_record_and_defaults(tmp_path):
    path = write(
        tmp_path / "facts.txt",  # the extension does not matter
        json.dumps(FRANCE)
        + "\n\n   \n"
        + json.dumps(
            {
                "subject": "Spain",
                "prompt": "{} has the capital",
                "object": "Madrid",
                "neighborhood": [{"prompt": "Portugal has the capital", "answer": "Lisbon"}],
            }
        )
        + "\r\n",
    )
    assert detect_facts_format(path) == "jsonl"
    france, spain = load_facts(path)
    assert france == Fact(
        "France",
        "The capital of {} is",
        "Paris",
        7,
        ("France's capital city is",),
        (("The capital of Italy is", "Rome"),),
    )
    assert spain.case_id == 1  # default: the 0-based record index
    assert spain.neighbourhood == (("Portugal has the capital", "Lisbon"),)
    assert spain.paraphrases == ()


def test_jsonl_round_trip(tmp_path):
    facts = [
        Fact("France", "The capital of {} is", "Paris", 7, ("France's capital city is",), (("q {x}", "ä"),)),
        Fact("Ünïcode", "{} was born in", "Zürich", "id-2"),
    ]
    path = tmp_path / "out.jsonl"
    save_facts_jsonl(facts, path)
    assert load_facts(path) == facts
    assert load_facts(path, format="jsonl") == facts
    assert not list(tmp_path.glob("*.tmp*"))


def test_save_rejects_duplicate_case_ids(tmp_path):
    fact = Fact("France", "The capital of {} is", "Paris", 1)
    with pytest.raises(FactError, match="duplicate case_id 1"):
        save_facts_jsonl([fact, fact], tmp_path / "dup.jsonl")
    assert not (tmp_path / "dup.jsonl").exists()


def test_jsonl_limit(tmp_path):
    path = write(tmp_path / "f.jsonl", json.dumps(FRANCE) + "\n" + json.dumps(GERMANY) + "\n{broken\n")
    assert [f.case_id for f in load_facts(path, limit=2)] == [7, 8]
    assert load_facts(path, limit=0) == []
    assert load_error(path).line == 3


@pytest.mark.parametrize(
    "bad, field, text",
    [
        ({k: v for k, v in GERMANY.items() if k != "object"}, "object", "missing field"),
        ({**GERMANY, "subjcet": "x"}, "subjcet", "unknown field"),
        ({**GERMANY, "object": ["Berlin"]}, "object", "expected a string"),
        ({**GERMANY, "object": "  "}, "object", "non-empty"),
        ({**GERMANY, "case_id": 1.0}, "case_id", "integer or a string"),
        ({**GERMANY, "prompt": "The capital of Germany is"}, "prompt", "exactly one '{}'"),
        ({**GERMANY, "prompt": "{} {} is"}, "prompt", "found 2"),
        ({**GERMANY, "prompt": "The capital of-{} is"}, "prompt", "whitespace"),
        ({**GERMANY, "paraphrases": "one"}, "paraphrases", "list of strings"),
        ({**GERMANY, "paraphrases": ["ok", 3]}, "paraphrases[1]", "non-empty string"),
        ({**GERMANY, "neighbourhood": [["p", "a"]]}, "neighbourhood[0]", "expected an object"),
        ({**GERMANY, "neighbourhood": [{"prompt": "p"}]}, "neighbourhood[0].answer", "missing field"),
        ({**GERMANY, "neighbourhood": [{"prompt": "p", "answer": "a", "x": 1}]}, "neighbourhood[0]", "unknown field"),
        ({**GERMANY, "neighbourhood": [], "neighborhood": []}, "neighbourhood", "not both"),
    ],
)
def test_jsonl_record_errors_name_file_line_and_field(tmp_path, bad, field, text):
    path = write_jsonl(
        tmp_path / "facts.jsonl",
        [FRANCE, {"case_id": 9, "subject": "Peru", "prompt": "{} is in", "object": "America"}, bad],
    )
    err = load_error(path)
    assert_names(err, path, 3, field)
    assert text in str(err)
    assert err.index == 2


def test_jsonl_invalid_json_names_the_line(tmp_path):
    path = write(tmp_path / "facts.jsonl", json.dumps(FRANCE) + "\n\n" + '{"subject": "x", "prompt": \n')
    err = load_error(path)
    assert_names(err, path, 3, None)
    assert "invalid JSON" in str(err)


def test_jsonl_comment_lines_are_rejected(tmp_path):
    path = write(tmp_path / "facts.jsonl", json.dumps(FRANCE) + "\n# a comment\n")
    err = load_error(path)
    assert_names(err, path, 2, None)
    assert "comment" in str(err)
    err = load_error(write(tmp_path / "first.jsonl", "# header\n" + json.dumps(FRANCE) + "\n"))
    assert err.line == 1 and "comment" in str(err)


def test_jsonl_non_object_line(tmp_path):
    path = write(tmp_path / "facts.jsonl", json.dumps(FRANCE) + "\n[1, 2]\n")
    err = load_error(path)
    assert_names(err, path, 2, None)
    assert "expected a JSON object" in str(err)


def test_duplicate_case_ids_name_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "dups.jsonl", [FRANCE, GERMANY, {**GERMANY, "subject": "Austria", "case_id": 7}])
    err = load_error(path)
    assert_names(err, path, 3, "case_id")
    assert "duplicate case_id 7" in str(err)
    assert "line 1" in str(err)


def test_default_case_id_can_collide_with_explicit_one(tmp_path):
    path = write_jsonl(
        tmp_path / "mix.jsonl", [{**GERMANY, "case_id": 1}, {k: v for k, v in GERMANY.items() if k != "case_id"}]
    )
    err = load_error(path)
    assert "duplicate case_id 1" in str(err) and err.line == 2


def test_nothing_is_loaded_partially(tmp_path):
    records = [{**GERMANY, "case_id": i} for i in range(50)] + [{**GERMANY, "case_id": 50, "object": ""}]
    path = write_jsonl(tmp_path / "facts.jsonl", records)
    assert load_error(path).line == 51


@pytest.mark.parametrize("text", ["", "\n  \n\t\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path / "empty.jsonl", text)
    assert "empty" in str(load_error(path))
    assert "empty" in str(load_error(path, format="jsonl"))
    assert "empty" in str(load_error(path, format="counterfact"))


def test_empty_json_list(tmp_path):
    path = write(tmp_path / "empty.json", "[\n]\n")
    assert "no records" in str(load_error(path))


def test_unknown_format(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [FRANCE])
    err = load_error(path, format="csv")
    assert "unknown format 'csv'" in str(err) and "counterfact-simple" in str(err)
    assert path.name in str(err)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_facts(tmp_path / "nope.json")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(FRANCE).encode() + b'\n{"subject": "Caf\xe9"}\n')
    err = load_error(path)
    assert_names(err, path, 2, None)
    assert "UTF-8" in str(err)


# ------------------------------------------------------------------------------ counterfact-simple


def simple(case_id, prompt, subject, truth="X", **extra):
    record = {
        "case_id": case_id,
        "prompt": prompt,
        "subject": subject,
        "ground_truth": truth,
        "target_new": "Y",
        "rephrase_prompt": f"Rephrased {subject} is",
        "locality_prompt": "Other is",
        "locality_ground_truth": truth,
    }
    record.update(extra)
    return record


def test_counterfact_simple(tmp_path):
    path = write_json(
        tmp_path / "cf.json",
        [
            simple(3, "The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "French"),
            simple(4, "Lyon fans say: the twin city of Lyon is", "Lyon", "Beirut"),
        ],
    )
    first, second = load_facts(path)
    assert first == Fact(
        "Danielle Darrieux",
        "The mother tongue of {} is",
        "French",
        3,
        ("Rephrased Danielle Darrieux is",),
        (("Other is", "French"),),
    )
    # the subject occurs twice: the last occurrence becomes the slot, the first stays literal
    assert second.template == "Lyon fans say: the twin city of {} is"
    assert second.prompt == "Lyon fans say: the twin city of Lyon is"


def test_counterfact_simple_optional_fields(tmp_path):
    record = {"case_id": 1, "prompt": "{x} Paris is in", "subject": "Paris", "ground_truth": "France"}
    fact = load_facts(write_json(tmp_path / "cf.json", [record]))[0]
    assert fact.template == "{x} {} is in"
    assert (fact.paraphrases, fact.neighbourhood) == ((), ())


@pytest.mark.parametrize(
    "bad, field, text",
    [
        (simple(2, "The capital of Spain is", "France"), "prompt", "does not occur"),
        (simple(2, "The capital of xFrance is", "France"), "prompt", "whitespace"),
        (simple(2, "The {} capital of France is", "France"), "prompt", "found 2"),
        (simple(2, "The capital of France is", "France", ""), "ground_truth", "non-empty"),
        (
            {k: v for k, v in simple(2, "The capital of France is", "France").items() if k != "case_id"},
            "case_id",
            "missing field",
        ),
        (
            simple(2, "The capital of France is", "France", locality_ground_truth=None),
            "locality_ground_truth",
            "expected a string",
        ),
        ({**simple(2, "The capital of France is", "France"), "subject": 42}, "subject", "expected a string"),
    ],
)
def test_counterfact_simple_errors(tmp_path, bad, field, text):
    path = write_json(tmp_path / "cf.json", [simple(1, "The capital of Peru is", "Peru"), bad])
    err = load_error(path)
    assert record_lines(path) == [2, 12]  # "[" on line 1, then 10 lines per record
    assert_names(err, path, 12, field)
    assert text in str(err)
    assert "record 1" in str(err) and err.index == 1


def test_json_list_record_lines_compact_layout(tmp_path):
    records = [simple(i, f"S{i} is", f"S{i}") for i in range(3)]
    records[2]["ground_truth"] = ""
    text = "[{},\n\n {}, {}]".format(*(json.dumps(r) for r in records))
    err = load_error(write(tmp_path / "cf.json", text))
    assert err.line == 3 and err.index == 2 and err.field == "ground_truth"


def test_json_list_duplicate_case_ids(tmp_path):
    path = write_json(tmp_path / "cf.json", [simple(5, "A is", "A"), simple(6, "B is", "B"), simple(5, "C is", "C")])
    err = load_error(path)
    assert_names(err, path, record_lines(path)[2], "case_id")
    assert "first used at line 2" in str(err)


def test_json_list_invalid_json(tmp_path):
    text = json.dumps([simple(1, "A is", "A")], indent=2)[:-2] + ',\n  {"case_id": 2,,}\n]'
    path = write(tmp_path / "cf.json", text)
    err = load_error(path)
    assert "invalid JSON" in str(err)
    assert err.line == text.count("\n", 0, text.index(",,")) + 1
    assert f":{err.line}:" in str(err)


@pytest.mark.parametrize(
    "text, what",
    [
        ('[{"case_id": 1, "prompt": "A is", "subject": "A", "ground_truth": "x"},]', "invalid JSON"),
        ('[{"case_id": 1, "prompt": "A is", "subject": "A", "ground_truth": "x"}\n {"case_id": 2}]', "expected ','"),
        ('[{"case_id": 1, "prompt": "A is", "subject": "A", "ground_truth": "x"}]\n[]', "extra data"),
    ],
)
def test_json_list_syntax_errors(tmp_path, text, what):
    err = load_error(write(tmp_path / "cf.json", text))
    assert what in str(err) and err.line is not None


def test_json_list_limit_stops_reading(tmp_path):
    path = write(tmp_path / "cf.json", "[" + json.dumps(simple(1, "A is", "A")) + ", {broken")
    assert [f.case_id for f in load_facts(path, limit=1)] == [1]
    assert "invalid JSON" in str(load_error(path))


# ------------------------------------------------------------------------------ counterfact (original)


def original(case_id=0, **overrides):
    record = {
        "case_id": case_id,
        "pararel_idx": 2796,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is",
            "relation_id": "P103",
            "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": " French", "id": "Q150"},
            "subject": "Danielle Darrieux",
        },
        "paraphrase_prompts": ["Shayna does this. Danielle Darrieux is a native speaker of"],
        "neighborhood_prompts": ["Michel Rocard is a native speaker of", "Robert Schuman, a native"],
        "attribute_prompts": ["J.R.R. Tolkien is a native speaker of"],
        "generation_prompts": ["Danielle Darrieux's mother tongue is"],
    }
    record.update(overrides)
    return record


def test_counterfact_original(tmp_path):
    path = write_json(tmp_path / "multi_counterfact.json", [original(0), original(1, paraphrase_prompts=[])])
    assert detect_facts_format(path) == "counterfact"
    fact = load_facts(path)[0]
    assert fact == Fact(
        "Danielle Darrieux",
        "The mother tongue of {} is",
        "French",
        0,
        ("Shayna does this. Danielle Darrieux is a native speaker of",),
        (("Michel Rocard is a native speaker of", "French"), ("Robert Schuman, a native", "French")),
    )


def test_counterfact_original_errors(tmp_path):
    bad = original(1)
    del bad["requested_rewrite"]["subject"]
    path = write_json(tmp_path / "mcf.json", [original(0), bad])
    err = load_error(path)
    assert_names(err, path, None, "requested_rewrite.subject")
    assert err.line == record_lines(path)[1]

    bad = original(1)
    bad["requested_rewrite"]["target_true"] = "French"
    err = load_error(write_json(tmp_path / "mcf2.json", [bad]))
    assert err.field == "requested_rewrite.target_true" and "expected an object" in str(err)

    bad = original(1)
    bad["requested_rewrite"]["prompt"] = "The mother tongue of Danielle Darrieux is"
    err = load_error(write_json(tmp_path / "mcf3.json", [bad]))
    assert err.field == "requested_rewrite.prompt" and "exactly one '{}'" in str(err)

    bad = original(1, neighborhood_prompts=[{"prompt": "x", "target": "y"}])
    err = load_error(write_json(tmp_path / "mcf4.json", [bad]))
    assert err.field == "neighborhood_prompts[0]"


# ------------------------------------------------------------------------------ wiki


def wiki(case_id, prompt="{} was born in", subject="Ada Lovelace", truth="London"):
    return {
        "case_id": case_id,
        "requested_rewrite": {"prompt": prompt, "subject": subject, "target_true": {"str": truth}},
    }


def test_wiki(tmp_path):
    path = write_json(tmp_path / "wiki_facts.json", [wiki(0), wiki(1, subject="Alan Turing", truth="Maida Vale")])
    assert detect_facts_format(path) == "wiki"
    facts = load_facts(path)
    assert facts[1] == Fact("Alan Turing", "{} was born in", "Maida Vale", 1)
    err = load_error(write_json(tmp_path / "w2.json", [wiki(0), wiki(1, truth="")]))
    assert err.field == "requested_rewrite.target_true.str" and "w2.json" in str(err)


def test_explicit_format_overrides_detection(tmp_path):
    path = write_json(tmp_path / "mcf.json", [original(0)])
    fact = load_facts(path, format="wiki")[0]
    assert fact.paraphrases == () and fact.neighbourhood == ()
    err = load_error(path, format="zsre")
    assert err.field == "subject" and "missing field" in str(err)


# ------------------------------------------------------------------------------ zsre


def zsre(**overrides):
    record = {
        "subject": "Watts Humphrey",
        "src": "What university did Watts Humphrey attend?",
        "pred": "University of Michigan",
        "rephrase": "What university did Watts Humphrey take part in?",
        "alt": "University of Michigan",
        "answers": ["Illinois Institute of Technology"],
        "loc": "nq question: who played desmond doss father in hacksaw ridge",
        "loc_ans": "Hugo Weaving",
        "cond": "Illinois Institute of Technology >> University of Michigan || What university did Watts Humphrey attend?",
    }
    record.update(overrides)
    return record


def test_zsre(tmp_path):
    path = write_json(
        tmp_path / "zsre_mend_eval.json",
        [
            zsre(),
            zsre(subject="Lyon", src="Lyon is twinned with which city, said Lyon?", answers=["Beirut", "x"]),
        ],
    )
    assert detect_facts_format(path) == "zsre"
    first, second = load_facts(path)
    assert first == Fact(
        "Watts Humphrey",
        "What university did {} attend? Answer:",
        "Illinois Institute of Technology",
        0,
        ("What university did Watts Humphrey take part in? Answer:",),
        (("who played desmond doss father in hacksaw ridge? Answer:", "Hugo Weaving"),),
    )
    # first occurrence becomes the slot, the rest stays literal; the true answer is answers[0]
    assert second.template == "{} is twinned with which city, said Lyon? Answer:"
    assert (second.case_id, second.answer) == (1, "Beirut")


@pytest.mark.parametrize(
    "bad, field, text",
    [
        (zsre(loc="who played desmond doss father"), "loc", "nq question: "),
        (zsre(answers=[]), "answers", "non-empty list"),
        (zsre(answers="Illinois"), "answers", "list of strings"),
        (zsre(answers=[""]), "answers[0]", "non-empty string"),
        (zsre(src="Where did he study?"), "src", "does not occur"),
        (zsre(src="What university did(Watts Humphrey) attend?"), "src", "whitespace"),
        ({k: v for k, v in zsre().items() if k != "loc_ans"}, "loc_ans", "missing field"),
    ],
)
def test_zsre_errors(tmp_path, bad, field, text):
    path = write_json(tmp_path / "zsre.json", [zsre(), bad])
    err = load_error(path)
    assert_names(err, path, record_lines(path)[1], field)
    assert "record 1" in str(err) and text in str(err)


# ------------------------------------------------------------------------------ detection


def test_detection_ambiguous_lists_formats_and_keys(tmp_path):
    path = write_json(tmp_path / "mixed.json", [{**zsre(), **wiki(0)}])
    err = load_error(path)
    message = str(err)
    assert "ambiguous" in message and "wiki" in message and "zsre" in message
    assert "'requested_rewrite'" in message and "'src'" in message
    assert all(name in message for name in FORMATS)
    assert err.line == 2


def test_detection_unknown_keys(tmp_path):
    path = write_json(tmp_path / "other.json", [{"question": "q", "label": 1}])
    err = load_error(path)
    assert "matches no known format" in str(err) and "'question'" in str(err)


def test_detection_hints_at_jsonl_records_in_a_list(tmp_path):
    err = load_error(write_json(tmp_path / "list.json", [FRANCE]))
    assert "JSON Lines" in str(err)


def test_detection_pretty_printed_object(tmp_path):
    err = load_error(write(tmp_path / "one.json", json.dumps(FRANCE, indent=2)))
    assert "single JSON object" in str(err) and err.line == 1


def test_detection_other_content(tmp_path):
    err = load_error(write(tmp_path / "facts.csv", "\n\nsubject,prompt,object\n"))
    assert err.line == 3 and "cannot detect" in str(err)
    err = load_error(write(tmp_path / "list.json", "[1, 2]"))
    assert "expected a JSON object" in str(err)


def test_detection_does_not_use_the_extension(tmp_path):
    assert detect_facts_format(write_json(tmp_path / "facts.jsonl", [wiki(0)])) == "wiki"
    assert detect_facts_format(write_jsonl(tmp_path / "facts.json", [FRANCE])) == "jsonl"


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(FRANCE).encode() + b"\n")
    assert load_facts(path)[0].case_id == 7


# ------------------------------------------------------------------------------ in-memory records


def test_facts_from_records():
    assert facts_from_records([FRANCE, GERMANY])[1].answer == "Berlin"
    assert facts_from_records([wiki(3)])[0].case_id == 3
    assert facts_from_records([zsre()], format="zsre")[0].case_id == 0
    assert facts_from_records([]) == []
    with pytest.raises(FactFormatError) as info:
        facts_from_records([FRANCE, {**GERMANY, "object": 3}])
    assert "records[1]" in str(info.value) and info.value.field == "object"
    with pytest.raises(FactFormatError, match="unknown format"):
        facts_from_records([FRANCE], format="tsv")
