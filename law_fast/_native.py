"""Loading the optional native module ``law_fast._C`` (C++ CPU kernels, CUDA kernels if built).

The package works without it (pure-torch kernels); ``load()`` never raises.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

log = logging.getLogger(__name__)

_module: ModuleType | None = None
_error: str | None = None
_tried = False


def load() -> ModuleType | None:
    """Import ``law_fast._C`` once; None (and ``load_error()`` says why) when it is missing."""
    global _module, _error, _tried
    if not _tried:
        _tried = True
        try:
            _module = importlib.import_module("law_fast._C")
        except ImportError as error:  # not built, or built against another torch
            _error = f"{type(error).__name__}: {error}"
            log.info("law_fast._C not loaded, using pure-torch kernels (%s)", _error)
    return _module


def load_error() -> str | None:
    """Why ``load()`` returned None (None when it loaded or was not tried)."""
    return _error


def build_info() -> dict:
    """JSON-able description of the native build: {"built": False, "error": ...} when missing."""
    module = load()
    if module is None:
        return {"built": False, "error": _error}
    return {"built": True, "path": getattr(module, "__file__", None), **module.build_info()}
