"""The MEMIT-family hyper-parameters law_fast's drop-in entry points read.

Sources (:func:`read_hparams`): a client's hparams object (``MEMITHyperParams`` of kmeng01/memit or
of EasyEdit, any dataclass or object with these attributes), a dict, MEMIT's JSON
(``hparams/MEMIT/*.json``), the LaW authors' JSON (``hparams/LAW/*.json``: MEMIT's fields plus the
LaW solver's) or EasyEdit's YAML (``hparams/MEMIT/*.yaml``).  Every field is either used, checked
against the model, or — for the few the clients themselves do not read for an edit — accepted and
documented here; anything else is an error that names it.

=====================  ===========================================================================
field                  what law_fast does with it
=====================  ===========================================================================
layers                 the edited layers (``WashConfig.layers``)
v_*, clamp_norm_factor the z* optimisation (``TargetConfig``); v_loss_layer must be a block index
kl_factor
mom2_update_weight     λ: MEMIT's fixed weight of C (``lambda_rule="fixed"``); LaW: the initial λ
fact_token             only "subject_last" (the clients' default; others are refused)
layer_selection        only "all"
mom2_adjustment        accepted: MEMIT's and EasyEdit's code never read it
*_module_tmp,          checked against the model: the rewrite module must be the layer's MLP
ln_f_module,           down-projection, the layer module its block; ln_f/lm_head must exist
lm_head_module
mom2_dataset,          name the statistics file (:mod:`law_fast.compat.stats`); ``mom2_dtype`` is
mom2_n_samples,        the file's precision
mom2_dtype
stats_dir (EasyEdit)   where the statistics files are (MEMIT: ``data/stats`` under the working dir)
alg_name (EasyEdit)    "MEMIT" (or "LAW"/"LaW" for apply_law_to_model, "AlphaEdit" for apply_alphaedit_to_model)
nullspace_threshold,   AlphaEdit (apply_alphaedit_to_model only): Δ restricted to the eigen-directions of
L2                     C below the threshold (``null_space_threshold``), λ = L2 on the identity
                       (``regulariser="identity"``); its mom2_update_weight is not read, as in AlphaEdit
P_loc                  accepted, not read: law_fast computes P from the statistics (one eigendecomposition
                       of C per layer); a P file alone (without the statistics) is not enough
device, model_name,    accepted: EasyEdit's editor uses them to load and place the model, which the
max_length, batch_size caller has done; law_fast computes where the model's weights are
model_parallel         only false
=====================  ===========================================================================
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import MEMIT_HPARAMS, REFERENCE_IGNORED, REFERENCE_MAPPED

log = logging.getLogger(__name__)

MEMIT_FIELDS = MEMIT_HPARAMS
EASYEDIT_FIELDS = ("alg_name", "device", "model_name", "stats_dir", "max_length", "batch_size", "model_parallel")
#: the LaW authors' JSON: MEMIT's fields plus these (read by WashConfig.from_reference_hparams)
LAW_FIELDS = tuple(k for k in REFERENCE_MAPPED + REFERENCE_IGNORED if k not in MEMIT_FIELDS)
#: AlphaEdit's fields besides MEMIT's (EasyEdit's AlphaEditHyperParams)
ALPHAEDIT_FIELDS = ("nullspace_threshold", "L2", "P_loc")
REQUIRED = ("layers", "rewrite_module_tmp", "layer_module_tmp", "mom2_update_weight")
#: which alg_name each entry point accepts (LAW_FAST_*: the names law_fast.compat.easyedit.register() adds)
ALGORITHMS = {
    "MEMIT": ("MEMIT", "LAW_FAST_MEMIT"),
    "LAW": ("LAW", "LaW", "law"),
    "AlphaEdit": ("AlphaEdit", "LAW_FAST_ALPHAEDIT"),
}
ENTRY = {"MEMIT": "apply_memit_to_model", "LAW": "apply_law_to_model", "AlphaEdit": "apply_alphaedit_to_model"}


class HparamsError(ValueError):
    """Hyper-parameters law_fast cannot use: ``source`` (file or object) and ``fields`` named."""

    def __init__(self, message: str, source: str, fields=()):
        super().__init__(f"{source}: {message}")
        self.source, self.fields = source, list(fields)


@dataclass(frozen=True)
class ClientHparams:
    """A client's hyper-parameters, read and checked (``values``: field → value as given)."""

    values: dict
    source: str  # the file, or the object's type
    client: str  # "memit" (no alg_name) or "easyedit"

    def __getitem__(self, name: str):
        return self.values[name]

    def get(self, name: str, default=None):
        return self.values.get(name, default)


