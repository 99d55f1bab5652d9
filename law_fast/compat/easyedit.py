"""EasyEdit integration: law_fast's backends in ``easyeditor``'s ``ALG_DICT`` and ``BatchEditor``.

::

    from law_fast.compat.easyedit import register
    register(replace_memit=True)   # EasyEdit's "MEMIT" now runs on law_fast; the rest of the script is unchanged
    # (replace_alphaedit=True: its "AlphaEdit" too)
    editor = BaseEditor.from_hparams(MEMITHyperParams.from_hparams("hparams/MEMIT/gpt2-xl"))
    metrics, edited_model, _ = editor.batch_edit(prompts=..., target_new=..., ground_truth=..., subject=...)

:func:`register` adds three algorithm names, all batchable: ``"LAW_FAST_MEMIT"`` (MEMIT editing by
law_fast: :func:`~law_fast.compat.apply_memit_to_model`), ``"LAW_FAST_ALPHAEDIT"`` (AlphaEdit:
:func:`~law_fast.compat.apply_alphaedit_to_model`) and ``"LAW"`` (LaW washing:
:func:`~law_fast.compat.apply_law_to_model`, hyper-parameters as :class:`LawHyperParams`); with
``replace_memit=True`` / ``replace_alphaedit=True`` EasyEdit's own ``"MEMIT"`` / ``"AlphaEdit"`` names run
law_fast's, so an existing ``hparams/MEMIT/*.yaml`` or ``hparams/AlphaEdit/*.yaml`` needs no change.  It returns a function that undoes the registration.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable

from .apply import apply_alphaedit_to_model, apply_law_to_model, apply_memit_to_model
from .hparams import HparamsError, read_hparams

log = logging.getLogger(__name__)

#: the algorithm names :func:`register` adds, and the law_fast entry point each runs
BACKENDS = {
    "LAW_FAST_MEMIT": apply_memit_to_model,
    "LAW_FAST_ALPHAEDIT": apply_alphaedit_to_model,
    "LAW": apply_law_to_model,
}


def _easyedit_modules():
    try:
        from easyeditor.editors.batch_editor import BatchEditor
        from easyeditor.util import alg_dict
    except ImportError as e:
        raise ImportError(
            f"law_fast.compat.easyedit.register() needs EasyEdit's easyeditor package importable ({e}); install "
            "EasyEdit (github.com/zjunlp/EasyEdit) or put its folder on sys.path, or pass alg_dict= and batch_editor="
        ) from e
    return alg_dict.ALG_DICT, BatchEditor


def register(
    replace_memit: bool = False, replace_alphaedit: bool = False, *, alg_dict: dict | None = None, batch_editor=None
) -> Callable[[], None]:
    """Add law_fast's backends (``BACKENDS``; ``"MEMIT"`` / ``"AlphaEdit"`` with ``replace_*``) to EasyEdit's
    ``ALG_DICT`` (``easyeditor.util.alg_dict``, the dict ``BaseEditor`` looks algorithms up in) and to
    ``BatchEditor.is_batchable_method`` (``batch_edit``'s gate).  ``alg_dict`` / ``batch_editor``:
    those objects, when easyeditor is not importable as a package.  Returns ``unregister()``, which puts
    back what was there."""
    if alg_dict is None or batch_editor is None:
        found_dict, found_editor = _easyedit_modules()
        alg_dict = found_dict if alg_dict is None else alg_dict
        batch_editor = found_editor if batch_editor is None else batch_editor
    added = dict(BACKENDS)
    if replace_memit:
        added["MEMIT"] = apply_memit_to_model
    if replace_alphaedit:
        added["AlphaEdit"] = apply_alphaedit_to_model
    missing = object()
    before = {name: alg_dict.get(name, missing) for name in added}
    gate = batch_editor.is_batchable_method

    def is_batchable_method(alg_name: str) -> bool:
        return alg_name in added or gate(alg_name)

    alg_dict.update(added)
    batch_editor.is_batchable_method = staticmethod(is_batchable_method)

    def unregister() -> None:
        for name, previous in before.items():
            if previous is missing:
                alg_dict.pop(name, None)
            else:
                alg_dict[name] = previous
        batch_editor.is_batchable_method = staticmethod(gate)

    return unregister


class LawHyperParams(types.SimpleNamespace):
    """LaW hyper-parameters as EasyEdit's editors read them (attributes): the LaW authors' fields
    (``WashConfig.from_reference_hparams``), MEMIT's module templates and statistics fields, and
    EasyEdit's ``alg_name`` ("LAW"), ``model_name``, ``device``, ``stats_dir``, ``batch_size``,
    ``max_length``, ``model_parallel``.  EasyEdit has no LaW class of its own."""

    DEFAULTS = {"alg_name": "LAW", "batch_size": 1, "max_length": 40, "model_parallel": False}

    @classmethod
    def from_hparams(cls, source) -> LawHyperParams:
        """From a YAML or JSON file (``.yaml`` may be left off, as EasyEdit's loaders allow) or a dict;
        checked as :func:`~law_fast.compat.read_hparams` checks LaW hyper-parameters."""
        h = read_hparams(source, "LAW")  # errors name the file
        data = {**cls.DEFAULTS, **h.values}
        for name in ("model_name", "device"):
            if name not in data:
                raise HparamsError(f"missing field {name!r} (EasyEdit's BaseEditor reads it)", h.source, [name])
        return cls(**data)
