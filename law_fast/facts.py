"""Facts to wash, and loaders for the fact files people already have.

A :class:`Fact` is one (subject, relation, object) triple written as a prompt template:
``Fact(subject="France", template="The capital of {} is", answer="Paris", case_id=7)``.
The model is expected to continue ``fact.prompt`` ("The capital of France is") with the
answer; washing makes it stop doing so.

:func:`load_facts` reads five formats and detects which one a file holds from its content
(never from its extension):

* ``"jsonl"``               law_fast's own JSON Lines format (``docs/facts.md``);
* ``"counterfact-simple"``  the simplified CounterFact editing schema (``ground_truth`` ...);
* ``"counterfact"``         the original ROME/MEMIT CounterFact schema (``requested_rewrite`` ...);
* ``"zsre"``                the MEND zsRE evaluation schema (``src``, ``answers``, ``loc`` ...);
* ``"wiki"``                Wiki-Latest (CounterFact-like, no paraphrases).

Every problem in a file is reported as a :class:`FactFormatError` that names the file, the
line, the record, the field and what was expected; nothing is ever loaded partially.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FORMATS",
    "answer_in",
    "Fact",
    "FactError",
    "FactFormatError",
    "detect_facts_format",
    "facts_from_records",
    "load_facts",
    "save_facts_jsonl",
]

logger = logging.getLogger(__name__)

#: Formats understood by :func:`load_facts`, in the order they are listed in messages.
FORMATS: tuple[str, ...] = ("jsonl", "counterfact", "counterfact-simple", "zsre", "wiki")

SLOT = "{}"
ZSRE_ANSWER_SUFFIX = " Answer:"
ZSRE_LOC_PREFIX = "nq question: "


class FactError(ValueError):
    """An invalid :class:`Fact`. ``field`` names the offending attribute (or None)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class FactFormatError(ValueError):
    """A fact file (or list of records) that cannot be loaded.

    Attributes (None where they do not apply): ``path`` (the file), ``line`` (1-based line
    where the record starts, or where the JSON error is), ``index`` (0-based record index),
    ``field`` (the record field, dotted for nested fields, e.g.
    ``requested_rewrite.target_true.str``).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        index: int | None = None,
        field: str | None = None,
    ):
        super().__init__(message)
        self.path = path
        self.line = line
        self.index = index
        self.field = field


# ----------------------------------------------------------------------------------------
# Fact
# ----------------------------------------------------------------------------------------


def answer_in(answer: str, continuation: str) -> bool:
    """The reference's correctness rule (law-reference §6.2): the stripped, lower-cased answer is a
    substring of the (lower-cased) continuation."""
    return answer.strip().lower() in continuation.lower()


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Fact:
    """One fact to wash.

    subject:       the entity, e.g. ``"France"`` (stored stripped).
    template:      the prompt with exactly one ``"{}"`` where the subject goes, e.g.
                   ``"The capital of {} is"``. Text before ``"{}"`` must be empty or end with
                   whitespace: the subject's last token is located by tokenising the text
                   before the slot and the subject separately, which needs a token boundary.
    answer:        the object the model produces now and that is to be washed, e.g.
                   ``"Paris"`` (stored stripped; code that tokenises it adds the leading space).
    case_id:       an int or a str, unique within a fact set.
    paraphrases:   filled paraphrase prompts (the subject already inside).
    neighbourhood: (filled prompt, expected answer) pairs that must keep working.

    Lists given for ``paraphrases``/``neighbourhood`` are converted to tuples, so a Fact is
    hashable. Invalid values raise :class:`FactError`.
    """

    subject: str
    template: str
    answer: str
    case_id: int | str
    paraphrases: tuple[str, ...] = ()
    neighbourhood: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("subject", "template", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise FactError(f"{name} must be a string, got {_type_name(value)} {_short(value)}", name)
        if isinstance(self.case_id, bool) or not isinstance(self.case_id, (int, str)):
            raise FactError(
                f"case_id must be an int or a str, got {_type_name(self.case_id)} {_short(self.case_id)}",
                "case_id",
            )
        subject, answer = self.subject.strip(), self.answer.strip()
        if not subject:
            raise FactError(f"subject must be a non-empty string, got {_short(self.subject)}", "subject")
        if not answer:
            raise FactError(f"answer must be a non-empty string, got {_short(self.answer)}", "answer")
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "answer", answer)
        _check_template(self.template)
        object.__setattr__(self, "paraphrases", _as_paraphrases(self.paraphrases))
        object.__setattr__(self, "neighbourhood", _as_neighbourhood(self.neighbourhood))

    @property
    def prompt(self) -> str:
        """The template with the subject filled in (``str.replace``, so other braces stay)."""
        return self.template.replace(SLOT, self.subject)

    def to_record(self) -> dict[str, Any]:
        """The record of this fact in law_fast's JSON Lines format (see ``docs/facts.md``)."""
        record: dict[str, Any] = {
            "case_id": self.case_id,
            "subject": self.subject,
            "prompt": self.template,
            "object": self.answer,
        }
        if self.paraphrases:
            record["paraphrases"] = list(self.paraphrases)
        if self.neighbourhood:
            record["neighbourhood"] = [{"prompt": p, "answer": a} for p, a in self.neighbourhood]
        return record


