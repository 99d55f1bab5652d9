"""What tests and benchmarks share: deliberately plain implementations of the washing stages,
written the reference's way (law-reference.md), that the fast paths are checked and timed
against; and tiny random Hugging Face models of every supported family with an in-memory
tokenizer (no download).  Not imported by the library itself."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import types
from pathlib import Path

import torch

from .hf.hooks import block_output_tensor, frozen
from .hf.tokens import encode_at
from .washing.targets import _rows as rows

log = logging.getLogger(__name__)

FAMILIES = ("gpt2", "gptj", "gpt_neox", "llama")

TOKENIZER_TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome. The mother tongue of Danielle Darrieux is French.",
    "Apple was founded by Steve Jobs. Toyota is headquartered in Japan. The Eiffel Tower is located in Paris.",
    "I think that you should go because it is late. Therefore we stay. The man is a teacher and a writer.",
    "hello world this is text about science, history, music and the river in the city of London, Berlin, Madrid.",
]


def make_tiny_tokenizer():
    """A byte-level BPE (fast, with offsets) trained in memory; EOS = pad = <|endoftext|>."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        TOKENIZER_TEXT * 4, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def gpt2_tokenizer(folder, vocab_size: int | None = None):
    """The GPT-2 byte-level BPE from its ``vocab.json`` and ``merges.txt`` (e.g. ../shared/data/tokenizers/gpt2)
    as a fast tokenizer (offsets), ``<|endoftext|>`` = EOS = pad (transformers 5's ``GPT2TokenizerFast(vocab_file=,
    merges_file=)`` builds an empty one).

    ``vocab_size``: the same BPE with only its first ``vocab_size − 257`` merges — the 256 byte tokens, the
    merges' tokens in their order (GPT-2's id 256 + k is merge k) and EOS last (id ``vocab_size − 1``): any
    text still tokenises (into shorter pieces), and a model's output head is that much smaller (the scale
    testbed: with 50k tokens the head is most of a tiny model's z* cost)."""
    import json

    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    if vocab_size is None:
        bpe = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    else:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        if not 258 <= vocab_size <= len(merges) + 257:
            raise ValueError(f"vocab_size must be in 258..{len(merges) + 257} (bytes, merges, EOS), got {vocab_size}")
        merges = merges[: vocab_size - 257]
        kept = {token: i for token, i in vocab.items() if i < vocab_size - 1}
        if [kept.get(a + b) for a, b in merges] != list(range(256, vocab_size - 1)):
            raise ValueError(f"{folder}: vocab.json does not give merge k the id 256 + k (not GPT-2's order)")
        bpe = ByteLevelBPETokenizer(kept, merges)
    bpe.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def make_tiny_model(family: str, vocab_size: int, n_layers: int = 4, seed: int = 0, hidden: int = 32, mlp: int = 64):
    """A tiny random causal LM of ``family`` (hidden 32, MLP 64 by default — f ≠ d so orientation errors show)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTJConfig,
        GPTJForCausalLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if family == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab_size,
                n_positions=256,
                n_embd=hidden,
                n_layer=n_layers,
                n_head=4,
                n_inner=mlp,
                eos_token_id=0,
                bos_token_id=0,
            )
        )
    elif family == "gptj":
        model = GPTJForCausalLM(
            GPTJConfig(
                vocab_size=vocab_size,
                n_positions=256,
                n_embd=hidden,
                n_layer=n_layers,
                n_head=4,
                rotary_dim=8,
                n_inner=mlp,
                eos_token_id=0,
                bos_token_id=0,
            )
        )
    elif family == "gpt_neox":
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=vocab_size,
                hidden_size=hidden,
                num_hidden_layers=n_layers,
                num_attention_heads=4,
                intermediate_size=mlp,
                max_position_embeddings=256,
                eos_token_id=0,
                bos_token_id=0,
            )
        )
    elif family == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab_size,
                hidden_size=hidden,
                num_hidden_layers=n_layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=mlp,
                max_position_embeddings=256,
                eos_token_id=0,
                bos_token_id=0,
                pad_token_id=0,
            )
        )
    else:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    return model.eval()


def plain_compute_z(model, adapter, tok, fact, templates, config, z_layer, target_ids, unlikely=False):
    """One fact at a time, torch.optim.Adam, full forward with the model's own logits (law-reference §2.3).
    ``unlikely``: ``target_ids`` is [the answer's first token] and the term is −log(1 − p) instead of −log p."""
    suffix = tok.decode(target_ids[:-1]) if len(target_ids) > 1 else ""
    texts, ends = rows([fact], templates, [suffix])  # T rewriting prompts + the KL prompt
    enc = encode_at(tok, texts, ends)
    n_t = len(target_ids)
    d = adapter.dims(model, z_layer)[0]
    delta = torch.zeros(d, requires_grad=True, dtype=next(model.parameters()).dtype)
    opt = torch.optim.Adam([delta], lr=config.v_lr)
    state = {}

    def hook(module, args, output):
        h = block_output_tensor(output)
        if "z_init" not in state:
            state["z_init"] = h[0, enc.index[0]].detach().clone()
        h = h.clone()
        for row in range(h.shape[0]):
            h[row, enc.index[row]] = h[row, enc.index[row]] + delta
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    handle = adapter.block(model, z_layer).register_forward_hook(hook)
    try:
        with frozen(model):
            for it in range(config.max_steps):
                opt.zero_grad()
                logits = model(**enc.model_inputs).logits
                logp_all = torch.log_softmax(logits, -1)
                nll = 0.0
                for row in range(len(templates)):
                    n = int(enc.lengths[row])
                    for j, tid in enumerate(target_ids):
                        lp = logp_all[row, n - n_t + j, tid]
                        if unlikely:
                            lp = torch.log(1 - torch.exp(lp).clamp(max=1 - 1e-6))
                        nll = nll - lp / n_t
                nll = nll / len(templates)
                kl_row = len(templates)
                log_p = logp_all[kl_row, enc.index[kl_row]]
                if "log_p_init" not in state:
                    state["log_p_init"] = log_p.detach().clone()
                kl = torch.nn.functional.kl_div(
                    state["log_p_init"][None], log_p[None], log_target=True, reduction="batchmean"
                )
                wd = config.v_weight_decay * delta.norm() / state["z_init"].norm() ** 2
                loss = nll + config.kl_factor * kl + wd
                if config.stops(loss.item(), it) or it == config.max_steps - 1:
                    break
                loss.backward()
                opt.step()
                max_norm = config.clamp_norm_factor * state["z_init"].norm()
                if delta.norm() > max_norm:
                    with torch.no_grad():
                        delta[...] = delta * max_norm / delta.norm()
    finally:
        handle.remove()
    return (state["z_init"] + delta).detach()


def plain_memit_delta(keys, resid, cov, lam):
    """Δ = Rᵀ K (λC + KᵀK)⁻¹ by a fresh float64 solve (keys m×f, resid m×d)."""
    K, R, C = keys.double(), resid.double(), cov.double()
    A = lam * C + K.T @ K
    return torch.linalg.solve(A, K.T @ R).T


def plain_lambda(K, R, C, W, budget: float) -> float:
    """The library's disruption rule and bisection, each trial a fresh float64 solve."""

    def disruption(lam):
        delta = plain_memit_delta(K, R, C, lam)
        return float((delta @ C * delta).sum())

    target = budget * float((W @ C * W).sum())
    # the library's bracket: λ relative to the largest eigenvalue of C^{-1/2} G C^{-1/2} (computed once)
    L = torch.linalg.cholesky(C)
    M = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, K.T @ K, upper=False).T, upper=False)
    scale = float(torch.linalg.eigvalsh(0.5 * (M + M.T)).max())
    lo, hi = 1e-10 * scale, 1e10 * scale
    if disruption(lo) <= target:
        return lo
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if disruption(mid) <= target:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1 + 1e-6:
            break
    return hi


