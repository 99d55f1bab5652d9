"""Versions of law_fast and the packages it runs on — the one place reports, benchmarks and
``law-fast info`` take them from."""

from __future__ import annotations

import logging
import platform
from importlib import metadata

log = logging.getLogger(__name__)

__all__ = ["versions"]

_PACKAGES = ("torch", "transformers", "triton", "lm-eval", "peft")


def versions() -> dict[str, str | None]:
    """{"law_fast", "python", and each of torch, transformers, triton, lm_eval, peft: version or None}."""
    from . import __version__

    out: dict[str, str | None] = {"law_fast": __version__, "python": platform.python_version()}
    for package in _PACKAGES:
        try:
            out[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package.replace("-", "_")] = None
    return out
