"""law_fast: fast large-scale knowledge washing (LaW, ICLR 2025) for Hugging Face causal LMs.

import law_fast as lf
model, tok = lf.load_model()                 # embedded default: SmolLM2-135M-Instruct
facts = lf.load_facts("facts.jsonl")
result = lf.wash(model, tok, facts)          # edits the model in place
result.save("washed/")                       # model + deltas + report
result.revert()                              # exact original weights back
report = lf.evaluate(model, tok, facts=facts, reasoning=["lambada"], limit=200)   # EvalReport
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "WashConfig": ".config",
    "Fact": ".facts",
    "load_facts": ".facts",
    "FactError": ".facts",
    "FactFormatError": ".facts",
    "Corpus": ".corpus",
    "load_corpus": ".corpus",
    "load_model": ".hf.loading",
    "get_adapter": ".hf.adapters",
    "Adapter": ".hf.adapters",
    "wash": ".washing.api",
    "WashResult": ".washing.result",
    "WashReport": ".washing.result",
    "layer_stats": ".washing.stats",
    "evaluate": ".eval.report",
    "EvalReport": ".eval.report",
    "EvalConfig": ".eval.report",
    "audit": ".eval.audit",
    "AuditReport": ".eval.audit",
    "AuditConfig": ".eval.audit",
    "versions": ".info",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

from . import _moved  # noqa: E402  (old flat import paths, deprecated)

_moved.install()


def __getattr__(name: str):
    # lazy: `import law_fast` stays cheap (no transformers import until needed)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'law_fast' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
