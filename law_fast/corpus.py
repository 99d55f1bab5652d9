"""Text corpora for the covariance statistics.

:func:`load_corpus` turns a file, a Hugging Face dataset or a list of strings into a
:class:`Corpus`: the documents (already sampled and ordered) plus a stable, content-derived
``identity`` that goes into cache keys (so cached statistics are reused exactly when the same
documents would be read again).

Sources:

* a plain-text file (any extension other than ``.jsonl``/``.ndjson``/``.json``): line
  endings are normalised (CRLF, CR → LF). If the file has at least two blank-line-separated
  blocks and one of them has more than one line, each block is a document (a paragraph);
  otherwise each non-empty line is a document. Documents are stripped of surrounding
  whitespace. Heading lines are kept (WikiText-2 raw: 2,891 documents, 706 of them
  headings such as ``"= Robert Boulter ="``).
* ``.jsonl`` / ``.ndjson``: the ``text_field`` string of each line (blank lines skipped).
* ``.json``: a JSON list of strings, or of objects with a ``text_field`` string.
* ``"hf:NAME[:CONFIG[:SPLIT]]"``: ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)``
  (split defaults to ``train``), field ``text_field``. ``datasets`` is optional and imported
  only here. Nothing is set that forces a download: a dataset in the local HF cache loads
  offline (set ``HF_DATASETS_OFFLINE=1`` to forbid network access altogether).
* a sequence of strings: an in-memory corpus.

Sampling (``n_samples`` = N): the indices of all documents are shuffled with
``random.Random(seed)`` (as the reference's ``FixedRandomSubsetSampler``) and walked in that
order, keeping documents with at least ``min_chars`` characters (after stripping) until N are
kept. The reference drops empty documents after taking the first N indices instead, so it can
end with fewer than N; with no short documents the two agree. ``n_samples=None`` keeps every
document with at least ``min_chars`` characters, in source order.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hf.adapters import model_fingerprint, model_name
from .hf.compat import max_length
from .hf.generate import sample_continuations
from .hf.loading import cache_dir

__all__ = ["Corpus", "CorpusError", "default_corpus", "load_corpus", "parse_hf_source", "resolve"]

logger = logging.getLogger(__name__)

HF_PREFIX = "hf:"
HF_DEFAULT_SPLIT = "train"
_HASH_CHARS = 16
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


class CorpusError(ValueError):
    """A corpus source that cannot be read or holds no usable document."""


@dataclass(frozen=True)
class Corpus:
    """Documents for covariance statistics.

    identity: stable, content-derived description for cache keys, e.g.
              ``"file:wiki.test.raw#sha256=4f3e427e4aff23ac;min_chars=1;n=all;seed=1"``.
              It may contain ``/``, ``:`` and ``;``: hash it before using it in a file name.
    texts:    the documents, already sampled and ordered.
    """

    identity: str
    texts: tuple[str, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.identity, str) or not self.identity:
            raise CorpusError(f"identity must be a non-empty string, got {self.identity!r}")
        texts = tuple(self.texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise CorpusError(f"texts[{i}] must be a string, got {type(text).__name__}")
        object.__setattr__(self, "texts", texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts)

    def __getitem__(self, index: int) -> str:
        return self.texts[index]

    def __repr__(self) -> str:
        return f"Corpus(identity={self.identity!r}, documents={len(self.texts)})"


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_HASH_CHARS]


def _texts_hash(texts: Iterable[str]) -> str:
    """sha256 of the documents, each length-prefixed so that boundaries count."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:_HASH_CHARS]


