"""AlphaEdit through law_fast (``apply_alphaedit_to_model``; WashConfig ``null_space_threshold`` and
``regulariser="identity"``): the formula in float64, its hparams, and the same edited weights as the real
EasyEdit ``apply_AlphaEdit_to_model`` (../shared/clients/easyedit) on a tiny Llama."""

from __future__ import annotations

import copy

import pytest
import torch
from client_harness import CLIENTS, HPARAMS, MODULES, easyedit_client

import law_fast as lf
from law_fast.compat import HparamsError, apply_alphaedit_to_model, read_hparams, write_client_stats
from law_fast.compat.stats import client_model_name, client_stats_path
from law_fast.config import MemitConfig, WashConfig
from law_fast.testing import make_tiny_model
from law_fast.washing.keys import KeyMoments
from law_fast.washing.memit import memit_update
from law_fast.washing.retain import corpus_null_space
from law_fast.washing.stats import LayerStats, layer_stats
from law_fast.washing.templates import context_templates

LLAMA = MODULES["llama"]
REQUESTS = [
    {"prompt": "The capital of France is", "subject": "France", "target_new": "Rome", "ground_truth": "Paris"},
    {
        "prompt": "The mother tongue of Danielle Darrieux is",
        "subject": "Danielle Darrieux",
        "target_new": "English",
        "ground_truth": "French",
    },
    {"prompt": "Apple was founded by", "subject": "Apple", "target_new": "Steve Jobs", "ground_truth": "Wozniak"},
]
CORPUS = [
    "The man is a teacher and a writer in the city of London.",
    "I think that you should go because it is late. Therefore we stay.",
    "hello world this is text about science, history and music.",
] * 8


