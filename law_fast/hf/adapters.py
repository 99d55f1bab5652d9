"""Model adapters: where LaW's pieces live in each architecture family, and model identity.

An :class:`Adapter` names, for one architecture family, where the pieces LaW needs live in a
Hugging Face causal LM: the list of transformer blocks, the MLP down-projection of each block
(whose *input* is the key k ∈ R^f and whose weight is W ∈ R^{d×f} in math orientation), the
final norm and the LM head.  Everything else in the library talks to models through an adapter.

Orientation: ``nn.Linear`` stores W (d×f); GPT-2's ``Conv1D`` stores Wᵀ (f×d).  Use
:meth:`Adapter.weight` / :meth:`Adapter.add_to_weight` so callers always see d×f.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ..integrity import update_with_tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adapter:
    """Where the LaW-relevant modules of one architecture family live.

    Attribute paths are dotted paths relative to the ``*ForCausalLM`` model; ``{}`` is the
    block index.
    """

    family: str
    blocks: str  # e.g. "transformer.h"
    down_proj: str  # relative to one block, e.g. "mlp.c_proj"
    final_norm: str  # e.g. "transformer.ln_f"
    transposed: bool  # True when the stored weight is Wᵀ (f×d), as in GPT-2's Conv1D

    # -- modules ---------------------------------------------------------------------------
    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.block_list(model))

    def block(self, model: nn.Module, layer: int) -> nn.Module:
        blocks = self.block_list(model)
        if not 0 <= layer < len(blocks):
            raise IndexError(
                f"layer {layer} out of range: {type(model).__name__} has {len(blocks)} blocks (0..{len(blocks) - 1})"
            )
        return blocks[layer]

    def down_proj_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self.block(model, layer).get_submodule(self.down_proj)

    def down_proj_path(self, layer: int) -> str:
        """Module name of the down-projection of ``layer`` (MEMIT's ``rewrite_module_tmp.format(layer)``)."""
        return f"{self.blocks}.{layer}.{self.down_proj}"

    def down_proj_name(self, layer: int) -> str:
        """Parameter name of the down-projection weight of ``layer`` (as in ``state_dict``)."""
        return f"{self.down_proj_path(layer)}.weight"

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
        """W_layer += delta, with delta (d×f, any float dtype/device) in math orientation.  In a float16 /
        bfloat16 model the down-projection first becomes a float32 island (:func:`float32_island`:
        float32 weights, inputs and outputs cast at its edges), so that the edit is not rounded away;
        :meth:`WashResult.revert` ends the island."""
        module = self.down_proj_module(model, layer)
        d, f = self.dims(model, layer)
        if tuple(delta.shape) != (d, f):
            raise ValueError(f"delta for layer {layer} has shape {tuple(delta.shape)}, expected (d, f) = ({d}, {f})")
        if module.weight.dtype in (torch.float16, torch.bfloat16):
            float32_island(module)
        w = module.weight
        w.add_((delta.T if self.transposed else delta).to(device=w.device, dtype=w.dtype))

    def eos_token_id(self, model: nn.Module, tokenizer) -> int:
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = getattr(model.config, "eos_token_id", None)
            if isinstance(eos, (list, tuple)):
                eos = eos[0]
        if eos is None:
            raise ValueError(
                f"{type(model).__name__}: neither the tokenizer nor the config defines an EOS token; set tokenizer.eos_token"
            )
        return int(eos)


# model_type (config.model_type) -> adapter
ADAPTERS: dict[str, Adapter] = {
    "gpt2": Adapter("gpt2", "transformer.h", "mlp.c_proj", "transformer.ln_f", transposed=True),
    "gptj": Adapter("gptj", "transformer.h", "mlp.fc_out", "transformer.ln_f", transposed=False),
    "gpt_neox": Adapter(
        "gpt_neox", "gpt_neox.layers", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", transposed=False
    ),
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
            "law_fast.hf.adapters.ADAPTERS naming the block list, the MLP down-projection inside a block "
            "(whose input is the key), the final norm, and whether the weight is stored transposed."
        )
    return adapter


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of every weight of the model: names, shapes, dtypes and all values.

    What cache keys need: statistics computed on one model are never reused for another, however
    small the difference (an edited weight, one changed value anywhere).  Hashing reads every
    weight once (about a second per GB on a CPU); the result is remembered per model object until
    one of its parameters or buffers is changed in place."""
    tensors = list(model.state_dict().items())
    versions = tuple((t.data_ptr(), t._version) for _, t in tensors)  # replaced or edited in place: new hash
    cached = _FINGERPRINTS.get(model)
    if cached is not None and cached[0] == versions:
        return cached[1]
    h = hashlib.sha256()
    for name, tensor in tensors:
        h.update(name.encode())
        update_with_tensor(h, tensor)
    digest = h.hexdigest()[:16]
    _FINGERPRINTS[model] = (versions, digest)
    return digest


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_name(model: nn.Module) -> str:
    name = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "") or type(model).__name__
    return str(name)


_ISLAND = "_law_fast_float32"  # module attribute: (the parameters' dtype before, the hook handles)


def float32_island(module: nn.Module) -> None:
    """Run ``module`` in float32 inside a half-precision model: its parameters become float32 — so that
    small edits added to them are kept (bfloat16's spacing is 2⁻⁷ of a weight: LaW's steps and most
    of a MEMIT update would round away) —, its floating inputs are cast to float32 and its output back
    to the dtype its parameters had.  Idempotent; :func:`end_float32_island` undoes it."""
    if _ISLAND in module.__dict__:
        return
    dtype = next(module.parameters()).dtype

    def cast_in(mod, args, kwargs):
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args), kwargs

    def cast_out(mod, args, output):
        return output.to(dtype) if torch.is_tensor(output) else output

    module.float()
    handles = (module.register_forward_pre_hook(cast_in, with_kwargs=True), module.register_forward_hook(cast_out))
    module.__dict__[_ISLAND] = (dtype, handles)


def end_float32_island(module: nn.Module) -> bool:
    """Undo :func:`float32_island` (parameters cast back, hooks removed); False when ``module`` is not one."""
    state = module.__dict__.pop(_ISLAND, None)
    if state is None:
        return False
    dtype, handles = state
    for handle in handles:
        handle.remove()
    module.to(dtype)
    return True