def _check_template(template: str) -> None:
    count = template.count(SLOT)
    if count != 1:
        raise FactError(
            f"template must contain exactly one '{{}}' where the subject goes "
            f"(e.g. 'The capital of {{}} is'), found {count} in {_short(template)}",
            "template",
        )
    before = template[: template.index(SLOT)]
    if before and not before[-1].isspace():
        raise FactError(
            f"template {_short(template)}: the text before '{{}}' must be empty or end with "
            f"whitespace (the subject must start at a token boundary), but it ends with {before[-1]!r}",
            "template",
        )


def _as_paraphrases(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise FactError(
            f"paraphrases must be a list or tuple of strings, got {_type_name(value)} {_short(value)}",
            "paraphrases",
        )
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise FactError(f"paraphrases[{i}] must be a non-empty string, got {_short(item)}", "paraphrases")
    return tuple(value)


def _as_neighbourhood(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise FactError(
            f"neighbourhood must be a list of (prompt, answer) pairs, got {_type_name(value)} {_short(value)}",
            "neighbourhood",
        )
    pairs = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not all(isinstance(s, str) and s.strip() for s in item)
        ):
            raise FactError(
                f"neighbourhood[{i}] must be a (prompt, answer) pair of non-empty strings, got {_short(item)}",
                "neighbourhood",
            )
        pairs.append((item[0], item[1]))
    return tuple(pairs)


# ----------------------------------------------------------------------------------------
# Record converters: one per format. They raise _RecordError(field, message).
# ----------------------------------------------------------------------------------------


class _RecordError(Exception):
    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _require(record: dict, key: str, prefix: str = "") -> Any:
    if key not in record:
        raise _RecordError(prefix + key, f"missing field (keys present: {sorted(record)})")
    return record[key]


def _string(record: dict, key: str, prefix: str = "", *, non_empty: bool = True) -> str:
    value = _require(record, key, prefix)
    if not isinstance(value, str):
        raise _RecordError(prefix + key, f"expected a string, got {_type_name(value)} {_short(value)}")
    if non_empty and not value.strip():
        raise _RecordError(prefix + key, f"expected a non-empty string, got {_short(value)}")
    return value


def _object(record: dict, key: str, prefix: str = "") -> dict:
    value = _require(record, key, prefix)
    if not isinstance(value, dict):
        raise _RecordError(prefix + key, f"expected an object, got {_type_name(value)} {_short(value)}")
    return value


def _string_list(record: dict, key: str, *, non_empty_list: bool = False) -> list[str]:
    value = _require(record, key)
    if not isinstance(value, list):
        raise _RecordError(key, f"expected a list of strings, got {_type_name(value)} {_short(value)}")
    if non_empty_list and not value:
        raise _RecordError(key, "expected a non-empty list of strings, got []")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _RecordError(f"{key}[{i}]", f"expected a non-empty string, got {_short(item)}")
    return value


def _case_id(record: dict, key: str = "case_id") -> int | str:
    value = _require(record, key)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _RecordError(key, f"expected an integer or a string, got {_type_name(value)} {_short(value)}")
    if isinstance(value, str) and not value.strip():
        raise _RecordError(key, f"expected a non-empty string, got {_short(value)}")
    return value


def _template_from_filled(prompt: str, subject: str, field: str, *, last: bool) -> str:
    """Replace one occurrence of ``subject`` in ``prompt`` by the slot; the others stay literal."""
    subject = subject.strip()
    pos = prompt.rfind(subject) if last else prompt.find(subject)
    if pos < 0:
        raise _RecordError(field, f"the subject {_short(subject)} does not occur in the prompt {_short(prompt)}")
    return prompt[:pos] + SLOT + prompt[pos + len(subject) :]


_JSONL_KEYS = frozenset({"case_id", "subject", "prompt", "object", "paraphrases", "neighbourhood", "neighborhood"})
_NEIGHBOUR_KEYS = frozenset({"prompt", "answer"})


def _from_jsonl(record: dict, index: int) -> Fact:
    unknown = sorted(set(record) - _JSONL_KEYS)
    if unknown:
        raise _RecordError(
            ", ".join(unknown),
            f"unknown field(s) {unknown}; allowed fields: {sorted(_JSONL_KEYS)}",
        )
    case_id = _case_id(record) if "case_id" in record else index
    subject = _string(record, "subject")
    template = _string(record, "prompt")
    answer = _string(record, "object")
    paraphrases: Sequence[str] = ()
    if "paraphrases" in record:
        paraphrases = _string_list(record, "paraphrases")
    if "neighbourhood" in record and "neighborhood" in record:
        raise _RecordError("neighbourhood", "give either 'neighbourhood' or 'neighborhood', not both")
    neighbourhood: list[tuple[str, str]] = []
    key = "neighbourhood" if "neighbourhood" in record else "neighborhood"
    if key in record:
        items = record[key]
        if not isinstance(items, list):
            raise _RecordError(
                key, f'expected a list of {{"prompt", "answer"}} objects, got {_type_name(items)} {_short(items)}'
            )
        for i, item in enumerate(items):
            where = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise _RecordError(
                    where, f'expected an object {{"prompt": ..., "answer": ...}}, got {_type_name(item)} {_short(item)}'
                )
            extra = sorted(set(item) - _NEIGHBOUR_KEYS)
            if extra:
                raise _RecordError(where, f"unknown field(s) {extra}; allowed fields: ['answer', 'prompt']")
            neighbourhood.append((_string(item, "prompt", where + "."), _string(item, "answer", where + ".")))
    return Fact(subject, template, answer, case_id, tuple(paraphrases), tuple(neighbourhood))


def _from_counterfact_simple(record: dict, index: int) -> Fact:
    case_id = _case_id(record)
    prompt = _string(record, "prompt")
    subject = _string(record, "subject")
    answer = _string(record, "ground_truth")
    template = _template_from_filled(prompt, subject, "prompt", last=True)
    paraphrases: tuple[str, ...] = ()
    if "rephrase_prompt" in record:
        paraphrases = (_string(record, "rephrase_prompt"),)
    neighbourhood: tuple[tuple[str, str], ...] = ()
    if "locality_prompt" in record or "locality_ground_truth" in record:
        neighbourhood = ((_string(record, "locality_prompt"), _string(record, "locality_ground_truth")),)
    return Fact(subject, template, answer, case_id, paraphrases, neighbourhood)


def _from_requested_rewrite(record: dict, with_prompts: bool) -> Fact:
    case_id = _case_id(record)
    rewrite = _object(record, "requested_rewrite")
    template = _string(rewrite, "prompt", "requested_rewrite.")
    subject = _string(rewrite, "subject", "requested_rewrite.")
    target_true = _object(rewrite, "target_true", "requested_rewrite.")
    answer = _string(target_true, "str", "requested_rewrite.target_true.")
    paraphrases: Sequence[str] = ()
    neighbourhood: tuple[tuple[str, str], ...] = ()
    if with_prompts:
        if "paraphrase_prompts" in record:
            paraphrases = _string_list(record, "paraphrase_prompts")
        if "neighborhood_prompts" in record:
            # As in MEMIT's CounterFact: neighbourhood prompts share the relation and the
            # true object of the record, so their expected answer is target_true.str.
            neighbourhood = tuple((p, answer.strip()) for p in _string_list(record, "neighborhood_prompts"))
    return Fact(subject, template, answer, case_id, tuple(paraphrases), neighbourhood)


def _from_counterfact(record: dict, index: int) -> Fact:
    return _from_requested_rewrite(record, with_prompts=True)


def _from_wiki(record: dict, index: int) -> Fact:
    return _from_requested_rewrite(record, with_prompts=False)


def _from_zsre(record: dict, index: int) -> Fact:
    subject = _string(record, "subject")
    src = _string(record, "src")
    answers = _string_list(record, "answers", non_empty_list=True)
    template = _template_from_filled(src, subject, "src", last=False) + ZSRE_ANSWER_SUFFIX
    paraphrases: tuple[str, ...] = ()
    if "rephrase" in record:
        paraphrases = (_string(record, "rephrase") + ZSRE_ANSWER_SUFFIX,)
    neighbourhood: tuple[tuple[str, str], ...] = ()
    if "loc" in record or "loc_ans" in record:
        loc = _string(record, "loc")
        if not loc.startswith(ZSRE_LOC_PREFIX):
            raise _RecordError("loc", f"expected a string starting with {ZSRE_LOC_PREFIX!r}, got {_short(loc)}")
        loc_prompt = loc[len(ZSRE_LOC_PREFIX) :] + "?" + ZSRE_ANSWER_SUFFIX
        neighbourhood = ((loc_prompt, _string(record, "loc_ans")),)
    return Fact(subject, template, answers[0], index, paraphrases, neighbourhood)


_CONVERTERS: dict[str, Callable[[dict, int], Fact]] = {
    "jsonl": _from_jsonl,
    "counterfact": _from_counterfact,
    "counterfact-simple": _from_counterfact_simple,
    "zsre": _from_zsre,
    "wiki": _from_wiki,
}

# Which record field a Fact attribute comes from, per format (for error messages).
_FIELD_OF: dict[str, dict[str, str]] = {
    "jsonl": {"template": "prompt", "answer": "object", "neighbourhood": "neighbourhood"},
    "counterfact-simple": {
        "template": "prompt",
        "answer": "ground_truth",
        "paraphrases": "rephrase_prompt",
        "neighbourhood": "locality_prompt",
    },
    "counterfact": {
        "template": "requested_rewrite.prompt",
        "subject": "requested_rewrite.subject",
        "answer": "requested_rewrite.target_true.str",
        "paraphrases": "paraphrase_prompts",
        "neighbourhood": "neighborhood_prompts",
    },
    "wiki": {
        "template": "requested_rewrite.prompt",
        "subject": "requested_rewrite.subject",
        "answer": "requested_rewrite.target_true.str",
    },
    "zsre": {"template": "src", "answer": "answers[0]", "paraphrases": "rephrase", "neighbourhood": "loc"},
}


# ----------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------


def _formats_for_keys(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    found = []
    if "requested_rewrite" in keys:
        found.append("counterfact" if keys & {"paraphrase_prompts", "neighborhood_prompts"} else "wiki")
    if {"ground_truth", "subject", "prompt"} <= keys:
        found.append("counterfact-simple")
    if {"src", "answers"} <= keys:
        found.append("zsre")
    return found


_DETECTION_RULES = (
    "JSON Lines (first line a complete object) -> jsonl; JSON list whose first record has "
    "'requested_rewrite' and 'paraphrase_prompts'/'neighborhood_prompts' -> counterfact, "
    "'requested_rewrite' without them -> wiki, 'ground_truth'+'subject'+'prompt' -> "
    "counterfact-simple, 'src'+'answers' -> zsre"
)


def _detect_list_format(first: Any) -> str:
    """Format of a JSON list from its first record; raises _RecordError when unclear."""
    if not isinstance(first, dict):
        raise _RecordError(None, f"expected a JSON object, got {_type_name(first)} {_short(first)}")
    found = _formats_for_keys(first)
    if len(found) == 1:
        return found[0]
    if not found and {"subject", "prompt", "object"} <= set(first):
        hint = (
            "; it looks like law_fast's own records inside a JSON list: write one object per line (JSON Lines) instead"
        )
    else:
        hint = ""
    what = "is ambiguous between " + ", ".join(found) if found else "matches no known format"
    raise _RecordError(
        None,
        f"cannot detect the fact format: the first record {what} (keys seen: {sorted(first)}); "
        f"formats: {', '.join(FORMATS)} ({_DETECTION_RULES}); pass format= explicitly{hint}",
    )


# ----------------------------------------------------------------------------------------
# Parsing files
# ----------------------------------------------------------------------------------------

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _json_error(path: str, err: json.JSONDecodeError) -> FactFormatError:
    return FactFormatError(
        f"{path}:{err.lineno}: invalid JSON: {err.msg} (line {err.lineno}, column {err.colno})",
        path=path,
        line=err.lineno,
    )


def _parse_jsonl(text: str, path: str, limit: int | None) -> list[tuple[Any, int]]:
    """[(record, line number)] of a JSON Lines text; blank lines are skipped."""
    records: list[tuple[Any, int]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if limit is not None and len(records) >= limit:
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            hint = " (comment lines are not allowed)" if line.lstrip().startswith("#") else ""
            raise FactFormatError(
                f"{path}:{lineno}: invalid JSON{hint}: {err.msg} (column {err.colno}); "
                f"expected one JSON object per line",
                path=path,
                line=lineno,
                index=len(records),
            ) from None
        records.append((record, lineno))
    return records


def _parse_json_list(text: str, path: str, limit: int | None) -> list[tuple[Any, int]]:
    """[(record, line where it starts)] of a JSON array, stopping after ``limit`` records."""
    pos = _WHITESPACE.match(text, 0).end()
    if pos >= len(text) or text[pos] != "[":
        line, _ = _line_col(text, pos)
        raise FactFormatError(
            f"{path}:{line}: expected a JSON list of records ('[') or JSON Lines (one object per "
            f"line), found {_short(text[pos : pos + 20])}",
            path=path,
            line=line,
        )
    pos = _WHITESPACE.match(text, pos + 1).end()
    records: list[tuple[Any, int]] = []
    line, line_pos = 1, 0  # running line count, so line numbers cost O(file) in total
    if text.startswith("]", pos):
        pos += 1
    else:
        while limit is None or len(records) < limit:
            line += text.count("\n", line_pos, pos)
            line_pos = pos
            try:
                record, pos = _DECODER.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                raise _json_error(path, err) from None
            records.append((record, line))
            pos = _WHITESPACE.match(text, pos).end()
            if text.startswith(",", pos):
                pos = _WHITESPACE.match(text, pos + 1).end()
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            err_line, col = _line_col(text, pos)
            raise FactFormatError(
                f"{path}:{err_line}: invalid JSON: expected ',' or ']' after record {len(records) - 1} "
                f"(line {err_line}, column {col})",
                path=path,
                line=err_line,
            )
        else:
            return records  # stopped at the limit; the rest is not read
    pos = _WHITESPACE.match(text, pos).end()
    if pos < len(text):
        err_line, col = _line_col(text, pos)
        raise FactFormatError(
            f"{path}:{err_line}: invalid JSON: extra data after the list (line {err_line}, column {col})",
            path=path,
            line=err_line,
        )
    return records


def _read_text(path: str) -> str:
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise FactFormatError(
            f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start})", path=path, line=line
        ) from None


def _sniff(text: str, path: str) -> str:
    """'jsonl' or 'list' (a JSON list whose format is decided from its records)."""
    stripped = text.lstrip()
    if not stripped:
        raise FactFormatError(f"{path}: the file is empty (no records)", path=path)
    if stripped[0] == "[":
        return "list"
    first_pos = len(text) - len(stripped)
    first_line_no = text.count("\n", 0, first_pos) + 1
    if stripped[0] == "{":
        end = text.find("\n", first_pos)
        first_line = text[first_pos:] if end < 0 else text[first_pos:end]
        try:
            if isinstance(json.loads(first_line), dict):
                return "jsonl"
        except json.JSONDecodeError:
            pass
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return "jsonl"  # report the first line's error, as JSON Lines
        raise FactFormatError(
            f"{path}:{first_line_no}: the file holds a single JSON object spread over several lines; "
            f"expected JSON Lines (one object per line) or a JSON list of records",
            path=path,
            line=first_line_no,
        )
    raise FactFormatError(
        f"{path}:{first_line_no}: cannot detect the fact format: the file starts with "
        f"{_short(stripped[:20])}; expected '{{' (JSON Lines, one object per line; comment lines "
        f"are not allowed) or '[' (a JSON list of records)",
        path=path,
        line=first_line_no,
    )


def _check_format_name(format: str | None, where: str) -> None:
    if format is not None and format not in FORMATS:
        raise FactFormatError(f"{where}: unknown format {format!r}; expected one of {', '.join(FORMATS)}")


def _describe(path: str | None, line: int | None, index: int, record: Any) -> str:
    case = ""
    if isinstance(record, dict) and isinstance(record.get("case_id"), (int, str)):
        case = f" (case_id {record['case_id']!r})"
    if path is None:
        return f"records[{index}]{case}"
    return f"{path}:{line}: record {index}{case}"


def _convert(
    records: Sequence[tuple[Any, int | None]],
    format: str,
    path: str | None,
) -> list[Fact]:
    convert = _CONVERTERS[format]
    fields = _FIELD_OF[format]
    facts: list[Fact] = []
    first_seen: dict[int | str, int] = {}
    for index, (record, line) in enumerate(records):
        where = _describe(path, line, index, record)
        try:
            if not isinstance(record, dict):
                raise _RecordError(None, f"expected a JSON object, got {_type_name(record)} {_short(record)}")
            fact = convert(record, index)
        except _RecordError as err:
            field_part = f"field '{err.field}': " if err.field else ""
            raise FactFormatError(
                f"{where}: {field_part}{err.message} [format {format}]",
                path=path,
                line=line,
                index=index,
                field=err.field,
            ) from None
        except FactError as err:
            field = fields.get(err.field or "", err.field)
            raise FactFormatError(
                f"{where}: field '{field}': {err} [format {format}]",
                path=path,
                line=line,
                index=index,
                field=field,
            ) from None
        if fact.case_id in first_seen:
            first = first_seen[fact.case_id]
            first_where = f"line {records[first][1]}, record {first}" if path else f"records[{first}]"
            raise FactFormatError(
                f"{where}: field 'case_id': duplicate case_id {fact.case_id!r}, first used at {first_where}",
                path=path,
                line=line,
                index=index,
                field="case_id",
            )
        first_seen[fact.case_id] = index
        facts.append(fact)
    return facts


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------


def detect_facts_format(path: str | os.PathLike) -> str:
    """The format of a fact file, decided from its content (see :func:`load_facts`)."""
    path = os.fspath(path)
    text = _read_text(path)
    if _sniff(text, path) == "jsonl":
        return "jsonl"
    records = _parse_json_list(text, path, limit=1)
    if not records:
        raise FactFormatError(f"{path}: the JSON list is empty (no records)", path=path)
    record, line = records[0]
    try:
        return _detect_list_format(record)
    except _RecordError as err:
        raise FactFormatError(f"{path}:{line}: record 0: {err.message}", path=path, line=line, index=0) from None


def load_facts(
    path: str | os.PathLike,
    format: str | None = None,
    limit: int | None = None,
) -> list[Fact]:
    """Load the facts of a file.

    path:   a JSON Lines file or a JSON list, in one of :data:`FORMATS`.
    format: None to detect it from the content: JSON Lines (the first non-blank character
            is ``{`` and the first line is a complete JSON object) is ``"jsonl"``; a JSON
            list is classified by the keys of its first record: ``requested_rewrite`` with
            ``paraphrase_prompts`` or ``neighborhood_prompts`` → ``"counterfact"``,
            ``requested_rewrite`` without them → ``"wiki"``, ``ground_truth`` + ``subject`` +
            ``prompt`` → ``"counterfact-simple"``, ``src`` + ``answers`` → ``"zsre"``.
            No match, or more than one, is an error.
    limit:  keep only the first ``limit`` records (the rest of the file is not read).

    Raises FactFormatError (file, line, record, field, what was expected) on any problem,
    FileNotFoundError if the file is missing. Case ids must be unique within the file.
    """
    path = os.fspath(path)
    _check_format_name(format, path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative integer, got {limit!r}")
    text = _read_text(path)
    layout = "jsonl" if format == "jsonl" else "list" if format is not None else _sniff(text, path)
    if not text.strip():
        raise FactFormatError(f"{path}: the file is empty (no records)", path=path)
    if layout == "jsonl":
        records = _parse_jsonl(text, path, limit)
        detected = "jsonl"
    else:
        records = _parse_json_list(text, path, limit)
        detected = format
    if not records:
        if limit == 0:
            return []
        raise FactFormatError(f"{path}: no records found", path=path)
    if detected is None:
        record, line = records[0]
        try:
            detected = _detect_list_format(record)
        except _RecordError as err:
            raise FactFormatError(f"{path}:{line}: record 0: {err.message}", path=path, line=line, index=0) from None
    facts = _convert(records, detected, path)
    logger.info("loaded %d facts from %s (format %s)", len(facts), path, detected)
    return facts


def facts_from_records(records: Sequence[Any], format: str | None = None) -> list[Fact]:
    """Facts from in-memory records (dicts as they would appear in a file of ``format``).

    ``format=None`` detects it from the keys of the first record, as for a JSON list (a
    record with ``subject``/``prompt``/``object`` and nothing CounterFact-like is taken as
    ``"jsonl"``). Errors name the record index (``records[i]``) and the field.
    """
    _check_format_name(format, "records")
    if isinstance(records, (str, bytes, dict)):
        raise TypeError(f"records must be a sequence of dicts, got {type(records).__name__}")
    records = list(records)
    if not records:
        return []
    if format is None:
        first = records[0]
        if isinstance(first, dict) and not _formats_for_keys(first) and {"subject", "prompt", "object"} <= set(first):
            format = "jsonl"
        else:
            try:
                format = _detect_list_format(first)
            except _RecordError as err:
                raise FactFormatError(f"records[0]: {err.message}", index=0) from None
    return _convert([(r, None) for r in records], format, None)


def save_facts_jsonl(facts: Iterable[Fact], path: str | os.PathLike) -> None:
    """Write facts in law_fast's JSON Lines format; :func:`load_facts` reads them back equal.

    The file is written to a temporary name and renamed, so a failure leaves no half file.
    Raises FactError on duplicate case ids (the file could not be loaded back).
    """
    path = os.fspath(path)
    lines = []
    seen: set[int | str] = set()
    for i, fact in enumerate(facts):
        if not isinstance(fact, Fact):
            raise TypeError(f"facts[{i}] must be a Fact, got {type(fact).__name__}")
        if fact.case_id in seen:
            raise FactError(f"facts[{i}]: duplicate case_id {fact.case_id!r}", "case_id")
        seen.add(fact.case_id)
        lines.append(json.dumps(fact.to_record(), ensure_ascii=False) + "\n")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.writelines(lines)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