def _load(source) -> tuple[dict, str]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists() and path.suffix == "" and path.with_suffix(".yaml").exists():
            path = path.with_suffix(".yaml")  # EasyEdit's from_hparams accepts the name without .yaml
        try:
            text = path.read_text()
        except OSError as e:
            raise HparamsError(f"cannot read the hparams file ({e.strerror})", str(path)) from None
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f"line {mark.line + 1}: " if mark is not None else ""
                raise HparamsError(f"{where}invalid YAML: {e}", str(path)) from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise HparamsError(f"line {e.lineno}: invalid JSON: {e.msg}", str(path)) from None
        if not isinstance(data, Mapping):
            raise HparamsError(f"expected a mapping of fields, got {type(data).__name__}", str(path))
        return dict(data), str(path)
    if isinstance(source, Mapping):
        return dict(source), "hparams dict"
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
        return dataclasses.asdict(source), f"{type(source).__name__} object"
    if hasattr(source, "__dict__"):
        return {k: v for k, v in vars(source).items() if not k.startswith("_")}, f"{type(source).__name__} object"
    raise HparamsError("expected a path, a dict or a hyper-parameters object", type(source).__name__)


def _float(value: Any, name: str, where: str) -> float:
    """YAML 1.1 reads 5e-1 as a string (EasyEdit converts such strings too)."""
    if isinstance(value, bool):
        raise HparamsError(f"{name} must be a number, got {value!r}", where, [name])
    try:
        return float(value)
    except (TypeError, ValueError):
        raise HparamsError(f"{name} must be a number, got {value!r}", where, [name]) from None


FLOATS = ("v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor", "mom2_update_weight", "nullspace_threshold", "L2")
INTS = ("v_num_grad_steps", "v_loss_layer", "mom2_n_samples")


def read_hparams(source, algorithm: str = "MEMIT") -> ClientHparams:
    """Read and check a client's hyper-parameters (see the module docstring); ``algorithm``: "MEMIT",
    "LAW" or "AlphaEdit" (which the entry point runs; an EasyEdit ``alg_name`` must agree)."""
    data, where = _load(source)
    alg = data.get("alg_name")
    accepted = ALGORITHMS[algorithm]
    if alg is not None and alg not in accepted:
        other = next((name for name, names in ALGORITHMS.items() if alg in names), None)
        hint = f"; use law_fast.compat.{ENTRY[other]}" if other else ""
        raise HparamsError(
            f"alg_name={alg!r}, but this entry point runs {algorithm} (alg_name {accepted[0]!r}){hint}",
            where,
            ["alg_name"],
        )
    known = set(MEMIT_FIELDS) | set(EASYEDIT_FIELDS) | set(LAW_FIELDS) | set(ALPHAEDIT_FIELDS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise HparamsError(
            f"unknown or unsupported field(s) {unknown}; law_fast reads MEMIT's fields {list(MEMIT_FIELDS)}, "
            f"EasyEdit's {list(EASYEDIT_FIELDS)}, the LaW authors' {list(LAW_FIELDS)} and AlphaEdit's "
            f"{list(ALPHAEDIT_FIELDS)}",
            where,
            unknown,
        )
    required = REQUIRED + (("nullspace_threshold", "L2") if algorithm == "AlphaEdit" else ())
    missing = [k for k in required if data.get(k) is None]
    if missing:
        raise HparamsError(f"missing field(s) {missing}", where, missing)
    for name in FLOATS:
        if data.get(name) is not None:
            data[name] = _float(data[name], name, where)
    for name in INTS:
        if data.get(name) is not None:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, (int, float, str)) or float(value) != int(float(value)):
                raise HparamsError(f"{name} must be a whole number, got {value!r}", where, [name])
            data[name] = int(float(value))
    layers = data["layers"]
    if (
        not isinstance(layers, (list, tuple))
        or not layers
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers)
    ):
        raise HparamsError(f"layers must be a non-empty list of block indices, got {layers!r}", where, ["layers"])
    if list(layers) != sorted(set(layers)):
        raise HparamsError(f"layers must be increasing without repeats, got {layers!r}", where, ["layers"])
    checks = {
        "fact_token": ("subject_last",),
        "layer_selection": ("all",),
        "model_parallel": (False, None),
        "mom2_dtype": ("float32", "float64", None),
    }
    for name, allowed in checks.items():
        if name in data and data[name] not in allowed:
            raise HparamsError(
                f"{name}={data[name]!r} is not supported (law_fast supports {[a for a in allowed if a is not None]})",
                where,
                [name],
            )
    for fields, owner, name in ((LAW_FIELDS, "LAW", "LaW"), (ALPHAEDIT_FIELDS, "AlphaEdit", "AlphaEdit")):
        found = sorted(k for k in data if k in fields)
        if found and algorithm != owner:
            raise HparamsError(
                f"{name} field(s) {found} in {algorithm} hyper-parameters; use law_fast.compat.{ENTRY[owner]}",
                where,
                found,
            )
    for name in ("nullspace_threshold", "L2"):
        if name in data and not data[name] > 0:
            raise HparamsError(f"{name} must be > 0, got {data[name]!r}", where, [name])
    client = "easyedit" if any(k in data for k in EASYEDIT_FIELDS) else "memit"
    return ClientHparams(data, where, client)