def plain_law(delta0, keys, cov, config):
    """The reference's update_upd_matrix: autograd through K in float64, returns the final iterate and first contact."""
    U = delta0.T.double().clone().requires_grad_(True)
    K = keys.double().T  # f×m
    C = cov.double()
    beta = config.beta_ratio * float(torch.trace(U.detach().T @ C @ U.detach()) / torch.trace(C))
    opt = torch.optim.Adam([U], lr=config.learning_rate)
    first = None
    for t in range(config.total_iters):
        opt.zero_grad()
        loss = -((U.T @ K) ** 2).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            rho = float(torch.trace(U.T @ C @ U) / torch.trace(C))
            if rho > beta:
                U.data = U.data * (beta / rho) ** 0.5
                if first is None:
                    first = t
                    if config.lr_after_hitting_boundary is not None:
                        for g in opt.param_groups:
                            g["lr"] = config.lr_after_hitting_boundary
    return U.detach().T, first


# ---------------------------------------------------------------- the scale testbed (issue 14)
SYLLABLES = (
    "ka", "lo", "mi", "ren", "tus", "var", "bel", "dor", "fen", "gal", "hin", "jor", "kel", "lun", "mar",
    "nes", "ol", "pra", "quin", "ros", "sel", "tor", "ul", "ven", "wyn", "xar", "yel", "zor", "ath", "bri",
    "cor", "dun", "el", "fal", "gor", "hal", "is", "jan", "kir", "lem",
)  # fmt: skip
RELATIONS = (
    "The capital of {} is",
    "{} was born in",
    "The mother tongue of {} is",
    "{} is a citizen of",
    "{} works in the field of",
    "{} was founded in",
    "The headquarters of {} are in",
    "{} plays the",
    "{} is produced by",
    "{} speaks",
)
OBJECTS = (
    "Paris", "Rome", "London", "Berlin", "Madrid", "Tokyo", "Moscow", "Vienna", "Cairo", "Lima",
    "French", "English", "German", "Spanish", "Italian", "Russian", "Dutch", "Greek", "Latin", "Polish",
    "physics", "music", "history", "medicine", "law", "piano", "guitar", "violin", "Toyota", "Nokia",
)  # fmt: skip


