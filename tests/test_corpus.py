"""Tests for law_fast.corpus: sources, document splitting, sampling and identities."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import sys
import types
from pathlib import Path

import pytest

from law_fast.corpus import Corpus, CorpusError, load_corpus, parse_hf_source

SHARED_DATA = Path(
    os.environ.get("LAW_FAST_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
WIKITEXT = SHARED_DATA / "wikitext2" / "wiki.test.raw"
needs_wikitext = pytest.mark.skipif(
    not WIKITEXT.is_file(),
    reason=f"shared WikiText-2 data not found at {WIKITEXT} (set LAW_FAST_SHARED_DATA to the shared/data folder)",
)


def write(path: Path, text: str, newline: str | None = None) -> Path:
    with open(path, "w", encoding="utf-8", newline=newline) as handle:
        handle.write(text)
    return path


# ------------------------------------------------------------------------------ WikiText-2


@needs_wikitext
def test_wikitext2_raw_gives_one_document_per_non_empty_line():
    corpus = load_corpus(WIKITEXT)
    assert len(corpus) == 2891
    assert corpus.texts[0] == "= Robert Boulter ="  # headings are kept, stripped
    assert corpus.texts[1].startswith("Robert Boulter is an English film , television and theatre actor .")
    assert not any("\r" in text or "\n" in text for text in corpus)
    assert sum(text.startswith("= ") and text.endswith(" =") for text in corpus) == 706
    digest = hashlib.sha256(WIKITEXT.read_bytes()).hexdigest()[:16]
    assert corpus.identity == f"file:wiki.test.raw#sha256={digest};min_chars=1;n=all;seed=1"


@needs_wikitext
def test_wikitext2_sample_matches_the_reference_sampler():
    corpus = load_corpus(WIKITEXT, n_samples=100, seed=1)
    every = load_corpus(WIKITEXT).texts
    order = list(range(len(every)))
    random.Random(1).shuffle(order)  # FixedRandomSubsetSampler(seed=1), first 100 indices
    assert corpus.texts == tuple(every[i] for i in order[:100])
    assert "n=100;seed=1" in corpus.identity


# ------------------------------------------------------------------------------ plain text


def test_text_lines_with_crlf_are_documents(tmp_path):
    # no blank lines at all (as WikiText-2 raw here): every line is a document
    path = write(tmp_path / "c.txt", " = Title = \n First line . \n Second line\n", newline="\r\n")
    assert load_corpus(path).texts == ("= Title =", "First line .", "Second line")
    # blank lines, but every block is one line (WikiText as HF stores it): still lines
    path = write(tmp_path / "d.txt", " = Title = \n \n First line . \n\n  \nSecond line\n", newline="\r\n")
    assert load_corpus(path).texts == ("= Title =", "First line .", "Second line")


def test_text_blank_line_blocks_are_documents(tmp_path):
    path = write(tmp_path / "c.txt", "Para one,\nstill one.\r\n\r\nPara two.\n\n\n  Para\n  three.  \n")
    assert load_corpus(path).texts == ("Para one,\nstill one.", "Para two.", "Para\n  three.")


def test_text_single_block_is_split_into_lines(tmp_path):
    path = write(tmp_path / "c.txt", "\n\nline a\nline b\nline c\n\n")
    assert load_corpus(path).texts == ("line a", "line b", "line c")


def test_text_old_mac_line_endings(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"one\rtwo\r")
    assert load_corpus(path).texts == ("one", "two")


def test_any_other_extension_is_plain_text(tmp_path):
    path = write(tmp_path / "wiki.test.raw", '{"text": "not parsed as json"}\n')
    assert load_corpus(path).texts == ('{"text": "not parsed as json"}',)


# ------------------------------------------------------------------------------ jsonl / json


def test_jsonl_text_field(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"text": "alpha", "id": 1}\n\n{"text": "beta"}\n')
    corpus = load_corpus(path)
    assert corpus.texts == ("alpha", "beta")
    assert ";field=text;" in corpus.identity
    other = write(tmp_path / "q.jsonl", '{"query": "q1"}\n{"query": "q2"}\n')
    assert load_corpus(other, text_field="query").texts == ("q1", "q2")


@pytest.mark.parametrize(
    "second_line, text",
    [
        ('{"txt": "typo"}', "missing field 'text'"),
        ('{"text": 3}', "must be a string"),
        ('{"text": "unterminated', "invalid JSON"),
        ('["text"]', "expected a JSON object"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, second_line, text):
    path = write(tmp_path / "bad.jsonl", '{"text": "fine"}\n' + second_line + "\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(path)
    assert "bad.jsonl:2:" in str(info.value)
    assert text in str(info.value)


def test_json_list(tmp_path):
    assert load_corpus(write(tmp_path / "a.json", '["x", "y"]')).texts == ("x", "y")
    assert load_corpus(write(tmp_path / "b.json", '[{"text": "x"}, "y"]')).texts == ("x", "y")
    with pytest.raises(CorpusError, match="item 1"):
        load_corpus(write(tmp_path / "c.json", '[{"text": "x"}, {"body": "y"}]'))
    with pytest.raises(CorpusError, match="JSON list"):
        load_corpus(write(tmp_path / "d.json", '{"text": "x"}'))


# ------------------------------------------------------------------------------ memory


def test_memory_corpus_identity_follows_content():
    a = load_corpus(["one", "two", "three"])
    assert a.identity.startswith("memory:sha256=")
    assert a.texts == ("one", "two", "three")
    assert load_corpus(("one", "two", "three")).identity == a.identity
    assert load_corpus(["one", "two", "three!"]).identity != a.identity
    assert load_corpus(["on", "etwo", "three"]).identity != load_corpus(["one", "two", "three"]).identity


def test_memory_corpus_rejects_non_strings():
    with pytest.raises(CorpusError, match=r"texts\[1\]"):
        load_corpus(["ok", 5])


def test_corpus_object():
    corpus = load_corpus([f"doc {i}" for i in range(5)])
    assert len(corpus) == 5
    assert list(corpus) == [f"doc {i}" for i in range(5)]
    assert corpus[2] == "doc 2"
    assert "documents=5" in repr(corpus) and "doc 3" not in repr(corpus)
    with pytest.raises(dataclasses.FrozenInstanceError):
        corpus.identity = "changed"  # frozen
    assert Corpus("x", ["a"]).texts == ("a",)


# ------------------------------------------------------------------------------ sampling


def test_sampling_is_deterministic_and_follows_random_shuffle():
    texts = [f"document number {i}" for i in range(50)]
    a = load_corpus(texts, n_samples=10, seed=3)
    b = load_corpus(texts, n_samples=10, seed=3)
    assert a == b
    order = list(range(50))
    random.Random(3).shuffle(order)
    assert a.texts == tuple(texts[i] for i in order[:10])


def test_identity_changes_with_content_n_samples_and_seed():
    texts = [f"document number {i}" for i in range(50)]
    base = load_corpus(texts, n_samples=10, seed=1)
    other_seed = load_corpus(texts, n_samples=10, seed=2)
    other_n = load_corpus(texts, n_samples=11, seed=1)
    other_content = load_corpus(texts[:-1] + ["changed"], n_samples=10, seed=1)
    identities = {c.identity for c in (base, other_seed, other_n, other_content, load_corpus(texts))}
    assert len(identities) == 5
    assert other_seed.texts != base.texts
    assert other_n.texts[:10] == base.texts  # the sample grows by prefix
    assert load_corpus(texts, min_chars=2).identity != load_corpus(texts).identity


def test_file_identity_changes_with_content(tmp_path):
    path = write(tmp_path / "c.txt", "a\nb\n")
    first = load_corpus(path)
    assert load_corpus(str(path)).identity == first.identity
    write(path, "a\nc\n")
    assert load_corpus(path).identity != first.identity


def test_file_identity_does_not_depend_on_the_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    one = load_corpus(write(tmp_path / "x" / "c.txt", "a\nb\n"))
    two = load_corpus(write(tmp_path / "y" / "c.txt", "a\nb\n"))
    assert one.identity == two.identity


def test_no_sampling_keeps_source_order_and_oversampling_keeps_all():
    texts = [f"t{i}" for i in range(7)]
    assert load_corpus(texts).texts == tuple(texts)
    everything = load_corpus(texts, n_samples=100)
    assert sorted(everything.texts) == sorted(texts) and everything.texts != tuple(texts)


def test_min_chars_skips_short_documents_and_sampling_fills_up():
    texts = ["", "short", "a long enough document", "   ", "another long document", "x" * 30]
    assert load_corpus(texts).texts == ("short", "a long enough document", "another long document", "x" * 30)
    long_only = load_corpus(texts, min_chars=10)
    assert long_only.texts == ("a long enough document", "another long document", "x" * 30)
    sampled = load_corpus(texts, n_samples=3, min_chars=10, seed=5)
    assert sorted(sampled.texts) == sorted(long_only.texts)  # short ones skipped, not counted


def test_nothing_long_enough(tmp_path):
    with pytest.raises(CorpusError, match="in-memory corpus.*at least 100 characters"):
        load_corpus(["short", "tiny"], min_chars=100)
    path = write(tmp_path / "short.txt", "a\nbb\n")
    with pytest.raises(CorpusError, match="short.txt"):
        load_corpus(path, min_chars=3)


@pytest.mark.parametrize("content", ["", "\n\n  \r\n"])
def test_empty_file(tmp_path, content):
    path = write(tmp_path / "empty.txt", content)
    with pytest.raises(CorpusError, match="empty.txt.*empty"):
        load_corpus(path)
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(write(tmp_path / "empty.jsonl", content))


def test_empty_memory_corpus():
    with pytest.raises(CorpusError, match="in-memory corpus.*empty"):
        load_corpus([])


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_corpus.txt"):
        load_corpus(tmp_path / "no_such_corpus.txt")


@pytest.mark.parametrize(
    "kwargs", [{"n_samples": 0}, {"n_samples": -1}, {"n_samples": 2.5}, {"min_chars": 0}, {"seed": "1"}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        load_corpus(["a", "b"], **kwargs)


def test_bad_source_type():
    with pytest.raises(TypeError):
        load_corpus(42)
    with pytest.raises(TypeError):
        load_corpus(b"bytes are not a corpus")


# ------------------------------------------------------------------------------ Hugging Face


@pytest.mark.parametrize(
    "source, expected",
    [
        ("hf:wikitext", ("wikitext", None, "train")),
        ("hf:wikitext:wikitext-2-raw-v1", ("wikitext", "wikitext-2-raw-v1", "train")),
        ("hf:wikitext:wikitext-2-raw-v1:test", ("wikitext", "wikitext-2-raw-v1", "test")),
        ("hf:Salesforce/wikitext::validation", ("Salesforce/wikitext", None, "validation")),
    ],
)
def test_parse_hf_source(source, expected):
    assert parse_hf_source(source) == expected


@pytest.mark.parametrize("source", ["hf:", "hf::cfg", "hf:a:b:c:d", "hf:a:b:", "wikitext"])
def test_parse_hf_source_errors(source):
    with pytest.raises(CorpusError, match="hf:"):
        parse_hf_source(source)


def test_hf_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        load_corpus("hf:wikitext:wikitext-2-raw-v1")


class FakeDataset:
    """Mimics the parts of datasets.Dataset that load_corpus uses."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.column_names = list(rows[0]) if rows else ["text"]
        self._fingerprint = "f00dfeed"
        self.requests: list = []

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        self.requests.append(key)
        if isinstance(key, str):
            return [row[key] for row in self.rows]
        if isinstance(key, list):
            return {column: [self.rows[i][column] for i in key] for column in self.column_names}
        return self.rows[key]


