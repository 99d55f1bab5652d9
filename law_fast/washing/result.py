"""What every washing method shares: the typed :class:`WashReport`, the :class:`WashResult`, and
:func:`run_method` — initial check, snapshot of the parameters the method may change, the
method's own work, the final check, timings, and the original weights back on any error."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import WashConfig
from ..eval.report import evaluate
from ..facts import Fact
from ..hf.adapters import end_float32_island, model_name
from ..hf.tokens import check_fits
from .elimination import known_facts

log = logging.getLogger(__name__)


@dataclass
class WashReport:
    """What a wash did, JSON-able (``to_dict``/``from_dict``; ``report.json`` of a saved result).

    Read fields as attributes or, as before the report was typed, as keys: ``report["still_known_after"]``.
    Fields a method does not produce stay None (e.g. ``per_layer`` for the fine-tuning baselines,
    ``training`` for LaW/MEMIT, ``still_known_after`` without the final check).
    """

    model: str
    method: str
    n_facts: int
    layers: list[int] | None = None  # LaW / MEMIT: the edited layers
    known_before: int | None = None  # facts the model produced before the wash
    skipped_unknown: list = field(default_factory=list)  # case ids not washed (unknown, with only_known)
    n_washed_requests: int = 0  # facts the method washed
    corpus: dict | None = None  # {"identity", "tokens"} of the statistics corpus
    context_templates: list[str] | None = None
    targets: dict | None = None  # z*: {"ids", "mean_final_loss", "mean_steps"}
    per_layer: list[dict] | None = None  # per edited layer: memit / law reports, requests, facts still known
    retain: dict | None = None  # the retain settings, when knowledge to keep entered the covariance
    training: dict | None = None  # fine-tuning baselines: the training log
    still_known_after: int | None = None  # final check: washed facts the model still produces
    still_known_ids: list | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    # per stage, at its end: {"rss": resident MB now, "peak": the process's peak MB so far} (Linux; {} elsewhere)
    memory_mb: dict[str, dict] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self._names() and getattr(self, key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None) if key in self._names() else None
        return default if value is None else value

    @classmethod
    def _names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WashReport:
        unknown = sorted(set(data) - cls._names())
        if unknown:
            raise ValueError(f"unknown WashReport field(s) {unknown}; known: {sorted(cls._names())}")
        return cls(**dict(data))


@dataclass
class WashResult:
    """What a wash did.  The model passed to :func:`law_fast.wash` carries the edits.

    ``deltas``: {layer: Δ (d×f, float32, math orientation)} for the closed-form methods (LaW,
    MEMIT), empty for the fine-tuning baselines; ``original``: {parameter name: value before the
    wash} for every parameter the method may change, for an exact :meth:`revert` and for
    ``deltas.safetensors``; ``report``: a :class:`WashReport`.
    """

    config: WashConfig
    deltas: dict[int, torch.Tensor]
    original: dict[str, torch.Tensor]
    report: WashReport
    model: torch.nn.Module | None = None
    tokenizer: object | None = None

    def revert(self, model: torch.nn.Module | None = None) -> None:
        """Put back the exact original weights of every parameter the method may have changed (the
        float32 islands this wash made in a half-precision model end — those an earlier wash left,
        whose float32 values the snapshot holds, stay)."""
        model = model if model is not None else self.model
        with torch.no_grad():
            for name, value in self.original.items():
                if model.get_parameter(name).dtype != value.dtype:
                    end_float32_island(model.get_submodule(name.rpartition(".")[0]))
                model.get_parameter(name).copy_(value)

    def evaluate(self, facts=None, **kwargs):
        """:func:`law_fast.evaluate` on the washed model — the same metrics as ``law-fast eval``
        and the demo.  ``facts`` defaults to nothing; pass ``subset=`` the original model's
        :class:`~law_fast.eval.report.EvalReport` to score exactly the facts it knew."""
        if self.model is None or self.tokenizer is None:
            raise ValueError("this WashResult holds no model/tokenizer to evaluate")
        return evaluate(self.model, self.tokenizer, facts=facts, **kwargs)

    def audit(self, facts, *, original: bool = True, demos=(), **kwargs):
        """:func:`law_fast.audit` of the washed model on ``facts`` (an :class:`~law_fast.eval.audit.AuditReport`);
        ``original``: audit a copy with the original weights too, for the comparison; ``demos``: facts
        that were not washed (the controls), for the context and relearning probes."""
        from ..eval.audit import audit

        if self.model is None or self.tokenizer is None:
            raise ValueError("this WashResult holds no model/tokenizer to audit")
        before = None
        if original:
            before = copy.deepcopy(self.model)
            self.revert(before)
        return audit(self.model, self.tokenizer, facts, original=before, demos=demos, **kwargs)

    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """{parameter name: current − original} (stored orientation, float32, CPU) of the changed parameters."""
        out = {}
        for name, value in self.original.items():
            diff = (self.model.get_parameter(name).detach().float() - value.float()).cpu()
            if diff.any():
                out[name] = diff
        return out

    def save(self, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the washed model (safetensors) + tokenizer, ``deltas.safetensors``, ``report.json``
        and ``wash_config.json`` to ``out_dir`` (written to a temporary folder beside it, then renamed).

        ``out_dir`` is checked first (:func:`check_output_dir`): never the model's source or a folder
        holding it; with ``overwrite`` only a previous law_fast result is replaced."""
        from safetensors.torch import save_file

        if self.model is None:
            raise ValueError("this WashResult holds no model to save")
        out = check_output_dir(out_dir, overwrite, self.model)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            self.model.save_pretrained(str(tmp), safe_serialization=True)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(tmp))
            save_file(
                {name: d.contiguous() for name, d in self.weight_deltas().items()},
                str(tmp / "deltas.safetensors"),
                metadata={"orientation": "stored (as in the model's state dict): W_new = W + delta"},
            )
            (tmp / "report.json").write_text(json.dumps(self.report.to_dict(), indent=2, default=str) + "\n")
            self.config.to_json(tmp / RESULT_MARKER)
            if out.exists():
                shutil.rmtree(out)  # a previous law_fast result (check_output_dir made sure)
            tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return out


