"""Benchmark: covariance statistics of 5 layers in one pass vs one pass per layer (the reference's structure).

Model: SmolLM2-135M (the embedded default, ``law_fast.load_model()``); corpus: the first WikiText-2
test documents (``../shared/data/wikitext2/wiki.test.raw``) holding about ``--tokens`` tokens.
Three phases on the same corpus and batches, each in a fresh process (model loaded, then the
phase timed; its peak RSS is not inflated by memory the allocator kept from an earlier phase):

    forward      the bare forward pass up to the deepest layer, no accumulation (for the RSS
                 bound's "one batch of activations" and the accumulation overhead)
    single       ``layer_stats(..., layers)``: one pass, every layer's keys accumulated
    per_layer    ``layer_stats(..., [layer])`` for each layer: each pass stops at its layer

The statistics runs have the cache and checkpoints disabled and must agree (max |Δ| / max |C|).
Peak RSS (Linux VmHWM, reset through /proc/self/clear_refs after the model is loaded) is
compared with the issue's bound model + 2 × (layers × f² × 8 B) + one batch of activations,
where "model" is the process RSS after loading the model and reading every weight once (the
safetensors file is mapped lazily) and "one batch of activations" is the forward phase's peak
above its own RSS at that point.

    python benchmarks/bench_stats_single_pass.py                     # ~200k tokens, layers 4-8
    python benchmarks/bench_stats_single_pass.py --tokens 20000 --name stats_single_pass_quick

Writes benchmarks/results/<name>.json (default stats_single_pass).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, write_result  # noqa: E402

from law_fast import load_corpus, load_model  # noqa: E402
from law_fast.hf.adapters import get_adapter, model_device  # noqa: E402
from law_fast.hf.hooks import capture, run_until  # noqa: E402
from law_fast.washing.stats import layer_stats, token_batches, tokenize_documents  # noqa: E402

WIKITEXT = REPO_ROOT.parent / "shared" / "data" / "wikitext2" / "wiki.test.raw"
MIB = 2**20


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else peak_rss_bytes()


def corpus_prefix(tokenizer, path: Path, tokens: int, max_length: int):
    """The first documents of ``path`` holding at least ``tokens`` tokens (after truncation)."""
    texts = load_corpus(path).texts
    lengths = [len(d) for d in tokenize_documents(tokenizer, texts, max_length)]
    total, count = 0, 0
    while count < len(texts) and total < tokens:
        total += lengths[count]
        count += 1
    return load_corpus(texts[:count]), total


def bare_forward(model, adapter, tokenizer, corpus, stop_after: int, max_length: int, batch_tokens: int) -> int:
    """The same batches as layer_stats through the model up to ``stop_after``; returns the token count."""
    documents = tokenize_documents(tokenizer, corpus.texts, max_length)
    device, tokens = model_device(model), 0
    with torch.no_grad(), capture(model, adapter, stop_after=stop_after):
        for input_ids, mask, _ in token_batches(documents, batch_tokens, tokenizer.pad_token_id or 0):
            run_until(model, input_ids=input_ids.to(device), attention_mask=mask.to(device))
            tokens += int(mask.sum())
    return tokens


def run_phase(args, layers: list[int], out: Path) -> None:
    """Child process: load the model, run one phase, write its timing, peak RSS and sums to ``out``."""
    model, tokenizer = load_model()
    adapter = get_adapter(model)
    corpus, n_tokens = corpus_prefix(tokenizer, args.corpus, args.tokens, args.max_length)
    kwargs = dict(
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        dtype=args.dtype,
        use_cache=False,
        progress=False,
        block_tokens=args.block_tokens,
    )
    with torch.no_grad():  # page in every weight (safetensors are memory-mapped lazily): "model" = all of it
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()
    record = {
        "rss_after_model_load": rss_bytes(),
        "load_average_1min_before": os.getloadavg()[0],
        "documents": len(corpus),
        "tokens": n_tokens,
        "identity": corpus.identity,
        "model_bytes": sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]),
        "f": adapter.dims(model, layers[0])[1],
        "threads": torch.get_num_threads(),
    }
    record["peak_reset"] = reset_peak_rss()
    start = time.perf_counter()
    sums = {}
    if args.phase == "forward":
        bare_forward(model, adapter, tokenizer, corpus, layers[-1], args.max_length, args.batch_tokens)
    elif args.phase == "single":
        stats = layer_stats(model, adapter, tokenizer, corpus, layers, **kwargs)
        sums = {layer: (s.sum, s.count) for layer, s in stats.items()}
    else:
        record["seconds_per_layer"] = {}
        for layer in layers:
            layer_start = time.perf_counter()
            stats = layer_stats(model, adapter, tokenizer, corpus, [layer], **kwargs)[layer]
            record["seconds_per_layer"][layer] = time.perf_counter() - layer_start
            sums[layer] = (stats.sum, stats.count)
    record["seconds"] = time.perf_counter() - start
    record["peak_rss"] = peak_rss_bytes()
    record["load_average_1min_after"] = os.getloadavg()[0]
    torch.save({"record": record, "sums": sums}, out)


def spawn_phase(phase: str, argv: list[str], workdir: Path) -> dict:
    """Run ``phase`` in a fresh process (clean allocator state for the peak RSS); returns its record."""
    out = workdir / f"{phase}.pt"
    subprocess.run([sys.executable, __file__, *argv, "--phase", phase, "--phase-out", str(out)], check=True)
    return torch.load(out, weights_only=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tokens", type=int, default=200_000, help="corpus size in tokens (a prefix of WikiText-2 test)"
    )
    parser.add_argument("--layers", default="4-8", help="first-last layer")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64", help="accumulator dtype")
    parser.add_argument("--block-tokens", type=int, default=None, help="blocked accumulation (see layer_stats)")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--corpus", type=Path, default=WIKITEXT)
    parser.add_argument("--name", default="stats_single_pass", help="results/<name>.json")
    parser.add_argument("--phase", choices=("forward", "single", "per_layer"), help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    first, last = (int(x) for x in args.layers.split("-"))
    layers = list(range(first, last + 1))
    if args.phase:
        run_phase(args, layers, args.phase_out)
        return

    with tempfile.TemporaryDirectory() as workdir:
        phases = {}
        for phase in ("forward", "single", "per_layer"):
            phases[phase] = spawn_phase(phase, argv, Path(workdir))
            rec = phases[phase]["record"]
            print(
                f"{phase}: {rec['seconds']:.1f} s, peak RSS {rec['peak_rss'] / MIB:.0f} MiB "
                f"(after model load {rec['rss_after_model_load'] / MIB:.0f} MiB), load average "
                f"{rec['load_average_1min_before']:.2f} -> {rec['load_average_1min_after']:.2f}",
                flush=True,
            )
    forward, single, per_layer = (phases[p]["record"] for p in ("forward", "single", "per_layer"))
    n_tokens, f = single["tokens"], single["f"]

    agreement = {}
    for layer in layers:
        (a, count_a), (b, count_b) = phases["single"]["sums"][layer], phases["per_layer"]["sums"][layer]
        assert count_a == count_b == n_tokens, (layer, count_a, count_b, n_tokens)
        agreement[layer] = {
            "bit_identical": bool(torch.equal(a, b)),
            "max_abs_diff_over_max_abs": float((a - b).abs().max() / b.abs().max()),
        }
        assert agreement[layer]["max_abs_diff_over_max_abs"] < 1e-6, (layer, agreement[layer])

    accumulator_bytes = len(layers) * f * f * 8
    activation_bytes = max(0, forward["peak_rss"] - forward["rss_after_model_load"])
    bound = single["rss_after_model_load"] + 2 * accumulator_bytes + activation_bytes
    speedup = per_layer["seconds"] / single["seconds"]
    blocks_single, blocks_per_layer = last + 1, sum(layer + 1 for layer in layers)
    print(
        f"{n_tokens} tokens, layers {layers}, f = {f}, accumulator {args.dtype}; speed-up {speedup:.2f}x "
        f"(block-count bound {blocks_per_layer / blocks_single:.2f}x); single-pass peak RSS "
        f"{single['peak_rss'] / MIB:.0f} MiB vs bound {bound / MIB:.0f} MiB; all matrices agree "
        f"(bit-identical: {all(a['bit_identical'] for a in agreement.values())})",
        flush=True,
    )

    path = write_result(
        args.name,
        {
            "benchmark": "covariance statistics: one pass for all layers vs one pass per layer (reference structure)",
            "command": "python benchmarks/bench_stats_single_pass.py " + " ".join(argv),
            "method": "each phase in a fresh process (model loaded, then the phase timed and its peak RSS taken)",
            "model": "SmolLM2-135M-Instruct (law_fast.load_model(), float32)",
            "corpus": {
                "path": str(args.corpus.name),
                "identity": single["identity"],
                "documents": single["documents"],
                "tokens": n_tokens,
                "max_length": args.max_length,
                "batch_tokens": args.batch_tokens,
            },
            "layers": layers,
            "f": f,
            "accumulator": {"dtype": args.dtype, "block_tokens": args.block_tokens},
            "threads": single["threads"],
            "load_average_1min": {
                p: [phases[p]["record"]["load_average_1min_before"], phases[p]["record"]["load_average_1min_after"]]
                for p in phases
            },
            "seconds": {
                "forward_only": forward["seconds"],
                "single_pass": single["seconds"],
                "per_layer_total": per_layer["seconds"],
                "per_layer": per_layer["seconds_per_layer"],
            },
            "tokens_per_second": {
                "forward_only": n_tokens / forward["seconds"],
                "single_pass": n_tokens / single["seconds"],
                "per_layer_passes": n_tokens / per_layer["seconds"],
            },
            "speedup_single_vs_per_layer": speedup,
            "speedup_target": 3.0,
            "speedup_bound_from_block_counts": {
                "blocks_single_pass": blocks_single,
                "blocks_per_layer_passes": blocks_per_layer,
                "ratio": blocks_per_layer / blocks_single,
            },
            "accumulation_overhead_over_forward": single["seconds"] / forward["seconds"] - 1,
            "agreement_single_vs_per_layer": agreement,
            "memory_bytes": {
                "model_parameters_and_buffers": single["model_bytes"],
                "rss_after_model_load": single["rss_after_model_load"],
                "one_batch_of_activations_measured": activation_bytes,
                "accumulators_layers_f2_8B": accumulator_bytes,
                "bound_rss_after_load_plus_2x_accumulators_plus_activations": bound,
                "peak_rss_forward_only": forward["peak_rss"],
                "peak_rss_single_pass": single["peak_rss"],
                "peak_rss_per_layer_passes": per_layer["peak_rss"],
                "single_pass_within_bound": single["peak_rss"] <= bound,
            },
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
