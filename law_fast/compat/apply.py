"""``apply_memit_to_model`` / ``apply_law_to_model``: the MEMIT-family entry points, run by law_fast.

Same signature and return value as ``memit.apply_memit_to_model`` (kmeng01/memit, EasyEdit's
``easyeditor.models.memit``)::

    model, orig_weights = apply_memit_to_model(model, tok, requests, hparams, copy=False,
                                               return_orig_weights=False, cache_template=None)

``apply_memit_to_model`` is MEMIT editing: each request's ``target_new`` is the text the edited
model emits after its prompt (z* by the reference's loss, batched; λ fixed to
``mom2_update_weight``; residuals spread over the layers) — an EOS ``target_new`` is MEMIT-to-EOS
washing.  ``apply_law_to_model`` is LaW washing as the authors' fork calls it: every request's
``target_new`` (or ``edit_to=``) is the one target, ``target_true`` is the fact that goes (their
successive elimination checks it), the solver settings come from the LaW hparams.

``apply_alphaedit_to_model`` is AlphaEdit editing (EasyEdit's ``apply_AlphaEdit_to_model``): MEMIT's
z* and keys, the update restricted to the null space of the corpus second moment C (its eigen-directions
below ``nullspace_threshold``) and regularised by ``L2``·I instead of λC.  Each call starts from an
empty ``cache_c``: AlphaEdit's memory of earlier calls' keys (its sequential editing across calls) is
not kept — one call with every request is one batch in both packages (docs/dropin.md).

Statistics: ``stats=`` ({layer: LayerStats} or {layer: npz path}); else the clients' own files,
where the client would look (MEMIT: ``data/stats`` under the working directory; EasyEdit:
``hparams.stats_dir``; or ``stats_dir=``); else computed by law_fast from ``corpus=`` (a path or
texts).  Without any of these the call fails and says which files it looked for.
"""

from __future__ import annotations

import copy as copy_module
import logging
from pathlib import Path

from ..config import TARGET_HPARAMS, WashConfig
from ..hf.adapters import get_adapter
from ..washing.api import wash
from ..washing.checkpoints import facts_digest
from ..washing.stats import LayerStats
from .hparams import EASYEDIT_FIELDS, ClientHparams, HparamsError, check_modules, read_hparams
from .requests import RequestError, read_requests
from .stats import client_model_name, client_stats_path, read_client_stats

log = logging.getLogger(__name__)

MEMIT_STATS_DIR = Path("data") / "stats"  # kmeng01/memit's globals.yml STATS_DIR, relative to the working dir


def client_stats(model, h: ClientHparams, stats=None, stats_dir=None, corpus=None) -> dict | None:
    """{layer: LayerStats} for the edited layers, or None when law_fast is to compute them from ``corpus``."""
    adapter = get_adapter(model)
    layers = list(h["layers"])
    if stats is not None:  # paths read here; a missing layer or a bad matrix is wash()'s checked_stats error
        return {
            layer: given if isinstance(given, LayerStats) else read_client_stats(given, adapter.dims(model, layer)[1])
            for layer, given in stats.items()
            if layer in layers
        }
    folder = stats_dir if stats_dir is not None else h.get("stats_dir")
    folder = Path(folder) if folder is not None else Path.cwd() / MEMIT_STATS_DIR
    name = client_model_name(model, h.client)
    paths = {
        layer: client_stats_path(
            folder,
            name,
            h.get("mom2_dataset", "wikipedia"),
            h["rewrite_module_tmp"].format(layer),
            h.get("mom2_dtype", "float32"),
            h.get("mom2_n_samples"),
        )
        for layer in layers
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    if not missing:
        return {layer: read_client_stats(p, adapter.dims(model, layer)[1]) for layer, p in paths.items()}
    if corpus is not None:
        log.info("no statistics files at %s; computing them from the corpus", missing)
        return None
    raise FileNotFoundError(
        f"no covariance statistics: looked for {missing} (the client's stats path for this model, "
        "dataset, module, dtype and sample count). Put the client's .npz files there, give stats_dir= or "
        "stats={layer: LayerStats or .npz path}, or corpus= (a text file or list of texts) for law_fast to "
        "compute them; law_fast cannot download Wikipedia."
    )


def _targets(h: ClientHparams) -> dict:
    """The z* settings from the hparams (TargetConfig fields)."""
    return {k: h[k] for k in TARGET_HPARAMS if h.get(k) is not None}


def _workdir(cache_template, h: ClientHparams, facts):
    """The folder a client's ``cache_template`` names, one job folder per request set inside it:
    law_fast keeps its checkpoints there (z* and every stage, keyed by the weights, settings and facts —
    not by case id alone as the clients' per-case files), so a stopped call continues."""
    if cache_template is None:
        return None
    try:
        example = Path(str(cache_template).format(h["layers"][-1], h.get("clamp_norm_factor", 0.75), "case"))
    except (IndexError, KeyError, ValueError) as e:
        raise ValueError(
            f"cache_template {cache_template!r} does not format as the clients' (z layer, clamp, case id): {e}"
        ) from None
    return example.parent / f"law_fast-{facts_digest(facts)[:16]}"


def _run(model, tok, facts, config, h, copy, return_orig_weights, cache_template, stats, corpus, progress):
    if copy:
        model = copy_module.deepcopy(model)
    workdir = _workdir(cache_template, h, facts)
    result = wash(
        model, tok, facts, config, corpus=corpus, stats=stats, final_check=False, progress=progress, workdir=workdir
    )
    if return_orig_weights:
        return model, {name: w.detach().clone() for name, w in result.original.items()}
    return model, {}


def _no_other_kwargs(kwargs: dict, allowed: set, entry: str) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"{entry}() got unexpected keyword argument(s) {unknown}")


