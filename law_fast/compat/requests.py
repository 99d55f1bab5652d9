"""Edit requests as MEMIT-family code writes them, read into law_fast facts.

Two schemas (``requests_to_facts``):

* MEMIT / ROME / the LaW authors' fork: ``{"case_id", "prompt": "The capital of {} is", "subject":
  "France", "target_new": {"str": "Rome"}, "target_true": {"str": "Paris"}}`` (``target_true``
  optional);
* EasyEdit: ``{"prompt": "The capital of France is", "subject": "France", "target_new": "Rome",
  "ground_truth": "Paris"}`` — the full prompt (the subject inside it, or a ``{}``); ``case_id``
  optional (the request's position).

A request is read into a :class:`Request`; ``Request.fact("target_new")`` is the
:class:`~law_fast.facts.Fact` an edit fits (its answer is the text the model is to emit, stripped;
law_fast adds the leading space as both clients do: the closed-form methods' ``"answer"`` target),
``Request.fact("target_true")`` the fact a wash removes.  Every problem is a :class:`RequestError`
that names the request (index, case id) and the field.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..facts import Fact, FactError

log = logging.getLogger(__name__)

#: keys each schema may carry (anything else is refused, not ignored)
MEMIT_KEYS = {"case_id", "prompt", "subject", "target_new", "target_true"}
EASYEDIT_KEYS = {
    "case_id",
    "prompt",
    "subject",
    "target_new",
    "ground_truth",
    # carried by EasyEdit's BaseEditor for its own evaluation (and other methods); MEMIT does not read them
    "target_neg",
    "rephrase_prompt",
    "locality",
    "portability",
    "loc_prompt",
    "loc_ans",
}


class RequestError(ValueError):
    """An edit request law_fast cannot read: ``index`` (0-based), ``case_id`` and ``field``."""

    def __init__(self, message: str, index: int, case_id: Any = None, field: str | None = None):
        where = f"request {index}" + (f" (case_id {case_id!r})" if case_id is not None else "")
        super().__init__(f"{where}: {message}")
        self.index, self.case_id, self.field = index, case_id, field


def _text(value: Any, field: str, index: int, case_id: Any, nested: bool) -> str:
    """A target string: {"str": ...} (MEMIT) or a plain string (EasyEdit)."""
    if nested:
        if not isinstance(value, Mapping) or "str" not in value:
            raise RequestError(f'{field} must be {{"str": ...}}, got {value!r}', index, case_id, field)
        extra = sorted(set(value) - {"str", "id"})
        if extra:
            raise RequestError(f"{field} has unknown key(s) {extra}", index, case_id, field)
        value = value["str"]
        field = f"{field}.str"
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{field} must be a non-empty string, got {value!r}", index, case_id, field)
    return value.strip()


@dataclass(frozen=True)
class Request:
    """One edit request, read: the prompt with its ``{}``, the subject, the case id and the targets."""

    index: int
    case_id: int | str
    subject: str
    template: str
    target_new: str
    target_true: str | None

    def fact(self, answer: str = "target_new") -> Fact:
        """The request as a Fact whose answer is its ``target_new`` (an edit) or ``target_true`` (a wash)."""
        text = getattr(self, answer)
        if text is None:
            raise RequestError(
                f"has no {'ground_truth' if answer == 'target_true' else answer} (the object the model produces now), "
                "which washing with successive elimination checks",
                self.index,
                self.case_id,
                answer,
            )
        try:
            return Fact(self.subject, self.template, text, self.case_id)
        except FactError as e:
            raise RequestError(str(e), self.index, self.case_id, e.field) from None


def read_requests(requests: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[Request]:
    """MEMIT or EasyEdit requests, checked (the schema is read per request: ``target_new`` a dict →
    MEMIT's, a string → EasyEdit's)."""
    if isinstance(requests, Mapping):
        requests = [requests]  # the clients accept one request dict too
    out, seen = [], {}
    for index, request in enumerate(requests):
        if not isinstance(request, Mapping):
            raise RequestError(f"expected a dict, got {type(request).__name__}", index)
        case_id = request.get("case_id", index)
        for field in ("prompt", "subject", "target_new"):
            if field not in request:
                raise RequestError(f"missing field {field!r}", index, case_id, field)
        nested = isinstance(request["target_new"], Mapping)
        allowed = MEMIT_KEYS if nested else EASYEDIT_KEYS
        unknown = sorted(set(request) - allowed)
        if unknown:
            schema = "MEMIT" if nested else "EasyEdit"
            raise RequestError(
                f"unknown field(s) {unknown} for a {schema} request (fields: {sorted(allowed)})", index, case_id
            )
        subject = request["subject"]
        if not isinstance(subject, str) or not subject.strip():
            raise RequestError(f"subject must be a non-empty string, got {subject!r}", index, case_id, "subject")
        prompt = request["prompt"]
        if not isinstance(prompt, str):
            raise RequestError(f"prompt must be a string, got {type(prompt).__name__}", index, case_id, "prompt")
        if "{}" not in prompt:  # EasyEdit's full prompt: the subject marks the slot (as its memit_main does)
            hits = prompt.count(subject)
            if hits != 1:
                raise RequestError(
                    f"the subject {subject!r} occurs {hits} times in the prompt {prompt!r}; it must occur once "
                    "(or write the prompt with a '{}' where the subject goes)",
                    index,
                    case_id,
                    "prompt",
                )
            prompt = prompt.replace(subject, "{}")
        new = _text(request["target_new"], "target_new", index, case_id, nested)
        true_field = "target_true" if nested else "ground_truth"
        true = request.get(true_field)
        true = None if true is None else _text(true, true_field, index, case_id, nested)
        if isinstance(case_id, bool) or not isinstance(case_id, (int, str)):
            raise RequestError(f"case_id must be an int or a str, got {case_id!r}", index, None, "case_id")
        if case_id in seen:
            raise RequestError(f"case_id {case_id!r} is also request {seen[case_id]}'s", index, case_id, "case_id")
        seen[case_id] = index
        request = Request(index, case_id, subject.strip(), prompt, new, true)
        request.fact("target_new")  # the prompt and subject make a valid fact
        out.append(request)
    if not out:
        raise RequestError("no requests given", 0)
    return out