def check_modules(h: ClientHparams, model) -> None:
    """The hparams' module templates name the modules law_fast edits and reads in ``model``."""
    from ..hf.adapters import get_adapter

    adapter = get_adapter(model)
    n_layers = adapter.num_layers(model)
    bad = [layer for layer in h["layers"] if layer >= n_layers]
    if bad:
        raise HparamsError(f"layers {bad} are beyond the model's {n_layers} blocks", h.source, ["layers"])
    for layer in h["layers"]:
        rewrite = h["rewrite_module_tmp"].format(layer)
        want = adapter.down_proj_path(layer)
        if rewrite != want:
            raise HparamsError(
                f"rewrite_module_tmp names {rewrite!r} for layer {layer}; law_fast edits the MLP down-projection, "
                f"{want!r} in this {type(model).__name__}",
                h.source,
                ["rewrite_module_tmp"],
            )
        block = h["layer_module_tmp"].format(layer)
        if block != f"{adapter.blocks}.{layer}":
            raise HparamsError(
                f"layer_module_tmp names {block!r}; the block of layer {layer} is {adapter.blocks}.{layer!s}",
                h.source,
                ["layer_module_tmp"],
            )
    names = dict(model.named_modules())
    for name in ("mlp_module_tmp", "attn_module_tmp"):
        if h.get(name) is not None and h[name].format(h["layers"][0]) not in names:
            raise HparamsError(
                f"{name} names {h[name].format(h['layers'][0])!r}, not a module of this model", h.source, [name]
            )
    if h.get("ln_f_module") is not None and h["ln_f_module"] != adapter.final_norm:
        raise HparamsError(
            f"ln_f_module is {h['ln_f_module']!r}; this model's final norm is {adapter.final_norm!r}",
            h.source,
            ["ln_f_module"],
        )
    head = h.get("lm_head_module")
    if head is not None:
        module = names.get(head)
        if module is None or getattr(module, "weight", None) is None:
            raise HparamsError(
                f"lm_head_module {head!r} is not a module with a weight here", h.source, ["lm_head_module"]
            )
        if module.weight.data_ptr() != model.get_output_embeddings().weight.data_ptr():
            raise HparamsError(
                f"lm_head_module {head!r} is not the model's output embedding (law_fast reads the logits the "
                "model computes)",
                h.source,
                ["lm_head_module"],
            )
    loss_layer = h.get("v_loss_layer")
    if loss_layer is not None and not 0 <= loss_layer < n_layers:
        raise HparamsError(
            f"v_loss_layer {loss_layer} is not a block of this model (0..{n_layers - 1})", h.source, ["v_loss_layer"]
        )
