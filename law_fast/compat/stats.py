"""Covariance statistics in the files MEMIT-family code writes and its users share.

MEMIT (``rome/layer_stats.py``) and EasyEdit (``easyeditor/models/rome/layer_stats.py``) keep one
``.npz`` per layer at::

    {stats_dir}/{model}/{dataset}_stats/{module}_{dtype}_mom2_{n_samples}.npz

holding the running second moment's state: ``mom2.mom2`` (Σ k kᵀ over the tokens, f×f),
``mom2.count`` (the number of tokens), ``sample_size`` and ``mom2.constructor``.  ``model`` is
``config._name_or_path`` with "/" → "_" for MEMIT and its last path component for EasyEdit; MEMIT's
``stats_dir`` is ``data/stats`` under the working directory (its ``globals.yml``), EasyEdit's is
``hparams.stats_dir``.  Files are read with ``allow_pickle=False`` and checked (keys, shape,
finiteness, count) before use; a bad file is an error that names it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..washing.stats import LayerStats

log = logging.getLogger(__name__)

SECOND_MOMENT = "util.runningstats.SecondMoment()"  # the constructor string the clients store


def client_model_name(model, client: str) -> str:
    """The model's folder name in a client's stats tree (``client``: "memit" or "easyedit")."""
    path = str(getattr(model.config, "_name_or_path", "") or "")
    if not path:
        raise ValueError(
            "the model's config has no _name_or_path, which the clients' statistics paths are named by; "
            "set model.config._name_or_path or give the statistics files directly"
        )
    if client == "memit":
        return path.replace("/", "_")
    if client == "easyedit":
        return path.rsplit("/")[-1]
    raise ValueError(f"client must be 'memit' or 'easyedit', got {client!r}")


def client_stats_path(stats_dir, model_name: str, dataset: str, module: str, dtype: str, n_samples) -> Path:
    """Where the clients keep (or look for) one layer's second-moment statistics."""
    suffix = "" if n_samples is None else f"_{n_samples}"
    return Path(stats_dir) / model_name / f"{dataset}_stats" / f"{module}_{dtype}_mom2{suffix}.npz"


def read_client_stats(path, f: int | None = None) -> LayerStats:
    """A client's ``.npz`` statistics file as :class:`LayerStats` (the sum in float64).  ``f``: the
    layer's key width the file must match."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("mom2.mom2", "mom2.count") if k not in data.files]
            if missing:
                raise ValueError(f"no {missing} in it (holds {sorted(data.files)}); is it a mom2 statistics file?")
            mom2 = np.asarray(data["mom2.mom2"])
            count = data["mom2.count"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such statistics file") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    except Exception as e:  # truncated, not a zip, object arrays (pickle refused), ...
        raise ValueError(f"{path}: cannot be read as statistics ({type(e).__name__}: {e})") from None
    if mom2.ndim != 2 or mom2.shape[0] != mom2.shape[1]:
        raise ValueError(f"{path}: mom2.mom2 has shape {mom2.shape}, expected a square (f, f) matrix")
    if f is not None and mom2.shape != (f, f):
        raise ValueError(f"{path}: mom2.mom2 has shape {mom2.shape}, the layer's keys need ({f}, {f})")
    if mom2.dtype.kind != "f":
        raise ValueError(f"{path}: mom2.mom2 has dtype {mom2.dtype}, expected a float array")
    if count.size != 1 or count.dtype.kind not in "iuf" or not float(count) > 0 or float(count) != int(count):
        raise ValueError(f"{path}: mom2.count is {count!r}, expected a positive whole number of tokens")
    total = torch.from_numpy(mom2.astype(np.float64))
    if not bool(torch.isfinite(total).all()):
        raise ValueError(f"{path}: mom2.mom2 holds NaN or inf")
    return LayerStats(total, int(count))


def write_client_stats(path, stats: LayerStats, dtype: str = "float32", sample_size: int | None = None) -> Path:
    """Write ``stats`` as the clients' ``.npz`` (``dtype``: the array's precision, part of their file
    name), atomically; returns the path."""
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "mom2.constructor": np.array(SECOND_MOMENT),
        "mom2.count": np.array(int(stats.count)),
        "mom2.mom2": stats.sum.detach().cpu().to(getattr(torch, dtype)).numpy(),
    }
    if sample_size is not None:
        arrays["sample_size"] = np.array(int(sample_size))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def stats_from_files(paths, model, layers) -> dict[int, LayerStats]:
    """{layer: LayerStats} for ``layers`` from clients' ``.npz`` files (``paths``: files and/or folders,
    whose ``*.npz`` are considered): each file is matched to its layer by the module name that starts
    it (``transformer.h.17.mlp.c_proj_float32_mom2_100000.npz`` → layer 17 of a GPT-2); exactly one
    file per edited layer, else an error that lists what was found."""
    from ..hf.adapters import get_adapter

    adapter = get_adapter(model)
    files = []
    for given in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths):
        given = Path(given)
        if given.is_dir():
            files += sorted(given.glob("*.npz"))
        elif given.exists():
            files.append(given)
        else:
            raise FileNotFoundError(f"{given}: no such statistics file or folder")
    out = {}
    for layer in layers:
        module = adapter.down_proj_path(layer)
        mine = [f for f in files if f.name.startswith(module + "_")]
        if len(mine) != 1:
            found = ", ".join(f.name for f in files) or "none"
            raise ValueError(
                f"layer {layer}: {len(mine)} statistics files named {module}_*.npz among the given ones ({found}); "
                "give exactly one per edited layer"
            )
        out[layer] = read_client_stats(mine[0], adapter.dims(model, layer)[1])
    return out


def export_client_stats(
    stats: dict[int, LayerStats],
    model,
    stats_dir,
    client: str,
    dataset: str,
    dtype: str = "float32",
    sample_size: int | None = None,
) -> list[Path]:
    """Write law_fast's statistics where ``client`` ("memit" or "easyedit") looks for them, named by
    the model, ``dataset`` (the name in their hparams' ``mom2_dataset``) and ``sample_size`` (their
    ``mom2_n_samples``)."""
    from ..hf.adapters import get_adapter

    adapter = get_adapter(model)
    name = client_model_name(model, client)
    written = []
    for layer, s in sorted(stats.items()):
        module = adapter.down_proj_path(layer)
        path = client_stats_path(stats_dir, name, dataset, module, dtype, sample_size)
        written.append(write_client_stats(path, s, dtype, sample_size))
    return written
