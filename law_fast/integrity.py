"""Content digests: what every cache, checkpoint and converted model is checked against before it
is trusted (docs/statistics.md, docs/reliability notes in the README)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
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


def blob_digest(blob) -> str:
    """sha256 of everything a cache or checkpoint file holds (tensors by their bytes)."""
    h = hashlib.sha256()

    def walk(value) -> None:
        if isinstance(value, torch.Tensor):
            update_with_tensor(h, value)
        elif isinstance(value, dict):
            for k in sorted(value):
                h.update(repr(k).encode())
                walk(value[k])
        else:
            h.update(repr(value).encode())

    walk(blob)
    return h.hexdigest()


def write_atomic(path: Path, blob: dict) -> None:
    """torch.save ``blob`` with its digest to a temporary file in the same directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({**blob, "digest": blob_digest(blob)}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_verified(path: Path, key: dict) -> dict:
    """A file written by :func:`write_atomic` for ``key``; ValueError when its key differs or its
    payload does not match its digest (a flipped bit, a truncated or foreign file)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("key") != json.dumps(key, sort_keys=True):
        raise ValueError("key mismatch")
    digest = blob.pop("digest", None)
    if digest != blob_digest(blob):
        raise ValueError("the payload does not match its digest (corrupt file)")
    return blob