@pytest.fixture
def fake_datasets(monkeypatch):
    calls: list = []
    module = types.ModuleType("datasets")
    module.dataset = FakeDataset([{"text": f"article {i}" if i % 4 else "", "title": f"t{i}"} for i in range(40)])

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        if args[0] == "missing":
            raise FileNotFoundError("Couldn't find a dataset script")
        return module.dataset

    module.load_dataset = load_dataset
    module.calls = calls
    monkeypatch.setitem(sys.modules, "datasets", module)
    return module


def test_hf_source_loads_through_datasets(fake_datasets):
    corpus = load_corpus("hf:wikitext:wikitext-2-raw-v1:test")
    assert fake_datasets.calls == [(("wikitext", "wikitext-2-raw-v1"), {"split": "test"})]
    assert corpus.texts == tuple(f"article {i}" for i in range(40) if i % 4)  # empty ones skipped
    assert (
        corpus.identity == "hf:wikitext:wikitext-2-raw-v1:test#fingerprint=f00dfeed;field=text;min_chars=1;n=all;seed=1"
    )
    load_corpus("hf:wikitext")
    assert fake_datasets.calls[-1] == (("wikitext",), {"split": "train"})


def test_hf_sampling_reads_only_what_it_needs(fake_datasets):
    corpus = load_corpus("hf:wiki", n_samples=5, seed=1)
    order = list(range(40))
    random.Random(1).shuffle(order)
    expected = [f"article {i}" for i in order if i % 4][:5]
    assert corpus.texts == tuple(expected)
    assert all(isinstance(key, list) for key in fake_datasets.dataset.requests)
    assert sum(len(key) for key in fake_datasets.dataset.requests) < 40
    assert load_corpus("hf:wiki", n_samples=5, seed=2).identity != corpus.identity


def test_hf_text_field_and_errors(fake_datasets):
    assert load_corpus("hf:wiki", text_field="title").texts[0] == "t0"
    with pytest.raises(CorpusError, match=r"no column 'body'.*'text', 'title'"):
        load_corpus("hf:wiki", text_field="body")
    with pytest.raises(CorpusError, match="hf:missing.*load_dataset failed.*FileNotFoundError"):
        load_corpus("hf:missing")
    fake_datasets.dataset = FakeDataset([{"text": ""}] * 3)
    with pytest.raises(CorpusError, match="hf:wiki.*at least 1 character"):
        load_corpus("hf:wiki")