def apply_memit_to_model(
    model,
    tok,
    requests,
    hparams,
    copy: bool = False,
    return_orig_weights: bool = False,
    cache_template: str | None = None,
    *,
    stats=None,
    stats_dir=None,
    corpus=None,
    progress: bool = True,
    **kwargs,
):
    """MEMIT editing by law_fast (see the module docstring) → ``(model, orig_weights)``; ``orig_weights``
    maps each edited weight's name to its original value when ``return_orig_weights``, else is {}.
    ``keep_original_weight`` (EasyEdit passes it; its MEMIT does not read it) is accepted."""
    _no_other_kwargs(kwargs, {"keep_original_weight"}, "apply_memit_to_model")
    h = read_hparams(hparams, "MEMIT")
    solver = {"mom2_update_weight": h["mom2_update_weight"]}
    return _edit(
        model, tok, requests, h, solver, copy, return_orig_weights, cache_template, stats, stats_dir, corpus, progress
    )


def _edit(
    model, tok, requests, h, solver, copy, return_orig_weights, cache_template, stats, stats_dir, corpus, progress
):
    """MEMIT-family editing (each request's ``target_new`` as the target, λ fixed) with ``solver``'s fields."""
    check_modules(h, model)
    facts = [r.fact("target_new") for r in read_requests(requests)]
    found = client_stats(model, h, stats, stats_dir, corpus)
    config = WashConfig.create(
        method="memit",
        layers=tuple(h["layers"]),
        lambda_rule="fixed",
        target="answer",
        only_known=False,
        prune_requests=False,
        **solver,
        **_targets(h),
        **({"mom2_n_samples": h["mom2_n_samples"]} if h.get("mom2_n_samples") else {}),
    )
    return _run(model, tok, facts, config, h, copy, return_orig_weights, cache_template, found, corpus, progress)


def apply_alphaedit_to_model(
    model,
    tok,
    requests,
    hparams,
    copy: bool = False,
    return_orig_weights: bool = False,
    cache_template: str | None = None,
    *,
    stats=None,
    stats_dir=None,
    corpus=None,
    progress: bool = True,
    **kwargs,
):
    """AlphaEdit editing by law_fast (see the module docstring) → ``(model, orig_weights)``.  EasyEdit's
    ``keep_original_weight`` and ``reset_cache`` are accepted (every call starts from an empty cache)."""
    _no_other_kwargs(kwargs, {"keep_original_weight", "reset_cache"}, "apply_alphaedit_to_model")
    h = read_hparams(hparams, "AlphaEdit")
    solver = {
        "mom2_update_weight": h["L2"],
        "regulariser": "identity",
        "null_space_threshold": h["nullspace_threshold"],
    }
    return _edit(
        model, tok, requests, h, solver, copy, return_orig_weights, cache_template, stats, stats_dir, corpus, progress
    )


def apply_law_to_model(
    model,
    tok,
    requests,
    hparams,
    copy: bool = False,
    return_orig_weights: bool = False,
    cache_template: str | None = None,
    *,
    stats=None,
    stats_dir=None,
    corpus=None,
    progress: bool = True,
    edit_to: str | None = None,
    **kwargs,
):
    """LaW washing by law_fast (see the module docstring) → ``(model, orig_weights)``.  The LaW
    authors' extra arguments ``ds_name`` and ``alg_name`` are accepted (``alg_name`` must be "LAW");
    ``edit_to`` replaces every request's ``target_new``, as their script does."""
    _no_other_kwargs(kwargs, {"ds_name", "alg_name", "keep_original_weight"}, "apply_law_to_model")
    if kwargs.get("alg_name") not in (None, "LAW"):
        raise ValueError(f"alg_name={kwargs['alg_name']!r}: apply_law_to_model runs LaW ('LAW')")
    h = read_hparams(hparams, "LAW")
    check_modules(h, model)
    read = read_requests(requests)
    targets = {edit_to.strip()} if edit_to is not None else {r.target_new for r in read}
    if len(targets) != 1:
        raise RequestError(
            f"the requests name {len(targets)} different target_new texts (e.g. {sorted(targets)[:3]}); LaW washes "
            "every fact to one target (the authors' edit_to, EOS); for edits to new objects use apply_memit_to_model",
            0,
            read[0].case_id,
            "target_new",
        )
    reference = {k: v for k, v in h.values.items() if k not in EASYEDIT_FIELDS}
    prune = bool(reference.get("prune_requests", False))
    facts = [r.fact("target_true") if prune or r.target_true is not None else r.fact("target_new") for r in read]
    found = client_stats(model, h, stats, stats_dir, corpus)
    try:
        config = WashConfig.from_reference_hparams(
            reference, target=" " + targets.pop(), only_known=False, **_targets(h)
        )
    except (ValueError, NotImplementedError) as e:
        raise HparamsError(str(e), h.source) from None
    return _run(model, tok, facts, config, h, copy, return_orig_weights, cache_template, found, corpus, progress)