#: the file every saved result holds; a folder with it was written by :meth:`WashResult.save`
RESULT_MARKER = "wash_config.json"


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool, model=None) -> Path:
    """Where :meth:`WashResult.save` may write, checked before any work (the CLI calls it before the
    wash starts): not a regular file; not the model's source directory nor a folder that holds it;
    an existing non-empty folder only with ``overwrite`` and only when it is a previous law_fast
    result (it holds ``wash_config.json``) — law_fast never deletes what it did not write.
    Returns the resolved path; raises FileExistsError or ValueError naming the path."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory; choose a directory")
    source_name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    source = Path(source_name).expanduser() if source_name else None
    if source is not None and source.exists():
        source = source.resolve()
        if source == out or out in source.parents:
            raise ValueError(
                f"refusing to write the washed model to {out}: it is or holds the model's source "
                f"{source}; choose another directory"
            )
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} exists and is not empty (pass overwrite=True / --overwrite to replace a "
                "previous law_fast result)"
            )
        if not (out / RESULT_MARKER).is_file():
            raise FileExistsError(
                f"{out} is not empty and is not a law_fast result (no {RESULT_MARKER}); law_fast "
                "only replaces folders it wrote: choose another directory or empty it yourself"
            )
    return out


def memory_mb() -> dict:
    """{"rss": the process's resident MB now, "peak": its peak MB so far} (Linux: /proc and getrusage;
    {} where they are not)."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        rss = resident / 2**20
        # the kernel's high-water mark is synced lazily: it can trail the resident size read just now
        return {"rss": rss, "peak": max(rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    except (OSError, ImportError, ValueError, IndexError):
        return {}


class Timer:
    """Wall-clock seconds per stage name (a stage entered twice adds up), and the memory at each stage's end
    (:func:`memory_mb`; which stage holds what, and which raised the peak)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.memory: dict[str, dict] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        log.info("stage: %s", stage)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
            self.memory[stage] = memory_mb()


#: a method's own work: ``body(requests, result, timer)`` edits ``result.model`` in place and fills
#: ``result.deltas`` / ``result.report``
MethodBody = Callable[[list, WashResult, Timer], None]


def run_method(
    model,
    tokenizer,
    facts: Sequence[Fact],
    config: WashConfig,
    parameter_names: Sequence[str],
    body: MethodBody,
    *,
    final_check: bool = True,
    progress: bool = True,
    **report_fields,
) -> WashResult:
    """Run one washing method the way every method runs.

    1. the initial check: the facts to wash are those the model produces (with ``only_known``);
    2. a copy of ``parameter_names`` (every parameter the method may change);
    3. ``body(requests, result, timer)`` — skipped when no fact is to be washed;
    4. the final check (which washed facts the model still produces) and the stage timings.
    On any exception in 3 or 4 (including KeyboardInterrupt) the original weights are put back
    before it propagates.  ``report_fields`` are set on the :class:`WashReport`."""
    facts = list(facts)
    if not facts:
        raise ValueError("no facts to wash")
    checks = config.checks
    # the longest row a stage builds: a context template + the prompt + the checks' new tokens
    reserve = config.targets.template_length + checks.check_max_new_tokens + 2
    check_fits(
        model, tokenizer, [f.prompt for f in facts], reserve, [f"fact {f.case_id}" for f in facts], "fact prompt"
    )
    timer = Timer()
    report = WashReport(
        model=model_name(model),
        method=config.method,
        n_facts=len(facts),
        timings_s=timer.seconds,
        memory_mb=timer.memory,
        **report_fields,
    )  # timings_s and memory_mb are the timer's own dicts: they fill as the stages run
    with timer("initial check"):
        known, _ = known_facts(
            model,
            tokenizer,
            facts,
            checks.check_max_new_tokens,
            checks.check_batch_size,
            desc="checking facts" if progress else None,
        )
    report.known_before = sum(known)
    if config.only_known:
        report.skipped_unknown = [f.case_id for f, k in zip(facts, known) if not k]
        requests = [f for f, k in zip(facts, known) if k]
    else:
        requests = facts
    original = {name: model.get_parameter(name).detach().clone() for name in parameter_names}
    result = WashResult(config, {}, original, report, model, tokenizer)
    report.n_washed_requests = len(requests)
    if not requests:
        log.warning("none of the %d facts is produced by the model; nothing to wash", len(facts))
        return result
    try:
        body(requests, result, timer)
        if final_check:
            with timer("final check"):
                still, _ = known_facts(model, tokenizer, requests, checks.check_max_new_tokens, checks.check_batch_size)
            report.still_known_after = sum(still)
            report.still_known_ids = [f.case_id for f, k in zip(requests, still) if k]
    except BaseException:
        result.revert(model)
        raise
    return result
