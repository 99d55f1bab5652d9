"""Content digests: what every cache, checkpoint and converted model is checked against before it
is trusted (docs/statistics.md, docs/reliability notes in the README)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_CHUNK = 1 << 24  # bytes hashed per update (16 MiB)


def update_with_tensor(h, tensor: torch.Tensor) -> None:
    """Feed ``tensor``'s dtype, shape and every byte of its values into the hash ``h``."""
    h.update(f"{tensor.dtype}:{tuple(tensor.shape)}:".encode())
    flat = tensor.detach().reshape(-1)
    step = max(1, _CHUNK // max(1, flat.element_size()))
    for start in range(0, flat.numel(), step):
        part = flat[start : start + step].contiguous().cpu()
        h.update(part.view(torch.uint8).numpy().tobytes())


def file_digest(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
