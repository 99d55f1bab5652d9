"""Run the real MEMIT client (../shared/clients/memit, unmodified) on CPU with transformers 5, for
side-by-side tests.  Everything the client needs is patched here, for the duration of the call only
(../shared/clients/README.md): "cuda" → the CPU, decoder-block outputs shown to its hooks as the
1-tuples of transformers 4, ``datasets`` importable (a stub: the statistics are given as files),
the working directory holding its globals.yml and data/stats."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

CLIENTS = Path(__file__).resolve().parents[2].parent / "shared" / "clients"
MEMIT_ROOT = CLIENTS / "memit"


def need_memit():
    if not (MEMIT_ROOT / "memit" / "memit_main.py").is_file():
        pytest.skip(f"the MEMIT client is not at {MEMIT_ROOT} (../shared/clients)")


def _cpu(device):
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    return device


@contextlib.contextmanager
def memit_client(workdir: Path, float64_delta: bool = False):
    """Import the client with ``workdir`` as the working directory (its globals.yml is copied there:
    data/stats under it is where the client reads statistics) and yield its ``memit`` package.
    ``float64_delta``: the client's z* offset δ (``torch.zeros(..., device="cuda")``, float32) is made
    in float64, as a float64 model's — the one precision difference the equivalence test pins."""
    need_memit()
    shutil.copy(MEMIT_ROOT / "globals.yml", workdir / "globals.yml")
    old_cwd = os.getcwd()
    os.chdir(workdir)
    sys.path.insert(0, str(MEMIT_ROOT))
    if "datasets" not in sys.modules:
        stub = types.ModuleType("datasets")
        stub.load_dataset = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no downloads in tests"))
        sys.modules["datasets"] = stub
    from transformers import BatchEncoding

    originals = {
        "to": torch.Tensor.to,
        "batch_to": BatchEncoding.to,
        "tensor": torch.tensor,
        "zeros": torch.zeros,
        "hook": torch.nn.Module.register_forward_hook,
    }

    def to(self, *args, **kwargs):
        args = tuple(_cpu(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return originals["to"](self, *args, **kwargs)

    def batch_to(self, device, *args, **kwargs):
        return originals["batch_to"](self, _cpu(device), *args, **kwargs)

    def tensor(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return originals["tensor"](*args, **kwargs)

    def zeros(*args, **kwargs):
        if "device" in kwargs:
            if float64_delta and kwargs.get("requires_grad") and _cpu(kwargs["device"]) != kwargs["device"]:
                kwargs.setdefault("dtype", torch.float64)
            kwargs["device"] = _cpu(kwargs["device"])
        return originals["zeros"](*args, **kwargs)

    def hook(self, fn, *args, **kwargs):
        # transformers 5 blocks return a Tensor; the client's hooks index output[0] as for 4's tuples
        def wrapped(module, inputs, output):
            if isinstance(output, torch.Tensor) and isinstance(module, _BLOCK_TYPES):
                got = fn(module, inputs, (output,))
                return got[0] if isinstance(got, tuple) else got
            return fn(module, inputs, output)

        return originals["hook"](self, wrapped, *args, **kwargs)

    torch.Tensor.to, BatchEncoding.to, torch.tensor, torch.zeros = to, batch_to, tensor, zeros
    torch.nn.Module.register_forward_hook = hook
    try:
        import memit

        yield memit
    finally:
        torch.Tensor.to, BatchEncoding.to = originals["to"], originals["batch_to"]
        torch.tensor, torch.zeros = originals["tensor"], originals["zeros"]
        torch.nn.Module.register_forward_hook = originals["hook"]
        sys.path.remove(str(MEMIT_ROOT))
        os.chdir(old_cwd)


def _block_types():
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    from transformers.models.gptj.modeling_gptj import GPTJBlock
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return (GPT2Block, GPTJBlock, LlamaDecoderLayer)


_BLOCK_TYPES = _block_types()