def _select(
    count: int,
    fetch: Callable[[list[int]], Sequence[Any]],
    n_samples: int | None,
    seed: int,
    min_chars: int,
    source: str,
) -> list[str]:
    """Documents ``fetch(indices)`` chosen as described in the module docstring."""
    order = list(range(count))
    if n_samples is not None:
        random.Random(seed).shuffle(order)
    kept: list[str] = []
    pos = 0
    while pos < count and (n_samples is None or len(kept) < n_samples):
        step = count if n_samples is None else n_samples - len(kept)
        chunk = order[pos : pos + step]
        texts = fetch(chunk)
        for index, text in zip(chunk, texts):
            if not isinstance(text, str):
                raise CorpusError(f"{source}: document {index} is not a string but {type(text).__name__}")
            if len(text.strip()) >= min_chars:
                kept.append(text)
        pos += len(chunk)
    if not kept:
        raise CorpusError(
            f"{source}: none of its {count} documents has at least {min_chars} character{'s' if min_chars != 1 else ''}"
        )
    if n_samples is not None and len(kept) < n_samples:
        logger.warning(
            "%s: asked for %d documents, only %d have >= %d characters", source, n_samples, len(kept), min_chars
        )
    return kept


def _split_plain_text(text: str) -> list[str]:
    """Documents of a plain-text file (see the module docstring)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in text.split("\n"):
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    if len(blocks) > 1 and any(len(block) > 1 for block in blocks):
        return ["\n".join(block).strip() for block in blocks]
    return [line.strip() for block in blocks for line in block]


def _text_of(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise CorpusError(f"{where}: expected a JSON object with a {text_field!r} field, got {type(record).__name__}")
    if text_field not in record:
        raise CorpusError(f"{where}: missing field {text_field!r} (keys present: {sorted(record)})")
    value = record[text_field]
    if not isinstance(value, str):
        raise CorpusError(f"{where}: field {text_field!r} must be a string, got {type(value).__name__}")
    return value


def json_lines(text: str, path, error: type[Exception]):
    """(line number, record) of each non-blank line of a JSON Lines text; a line that is not JSON
    raises ``error`` naming the file, the line and the column."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{path}:{lineno}: invalid JSON: {err.msg} (column {err.colno})") from None


def _jsonl_documents(text: str, path: str, text_field: str) -> list[str]:
    return [_text_of(record, text_field, f"{path}:{lineno}") for lineno, record in json_lines(text, path, CorpusError)]


