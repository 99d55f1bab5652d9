"""Forward hooks on Hugging Face models: capture keys and block outputs, stop a forward pass
early, skip blocks whose output is known, and save-and-restore model flags."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .adapters import Adapter

log = logging.getLogger(__name__)

_KEEP = object()


@contextlib.contextmanager
def saved_attributes(objects: Iterable, name: str, value=_KEEP) -> Iterator[None]:
    """Save attribute ``name`` of every object, optionally set it to ``value``, and restore each
    object's own value afterwards (also on error).  The one save-and-restore helper of the library:
    ``requires_grad`` of parameters, ``training`` of modules, a tokenizer's ``padding_side``."""
    saved = [(obj, getattr(obj, name)) for obj in objects]
    try:
        if value is not _KEEP:
            for obj, _ in saved:
                setattr(obj, name, value)
        yield
    finally:
        for obj, old in saved:
            setattr(obj, name, old)


def frozen(model: nn.Module):
    """Temporarily set ``requires_grad=False`` on all parameters (restored afterwards)."""
    return saved_attributes(list(model.parameters()), "requires_grad", False)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration; every module's own train/eval flag is restored afterwards."""
    with saved_attributes(list(model.modules()), "training"):
        model.eval()
        yield


def padding_side(tokenizer, side: str):
    """Temporarily set ``tokenizer.padding_side`` (restored afterwards)."""
    return saved_attributes([tokenizer], "padding_side", side)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass after the last module we need."""


def block_output_tensor(output) -> torch.Tensor:
    """The hidden state of a block's output (blocks return a tensor or a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@contextlib.contextmanager
def capture(model: nn.Module, adapter: Adapter, key_layers=(), block_layers=(), stop_after: int | None = None):
    """Record down-projection inputs (keys) of ``key_layers`` and block outputs of ``block_layers``.

    Yields a dict ``{("key", l): tensor (B, T, f), ("block", l): tensor (B, T, d)}`` filled by
    the next forward pass. With ``stop_after`` the forward pass is aborted right after that
    block (use :func:`run_until`), so no later block, norm or LM head is computed.
    """
    store: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def key_hook(layer):
        def hook(module, args):
            store[("key", layer)] = args[0]

        return hook

    def block_hook(layer, stop):
        def hook(module, args, output):
            if layer in block_layers:
                store[("block", layer)] = block_output_tensor(output)
            if stop:
                raise _StopForward

        return hook

    try:
        for layer in key_layers:
            handles.append(adapter.down_proj_module(model, layer).register_forward_pre_hook(key_hook(layer)))
        hooked = set(block_layers) | ({stop_after} if stop_after is not None else set())
        for layer in sorted(hooked):
            handles.append(adapter.block(model, layer).register_forward_hook(block_hook(layer, layer == stop_after)))
        yield store
    finally:
        for h in handles:
            h.remove()


def run_until(model: nn.Module, **inputs) -> None:
    """Run ``model(**inputs)`` (no KV cache unless ``use_cache`` is given) and swallow the
    early-stop signal of :func:`capture`."""
    inputs.setdefault("use_cache", False)
    try:
        model(**inputs)
    except _StopForward:
        pass


@contextlib.contextmanager
def skipped_blocks(model: nn.Module, adapter: Adapter, last: int, output: dict) -> Iterator[None]:
    """Blocks 0..``last`` return ``output["hidden"]`` instead of computing (their forward hooks still
    run).  For passes whose block-``last`` output is already known: nothing below it is recomputed.
    Only for models whose blocks return a plain tensor (transformers ≥ 5); the caller checks."""
    blocks = [adapter.block(model, layer) for layer in range(last + 1)]

    def replay(*args, **kwargs):
        return output["hidden"]

    for block in blocks:
        block.forward = replay
    try:
        yield
    finally:
        for block in blocks:
            del block.forward