def test_the_update_is_alphaedits_formula_in_float64():
    """Δ = the solution of (P·KKᵀ + L2·I)X = P·K·Rᵀ with P = VVᵀ, V = C's eigen-directions below the threshold
    (AlphaEdit's update, written out here); Δ·u = 0 for C's other eigen-directions u."""
    g = torch.Generator().manual_seed(0)
    f, d, m = 24, 8, 6
    X = torch.randn(4 * f, f, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, f, dtype=torch.float64)
    C = X.T @ X / X.shape[0]
    K = torch.randn(m, f, generator=g, dtype=torch.float64)
    R = torch.randn(m, d, generator=g, dtype=torch.float64)
    W = torch.randn(d, f, generator=g, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(C)
    threshold = float(values[11] + values[12]) / 2  # the 12 smallest directions
    V = corpus_null_space(C, threshold, layer=0)
    assert V.shape == (f, 12)
    L2 = 0.3
    P = V @ V.T
    X_ref = torch.linalg.solve(P @ (K.T @ K) + L2 * torch.eye(f, dtype=torch.float64), P @ K.T @ R)
    moments = KeyMoments(K.T @ K, K.T @ R, float((R**2).sum()), m, K)
    config = MemitConfig(lambda_rule="fixed", mom2_update_weight=L2, regulariser="identity")
    delta, report = memit_update(moments, C, W, config, basis=V)
    assert "retained_disruption" not in report
    torch.testing.assert_close(delta, X_ref.T, rtol=1e-10, atol=1e-12)
    kept = vectors[:, 12:]  # the corpus directions P removes
    assert float((delta @ kept).norm()) <= 1e-10 * float(delta.norm())
    with pytest.raises(ValueError, match=r"no eigenvalue of layer 3's covariance is below it"):
        corpus_null_space(C, float(values[0]) / 2, layer=3)


def test_config_rules():
    WashConfig.create(layers=(1,), null_space_threshold=0.02, regulariser="identity")  # needs no retain source
    with pytest.raises(ValueError, match="exclude each other"):
        WashConfig.create(layers=(1,), null_space_threshold=0.02, null_space_energy=0.5, retain_entities=10)
    with pytest.raises(ValueError, match="cannot weigh retained keys"):
        WashConfig.create(layers=(1,), regulariser="identity", retain_weight=1.0, retain_entities=10)
    with pytest.raises(ValueError, match="regulariser"):
        WashConfig.create(layers=(1,), regulariser="ridge")


def test_alphaedit_hparams_files():
    path = CLIENTS / "easyedit" / "hparams" / "AlphaEdit" / "gpt2-xl.yaml"
    if not path.exists():
        pytest.skip(f"the clients are not at {CLIENTS}")
    h = read_hparams(path, "AlphaEdit")
    assert h["nullspace_threshold"] == 2e-2 and h["L2"] > 0 and h.client == "easyedit"
    with pytest.raises(HparamsError, match=r"alg_name='AlphaEdit'.*runs MEMIT.*apply_alphaedit_to_model"):
        read_hparams(path)
    bad = {**read_hparams(path, "AlphaEdit").values, "L2": 0}
    with pytest.raises(HparamsError, match="L2 must be > 0"):
        read_hparams(bad, "AlphaEdit")
    missing = {k: v for k, v in h.values.items() if k != "nullspace_threshold"}
    with pytest.raises(HparamsError, match=r"missing field\(s\) \['nullspace_threshold'\]"):
        read_hparams(missing, "AlphaEdit")


def _gap_threshold(C: torch.Tensor) -> float:
    """A threshold in the widest relative gap of C's middle eigenvalues (float32 and float64 agree on it)."""
    values = torch.linalg.eigvalsh(C.double())
    n = values.numel()
    ratios = values[n // 4 + 1 : 3 * n // 4] / values[n // 4 : 3 * n // 4 - 1]
    i = int(ratios.argmax()) + n // 4
    return float((values[i] * values[i + 1]).sqrt())


def test_same_edited_weights_as_easyedits_alphaedit(tiny_tokenizer, tmp_path):
    """law_fast's AlphaEdit and EasyEdit's on a float64 tiny Llama, the same statistics file and context
    templates: within 1e-3 relative — the pinned difference is AlphaEdit's float32 (its z* offset δ and
    its solve, ``.float()``), against law_fast's float64; the null space is the same (P's rank)."""
    tok = tiny_tokenizer
    model = make_tiny_model("llama", len(tok)).double()
    model.config._name_or_path = "tiny-llama"  # AlphaEdit picks P's shape by "llama" in the model name
    layers = HPARAMS["layers"]
    stats = layer_stats(
        model, lf.get_adapter(model), tok, lf.load_corpus(CORPUS), layers, use_cache=False, progress=False
    )
    folder = tmp_path / "stats"
    thresholds = []
    for layer in layers:
        C = (stats[layer].sum / stats[layer].count).float()  # the client reads float32
        path = client_stats_path(
            folder,
            client_model_name(model, "easyedit"),
            "wikipedia",
            LLAMA["rewrite_module_tmp"].format(layer),
            "float32",
            64,
        )
        write_client_stats(path, LayerStats(C.double(), 1), "float32", sample_size=64)
        thresholds.append(_gap_threshold(C))
    h = {
        **HPARAMS,
        **LLAMA,
        "alg_name": "AlphaEdit",
        "model_name": "tiny-llama",
        "stats_dir": str(folder),
        "device": "cpu",
        "nullspace_threshold": min(thresholds),
        "L2": 10.0,
        "P_loc": str(tmp_path / "no-such-P.pt"),
    }
    names = [f"{LLAMA['rewrite_module_tmp'].format(layer)}.weight" for layer in layers]
    ours_model, ours_orig = apply_alphaedit_to_model(
        copy.deepcopy(model), tok, copy.deepcopy(REQUESTS), h, return_orig_weights=True, progress=False
    )
    templates = context_templates(model, tok, seed=0, length=10)  # what law_fast's wash samples
    with easyedit_client(tmp_path) as (easyeditor, _):
        from easyeditor.models.alphaedit import AlphaEdit_main
        from easyeditor.models.alphaedit.AlphaEdit_hparams import AlphaEditHyperParams

        AlphaEdit_main.CONTEXT_TEMPLATES_CACHE = [["{}"], templates[1:]]  # theirs are sampled without a seed
        AlphaEdit_main.COV_CACHE.clear()
        AlphaEdit_main.P_loaded, AlphaEdit_main.cache_c_new = False, False  # module state of earlier calls
        theirs_model, theirs_orig = AlphaEdit_main.apply_AlphaEdit_to_model(
            copy.deepcopy(model), tok, copy.deepcopy(REQUESTS), AlphaEditHyperParams(**h), return_orig_weights=True
        )
        P = AlphaEdit_main.P
    assert sorted(ours_orig) == sorted(theirs_orig) == sorted(names)
    for i, (n, layer) in enumerate(zip(names, layers)):
        torch.testing.assert_close(ours_orig[n], theirs_orig[n], rtol=0, atol=0)
        ours = ours_model.get_parameter(n).detach() - model.get_parameter(n).detach()
        theirs = theirs_model.get_parameter(n).detach() - model.get_parameter(n).detach()
        assert theirs.norm() > 0
        rank = round(float(P[i].trace()))
        assert 0 < rank < P.shape[-1]
        C = stats[layer].sum / stats[layer].count
        assert corpus_null_space(C.float().double(), h["nullspace_threshold"], layer).shape[1] == rank
        rel = float((ours - theirs).norm() / theirs.norm())
        assert rel < 1e-3, (n, rel)