def _json_documents(text: str, path: str, text_field: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CorpusError(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(data, list):
        raise CorpusError(
            f"{path}: expected a JSON list of strings or of objects with {text_field!r}, got {type(data).__name__}"
        )
    return [
        item if isinstance(item, str) else _text_of(item, text_field, f"{path}: item {i}")
        for i, item in enumerate(data)
    ]


# ----------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------


def _load_file(path: Path, n_samples: int | None, seed: int, min_chars: int, text_field: str) -> Corpus:
    shown = str(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus file not found: {shown}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise CorpusError(f"{shown}:{line}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        documents = _jsonl_documents(text, shown, text_field)
        kind = f";field={text_field}"
    elif suffix == ".json":
        documents = _json_documents(text, shown, text_field)
        kind = f";field={text_field}"
    else:
        documents = _split_plain_text(text)
        kind = ""
    if not documents:
        raise CorpusError(f"{shown}: the corpus is empty (no documents)")
    texts = _select(len(documents), lambda idx: [documents[i] for i in idx], n_samples, seed, min_chars, shown)
    base = f"file:{path.name}#sha256={_short_hash(data)}{kind}"
    return Corpus(_identity(base, n_samples, seed, min_chars), tuple(texts))


def _load_memory(texts: Iterable[Any], n_samples: int | None, seed: int, min_chars: int) -> Corpus:
    documents = list(texts)
    for i, text in enumerate(documents):
        if not isinstance(text, str):
            raise CorpusError(f"in-memory corpus: texts[{i}] must be a string, got {type(text).__name__}")
    if not documents:
        raise CorpusError("in-memory corpus: the corpus is empty (no documents)")
    selected = _select(
        len(documents), lambda idx: [documents[i] for i in idx], n_samples, seed, min_chars, "in-memory corpus"
    )
    base = f"memory:sha256={_texts_hash(documents)}"
    return Corpus(_identity(base, n_samples, seed, min_chars), tuple(selected))


def parse_hf_source(source: str) -> tuple[str, str | None, str]:
    """``"hf:NAME[:CONFIG[:SPLIT]]"`` → (name, config or None, split; default ``"train"``).

    An empty CONFIG (``"hf:NAME::SPLIT"``) means the dataset's default configuration.
    """
    if not source.startswith(HF_PREFIX):
        raise CorpusError(f"{source!r}: a Hugging Face source starts with {HF_PREFIX!r}")
    parts = source[len(HF_PREFIX) :].split(":")
    if len(parts) > 3 or not parts[0].strip() or (len(parts) == 3 and not parts[2].strip()):
        raise CorpusError(
            f"{source!r}: expected 'hf:NAME', 'hf:NAME:CONFIG' or 'hf:NAME:CONFIG:SPLIT' "
            f"(e.g. 'hf:wikitext:wikitext-2-raw-v1:train')"
        )
    name = parts[0].strip()
    config = (parts[1].strip() or None) if len(parts) > 1 else None
    split = parts[2].strip() if len(parts) > 2 else HF_DEFAULT_SPLIT
    return name, config, split


def _load_hf(source: str, n_samples: int | None, seed: int, min_chars: int, text_field: str) -> Corpus:
    name, config, split = parse_hf_source(source)
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as err:
        raise ImportError(
            f"corpus {source!r} needs the Hugging Face 'datasets' package, which is not installed "
            f"(pip install datasets); or pass a .txt/.jsonl file or a list of strings instead"
        ) from err
    logger.info("loading %s (datasets.load_dataset(%r, %r, split=%r))", source, name, config, split)
    try:
        if config is None:
            dataset = datasets.load_dataset(name, split=split)
        else:
            dataset = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # the datasets library raises many types; keep the cause
        raise CorpusError(f"{source}: datasets.load_dataset failed: {type(err).__name__}: {err}") from err
    if not hasattr(dataset, "__len__"):
        raise CorpusError(
            f"{source}: got a {type(dataset).__name__} without a length; streaming datasets are not supported"
        )
    columns = list(getattr(dataset, "column_names", None) or [])
    if text_field not in columns:
        raise CorpusError(f"{source}: no column {text_field!r} (columns: {columns}); pass text_field=")
    if len(dataset) == 0:
        raise CorpusError(f"{source}: the corpus is empty (no documents)")

    def fetch(indices: list[int]) -> Sequence[Any]:
        # Without sampling _select asks once for every index: read the whole column.
        return dataset[text_field] if n_samples is None else dataset[indices][text_field]

    texts = _select(len(dataset), fetch, n_samples, seed, min_chars, source)
    base = f"hf:{name}:{config or ''}:{split}"
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint:
        base += f"#fingerprint={fingerprint}"
    base += f";field={text_field}"
    return Corpus(_identity(base, n_samples, seed, min_chars), tuple(texts))


def _identity(base: str, n_samples: int | None, seed: int, min_chars: int) -> str:
    return f"{base};min_chars={min_chars};n={'all' if n_samples is None else n_samples};seed={seed}"


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------


def load_corpus(
    source: str | os.PathLike | Sequence[str],
    n_samples: int | None = None,
    seed: int = 1,
    min_chars: int = 1,
    *,
    text_field: str = "text",
) -> Corpus:
    """Load a corpus from a file, ``"hf:NAME[:CONFIG[:SPLIT]]"`` or a sequence of strings.

    n_samples:  number of documents to draw (None: all, in source order); see the module
                docstring for the deterministic sampling rule.
    seed:       the ``random.Random`` seed of the sample.
    min_chars:  documents with fewer characters (after stripping) are skipped; >= 1.
    text_field: the field holding the text in ``.jsonl``/``.json`` files and HF datasets.

    The identity records the content hash (file bytes, or the in-memory texts; the dataset
    fingerprint for HF), the text field, ``min_chars``, ``n_samples`` and ``seed``.
    Raises FileNotFoundError for a missing file, CorpusError (naming the source, and the
    line for ``.jsonl``) for an unreadable or empty corpus, ImportError when an ``hf:``
    source is used without the ``datasets`` package.
    """
    if n_samples is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1):
        raise ValueError(f"n_samples must be None or a positive integer, got {n_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 1:
        raise ValueError(f"min_chars must be a positive integer, got {min_chars!r}")
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        corpus = _load_hf(source, n_samples, seed, min_chars, text_field)
    elif isinstance(source, (str, os.PathLike)):
        corpus = _load_file(Path(source).expanduser().resolve(), n_samples, seed, min_chars, text_field)
    elif isinstance(source, (bytes, dict)) or not isinstance(source, Iterable):
        raise TypeError(
            f"source must be a path, 'hf:NAME[:CONFIG[:SPLIT]]' or a sequence of strings, got {type(source).__name__}"
        )
    else:
        corpus = _load_memory(source, n_samples, seed, min_chars)
    logger.info("corpus %s: %d documents", corpus.identity, len(corpus))
    return corpus


def resolve(
    source,
    model=None,
    tokenizer=None,
    *,
    n_samples: int | None = None,
    seed: int = 1,
    default_texts: int = 64,
    default_tokens: int = 128,
) -> Corpus:
    """The one way the library turns a corpus argument into a :class:`Corpus`.

    ``source`` None: the embedded default corpus, ``default_texts`` texts of ``default_tokens``
    tokens sampled from ``model`` (:func:`default_corpus`; needs ``model`` and ``tokenizer``); a
    :class:`Corpus`: itself; anything else (a path, ``"hf:..."``, a list of texts):
    :func:`load_corpus` with ``n_samples`` and ``seed``."""
    if source is None:
        if model is None or tokenizer is None:
            raise ValueError("the default corpus is sampled from the model: pass model and tokenizer, or a corpus")
        return default_corpus(model, tokenizer, n_texts=default_texts, new_tokens=default_tokens)
    if isinstance(source, Corpus):
        return source
    return load_corpus(source, n_samples=n_samples, seed=seed)


DEFAULT_CORPUS_PROMPTS = (
    "The",
    "In",
    "A",
    "It",
    "He",
    "She",
    "They",
    "We",
    "This",
    "When",
    "After",
    "Although",
    "Many",
    "Some",
    "One",
    "Today",
    "History",
    "Science",
    "According to",
    "During the",
    "My",
    "There",
    "If",
    "Why",
    "How",
    "What",
    "The city of",
    "The team",
    "Scientists",
    "The government",
    "In 1990,",
    "Music",
    "The company",
    "Water",
    "The first",
    "Students",
    "Our",
    "Every",
    "Most",
    "At the",
    "For",
    "Two",
    "Although the",
    "Researchers",
    "The book",
    "The river",
    "People",
    "Yesterday",
)


def default_corpus(model, tokenizer, n_texts: int = 64, new_tokens: int = 128, seed: int = 1234) -> Corpus:
    """The embedded default corpus: text sampled from the model itself (top-40, fixed seed).

    Needs no download and no licence; it is cached on disk per model fingerprint.  It is a
    stand-in for real text: for real runs pass a corpus (e.g. WikiText or Wikipedia)."""
    longest_prompt = max(len(tokenizer(p)["input_ids"]) for p in DEFAULT_CORPUS_PROMPTS)
    new_tokens = max(1, min(new_tokens, max_length(model, tokenizer) - longest_prompt))  # short-context models
    ident = f"sampled:{model_name(model)}:{model_fingerprint(model)}:n={n_texts}:len={new_tokens}:seed={seed}"
    path = cache_dir() / "corpora" / (hashlib.sha256(ident.encode()).hexdigest()[:20] + ".json")
    texts = None
    if path.is_file():
        try:
            blob = json.loads(path.read_text())
            texts = blob["texts"] if blob.get("identity") == ident else None
        except (json.JSONDecodeError, KeyError, TypeError):
            texts = None
    if texts is None:
        prompts = [DEFAULT_CORPUS_PROMPTS[i % len(DEFAULT_CORPUS_PROMPTS)] for i in range(n_texts)]
        conts = sample_continuations(
            model,
            tokenizer,
            prompts,
            max_new_tokens=new_tokens,
            top_k=40,
            seed=seed,
            batch_size=64,
            desc="sampling default corpus",
        )
        texts = [p + c for p, c in zip(prompts, conts)]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"identity": ident, "texts": texts}))
        os.replace(tmp, path)
    return load_corpus(texts)
