"""The import paths of law_fast 0.1 (flat modules), kept for one release with a DeprecationWarning.

``import law_fast.models`` (say) still works: a finder on ``sys.meta_path`` makes a module whose
attributes are looked up, in order, in the modules that now hold the old module's contents.
The table is the record of what moved where (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
import types
import warnings

log = logging.getLogger(__name__)

#: old module → the modules its names now live in (searched in order)
MOVED: dict[str, tuple[str, ...]] = {
    "law_fast.models": ("law_fast.hf.adapters", "law_fast.hf.hooks", "law_fast.hf.compat", "law_fast.hf.loading"),
    "law_fast.tokens": ("law_fast.hf.tokens", "law_fast.hf.hooks"),
    "law_fast.generation": (
        "law_fast.hf.generate",
        "law_fast.washing.templates",
        "law_fast.washing.elimination",
        "law_fast.facts",
    ),
    "law_fast.pipeline": ("law_fast.washing.api", "law_fast.washing.result"),
    "law_fast.stats": ("law_fast.washing.stats", "law_fast.corpus"),
    "law_fast.targets": ("law_fast.washing.targets",),
    "law_fast.keys": ("law_fast.washing.keys",),
    "law_fast.memit": ("law_fast.washing.memit",),
    "law_fast.law": ("law_fast.washing.law",),
    "law_fast.evaluation": (
        "law_fast.eval.report",
        "law_fast.eval.knowledge",
        "law_fast.eval.lm",
        "law_fast.eval.compare",
    ),
    "law_fast.reasoning": ("law_fast.eval.tasks", "law_fast.eval.lm", "law_fast.eval.harness", "law_fast.hf.compat"),
    "law_fast.metrics": ("law_fast.eval.metrics",),
}


def forwarding_getattr(name: str, targets: tuple[str, ...], warn: bool = False):
    """A module ``__getattr__`` that finds attributes of module ``name`` in ``targets`` (in order);
    with ``warn`` each lookup warns that the path is deprecated."""

    def __getattr__(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        for target in targets:
            value = getattr(importlib.import_module(target), attribute, _MISSING)
            if value is not _MISSING:
                if warn:
                    warnings.warn(
                        f"{name}.{attribute} is deprecated and will be removed in law_fast 0.3; import it "
                        f"from {target}",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                return value
        raise AttributeError(f"module {name!r} has no attribute {attribute!r} (it moved to {', '.join(targets)})")

    return __getattr__


def _forwarding_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name, f"Deprecated: moved to {', '.join(MOVED[name])}.")
    module.__getattr__ = forwarding_getattr(name, MOVED[name])
    return module


_MISSING = object()


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        warnings.warn(
            f"{spec.name} is deprecated and will be removed in law_fast 0.3; import from "
            f"{' / '.join(MOVED[spec.name])} instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return _forwarding_module(spec.name)

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