def synthetic_facts(n: int, seed: int = 0) -> list:
    """``n`` distinct synthetic facts (deterministic in ``seed``): two-word invented subjects of two
    syllables each, one of ``RELATIONS``, one of ``OBJECTS`` — for washes of any size on a tiny model
    (the scale testbed: ``only_known=False``, the model knows none of them)."""
    import random

    from .facts import Fact

    rng = random.Random(seed)
    n_words = len(SYLLABLES) ** 2
    if n > n_words * (n_words - 1):
        raise ValueError(f"at most {n_words * (n_words - 1)} synthetic facts, asked for {n}")

    def word(i: int) -> str:
        return (SYLLABLES[i // len(SYLLABLES)] + SYLLABLES[i % len(SYLLABLES)]).capitalize()

    seen: set[int] = set()
    facts = []
    while len(facts) < n:
        a, b = rng.randrange(n_words), rng.randrange(n_words)
        if a == b or a * n_words + b in seen:
            continue
        seen.add(a * n_words + b)
        subject = f"{word(a)} {word(b)}"
        facts.append(Fact(subject, rng.choice(RELATIONS), rng.choice(OBJECTS), len(facts)))
    return facts


def make_scale_model(vocab_size: int, seed: int = 0, n_layers: int = 6):
    """The scale testbed's model: a random Llama, hidden 64, MLP 256 (f ≥ 256), ``n_layers`` blocks."""
    return make_tiny_model("llama", vocab_size, n_layers, seed, hidden=64, mlp=256)


# ---------------------------------------------------------------- the real MEMIT client, on CPU
def _cpu(device):
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    return device


@contextlib.contextmanager
def memit_client(root: Path, workdir: Path, float64_delta: bool = False):
    """Import the MEMIT client at ``root`` (../shared/clients/memit, unmodified) on CPU with
    transformers 5, everything it needs patched for the duration of the ``with`` only
    (../shared/clients/README.md): "cuda" → the CPU, decoder-block outputs shown to its hooks as the
    1-tuples of transformers 4, ``datasets`` importable (a stub: give the statistics as files).
    Runs with ``workdir`` as the working directory (its globals.yml is copied there:
    data/stats under it is where the client reads statistics) and yield its ``memit`` package.
    ``float64_delta``: the client's z* offset δ (``torch.zeros(..., device="cuda")``, float32) is made
    in float64, as a float64 model's — the one precision difference the equivalence test pins."""
    shutil.copy(root / "globals.yml", workdir / "globals.yml")
    old_cwd = os.getcwd()
    os.chdir(workdir)
    sys.path.insert(0, str(root))
    stubbed = "datasets" not in sys.modules
    if stubbed:
        stub = types.ModuleType("datasets")
        stub.load_dataset = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no downloads in tests"))
        sys.modules["datasets"] = stub
    from transformers import BatchEncoding

    originals = {
        "to": torch.Tensor.to,
        "batch_to": BatchEncoding.to,
        "tensor": torch.tensor,
        "zeros": torch.zeros,
        "hook": torch.nn.Module.register_forward_hook,
    }

    def to(self, *args, **kwargs):
        args = tuple(_cpu(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return originals["to"](self, *args, **kwargs)

    def batch_to(self, device, *args, **kwargs):
        return originals["batch_to"](self, _cpu(device), *args, **kwargs)

    def tensor(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return originals["tensor"](*args, **kwargs)

    def zeros(*args, **kwargs):
        if "device" in kwargs:
            if float64_delta and kwargs.get("requires_grad") and _cpu(kwargs["device"]) != kwargs["device"]:
                kwargs.setdefault("dtype", torch.float64)
            kwargs["device"] = _cpu(kwargs["device"])
        return originals["zeros"](*args, **kwargs)

    def hook(self, fn, *args, **kwargs):
        # transformers 5 blocks return a Tensor; the client's hooks index output[0] as for 4's tuples
        def wrapped(module, inputs, output):
            if isinstance(output, torch.Tensor) and isinstance(module, blocks):
                got = fn(module, inputs, (output,))
                return got[0] if isinstance(got, tuple) else got
            return fn(module, inputs, output)

        return originals["hook"](self, wrapped, *args, **kwargs)

    blocks = _block_types()
    torch.Tensor.to, BatchEncoding.to, torch.tensor, torch.zeros = to, batch_to, tensor, zeros
    torch.nn.Module.register_forward_hook = hook
    try:
        import memit

        yield memit
    finally:
        torch.Tensor.to, BatchEncoding.to = originals["to"], originals["batch_to"]
        torch.tensor, torch.zeros = originals["tensor"], originals["zeros"]
        torch.nn.Module.register_forward_hook = originals["hook"]
        sys.path.remove(str(root))
        if stubbed:
            sys.modules.pop("datasets", None)
        os.chdir(old_cwd)


def _block_types():
    """The decoder blocks whose transformers-5 Tensor outputs the client's hooks see as 1-tuples."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    from transformers.models.gptj.modeling_gptj import GPTJBlock
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return (GPT2Block, GPTJBlock, LlamaDecoderLayer)


# ---------------------------------------------------------------- the real EasyEdit client, without its extras
class _StubType(type):
    """A stubbed package's attributes: classes (easyeditor's modules subclass and decorate with them at
    import time); their instances accept any call and attribute."""

    def __new__(mcls, name, bases=(), namespace=None):
        return super().__new__(mcls, name, bases, {**_STUB_METHODS, **(namespace or {})})

    def __init__(cls, name, bases=(), namespace=None):
        super().__init__(name, bases, namespace or {})

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubType(name)

    def __getitem__(cls, item):  # typing-style subscripts in annotations: Optional[...], List[...]
        return cls


def _stub_attribute(self, name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _StubType(name)()


_STUB_METHODS = {
    "__init__": lambda self, *args, **kwargs: None,
    "__call__": lambda self, *args, **kwargs: self,
    "__getattr__": _stub_attribute,
    "__getitem__": lambda self, item: self,
    "__iter__": lambda self: iter(()),
}


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubType(name)


class _EasyeditExtras:
    """A last meta-path finder: a module easyeditor's own code imports and this machine lacks (its optional
    extras: sentence_transformers, hydra, cv2, …; transformers 4's modeling_attn_mask_utils) becomes a stub,
    named in ``stubbed``.  Imports from anywhere else fail as usual (so no library sees a stub as installed)."""

    def __init__(self):
        self.stubbed: list[str] = []

    def find_spec(self, fullname, path, target=None):
        import importlib.util

        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
            frame = frame.f_back
        caller = frame.f_globals.get("__name__", "") if frame is not None else ""
        if not caller.startswith("easyeditor") and not fullname.startswith(tuple(f"{s}." for s in self.stubbed)):
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec):
        self.stubbed.append(spec.name)
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


@contextlib.contextmanager
def easyedit_client(root: Path, workdir: Path):
    """Import the real ``easyeditor`` package at ``root`` (../shared/clients/easyedit, unmodified) with the
    optional packages this machine lacks stubbed (``_EasyeditExtras``; the stubs' names are logged), in
    ``workdir`` (its editors write logs/ under the working directory), and yield ``(easyeditor, stubbed)``.
    On exit easyeditor and the stubs leave ``sys.modules``."""
    finder = _EasyeditExtras()
    old_cwd, before = os.getcwd(), set(sys.modules)
    os.chdir(workdir)
    sys.path.insert(0, str(root))
    sys.meta_path.append(finder)
    try:
        import easyeditor

        if finder.stubbed:
            log.info("easyeditor imported with %d stubbed modules: %s", len(finder.stubbed), finder.stubbed)
        yield easyeditor, list(finder.stubbed)
    finally:
        sys.meta_path.remove(finder)
        sys.path.remove(str(root))
        for name in set(sys.modules) - before:
            if name.startswith("easyeditor") or name in finder.stubbed:
                del sys.modules[name]
        os.chdir(old_cwd)
