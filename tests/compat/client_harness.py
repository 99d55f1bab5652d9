"""Where the real clients are for the side-by-side tests (../shared/clients), and the skip when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from law_fast.testing import easyedit_client as _easyedit_client
from law_fast.testing import memit_client as _memit_client

CLIENTS = Path(__file__).resolve().parents[2].parent / "shared" / "clients"
MEMIT_ROOT = CLIENTS / "memit"
EASYEDIT_ROOT = CLIENTS / "easyedit"


def need_memit():
    if not (MEMIT_ROOT / "memit" / "memit_main.py").is_file():
        pytest.skip(f"the MEMIT client is not at {MEMIT_ROOT} (../shared/clients)")


def memit_client(workdir: Path, float64_delta: bool = False):
    """law_fast.testing.memit_client on ../shared/clients/memit."""
    need_memit()
    return _memit_client(MEMIT_ROOT, workdir, float64_delta)


def need_easyedit():
    if not (EASYEDIT_ROOT / "easyeditor" / "editors" / "editor.py").is_file():
        pytest.skip(f"the EasyEdit client is not at {EASYEDIT_ROOT} (../shared/clients)")


def easyedit_client(workdir: Path):
    """law_fast.testing.easyedit_client on ../shared/clients/easyedit."""
    need_easyedit()
    return _easyedit_client(EASYEDIT_ROOT, workdir)


#: MEMIT hyper-parameters for the tiny 4-block models (law_fast.testing.make_tiny_model), per family
MODULES = {
    "gpt2": dict(
        rewrite_module_tmp="transformer.h.{}.mlp.c_proj",
        layer_module_tmp="transformer.h.{}",
        mlp_module_tmp="transformer.h.{}.mlp",
        attn_module_tmp="transformer.h.{}.attn",
        ln_f_module="transformer.ln_f",
        lm_head_module="transformer.wte",
    ),
    "llama": dict(
        rewrite_module_tmp="model.layers.{}.mlp.down_proj",
        layer_module_tmp="model.layers.{}",
        mlp_module_tmp="model.layers.{}.mlp",
        attn_module_tmp="model.layers.{}.self_attn",
        ln_f_module="model.norm",
        lm_head_module="lm_head",
    ),
    "gptj": dict(
        rewrite_module_tmp="transformer.h.{}.mlp.fc_out",
        layer_module_tmp="transformer.h.{}",
        mlp_module_tmp="transformer.h.{}.mlp",
        attn_module_tmp="transformer.h.{}.attn",
        ln_f_module="transformer.ln_f",
        lm_head_module="lm_head",
    ),
}
HPARAMS = dict(
    layers=[1, 2],
    layer_selection="all",
    fact_token="subject_last",
    v_num_grad_steps=8,
    v_lr=0.5,
    v_loss_layer=3,
    v_weight_decay=0.5,
    clamp_norm_factor=0.75,
    kl_factor=0.0625,
    mom2_adjustment=True,
    mom2_update_weight=50.0,
    mom2_dataset="wikipedia",
    mom2_n_samples=64,
    mom2_dtype="float32",
)
