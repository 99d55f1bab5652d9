"""``wash()``: the one entry point of every washing method, and the registry of methods.

Adding a method is one entry in :data:`METHODS`: a runner
``runner(model, tokenizer, facts, config, *, corpus, final_check, progress) -> WashResult`` that
builds on :func:`law_fast.washing.result.run_method` (and its name in ``law_fast.config.METHODS``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from .. import dist
from ..baselines.methods import run_baseline
from ..config import METHODS as METHOD_NAMES
from ..config import WashConfig
from ..facts import Fact
from ..hf.adapters import get_adapter
from .closed_form import run_closed_form
from .result import WashResult

log = logging.getLogger(__name__)

Runner = Callable[..., WashResult]

#: method name → runner
METHODS: dict[str, Runner] = {
    "law": run_closed_form,
    "memit": run_closed_form,
    **{name: run_baseline for name in ("ft", "me-ft", "ft-ul", "seul", "woh")},
}
assert tuple(METHODS) == METHOD_NAMES, "law_fast.config.METHODS and the registry must name the same methods"


def wash(
    model,
    tokenizer,
    facts: Sequence[Fact],
    config: WashConfig | None = None,
    *,
    method: str | None = None,
    corpus=None,
    final_check: bool = True,
    progress: bool = True,
    workdir=None,
    stats=None,
) -> WashResult:
    """Wash ``facts`` out of ``model`` in place and return a :class:`~law_fast.washing.result.WashResult`.

    ``config`` defaults to :meth:`WashConfig.preset` (of ``method``, when given); ``method`` overrides
    ``config.method``: "law", "memit" (the closed-form init alone) or a fine-tuning baseline — "ft",
    "me-ft", "ft-ul", "seul", "woh" (:mod:`law_fast.baselines`, docs/baselines.md).  ``corpus``
    (a path, a list of texts or a :class:`~law_fast.corpus.Corpus`) overrides ``config.stats.corpus``
    for the covariance statistics (the baselines: the perplexity guard's held-out texts).  On any
    error — up to the final check — the model's original weights are restored before the
    exception propagates.  ``workdir`` (law, memit): a folder where the targets z* are checkpointed per
    chunk and reused by any later wash of the same model and settings (``TargetStore``).  ``stats``
    (law, memit): {layer: LayerStats} to use instead of computing the statistics from the corpus
    (e.g. a client's covariance files, :func:`law_fast.compat.read_client_stats`); checked first.
    """
    get_adapter(model)  # an unsupported architecture fails here, with what to do about it
    config = WashConfig.for_method(model, config, method)
    extra = {name: value for name, value in (("workdir", workdir), ("stats", stats)) if value is not None}
    if dist.active() and METHODS[config.method] is not run_closed_form:
        raise ValueError(
            f"method {config.method!r} is not sharded over processes (law_fast.dist: law and memit are); "
            "run it in one process, without torchrun"
        )
    progress = progress and dist.is_main()
    if extra and METHODS[config.method] is not run_closed_form:
        raise ValueError(
            f"{', '.join(f'{n}=' for n in extra)} is for the closed-form methods (law, memit), not {config.method!r}"
        )
    return METHODS[config.method](
        model, tokenizer, facts, config, corpus=corpus, final_check=final_check, progress=progress, **extra
    )
