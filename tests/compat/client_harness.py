"""Where the real clients are for the side-by-side tests (../shared/clients), and the skip when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from law_fast.testing import memit_client as _memit_client

CLIENTS = Path(__file__).resolve().parents[2].parent / "shared" / "clients"
MEMIT_ROOT = CLIENTS / "memit"


def need_memit():
    if not (MEMIT_ROOT / "memit" / "memit_main.py").is_file():
        pytest.skip(f"the MEMIT client is not at {MEMIT_ROOT} (../shared/clients)")


def memit_client(workdir: Path, float64_delta: bool = False):
    """law_fast.testing.memit_client on ../shared/clients/memit."""
    need_memit()
    return _memit_client(MEMIT_ROOT, workdir, float64_delta)
