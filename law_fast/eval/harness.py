"""The lm-evaluation-harness adapter: the same tasks and documents as :mod:`law_fast.eval.tasks`,
scored by the harness itself (``pip install lm-eval``), offline, on the in-memory model."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence

from ..hf.adapters import model_device
from .tasks import TASKS, TaskSettings, selected_docs

log = logging.getLogger(__name__)


def run_lm_eval(
    model,
    tokenizer,
    tasks: Sequence[str],
    limit: int | Mapping[str, int] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    paths: Mapping[str, str | os.PathLike] | None = None,
    data_dir: str | os.PathLike | None = None,
    gsm8k_fewshot: int = 8,
    gsm8k_max_new_tokens: int = 256,
    details: bool = False,
) -> dict[str, dict]:
    """Run the same tasks through lm-evaluation-harness (``pip install lm-eval``) on the in-memory
    model, offline: the selected documents (the same fixed-seed subset as :func:`run_reasoning`)
    are written to temporary JSON Lines files and read by task configs equal to the harness's own
    (``lambada_openai``, ``hellaswag``, ``arc_easy``, ``gsm8k_cot``) except for the dataset source.
    Returns ``{task: metrics}`` with our metric names (plus ``"items"`` when ``details``)."""
    import tempfile

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.api.task import ConfigurableTask
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        raise ModuleNotFoundError("the lm-evaluation-harness adapter needs `pip install lm-eval`") from err

    docs_of = selected_docs(tasks, limit, seed, paths, data_dir)
    settings = TaskSettings(batch_size, gsm8k_fewshot, gsm8k_max_new_tokens)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model_device(model)))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="law_fast_lm_eval_") as tmp:
        task_objects = []
        for name, docs in docs_of.items():
            data_file = os.path.join(tmp, f"{name}.jsonl")
            with open(data_file, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
            config = {
                "task": f"law_fast_{name}",
                "dataset_path": "json",
                "test_split": "test",
                "dataset_kwargs": {"data_files": {"test": data_file}},
                "metadata": {"version": 1.0},
                **TASKS[name].harness(settings),
            }
            task_objects.append(ConfigurableTask(config=config))
        output = simple_evaluate(
            model=lm,
            tasks=task_objects,
            log_samples=details,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            bootstrap_iters=0,
        )
    for name in docs_of:
        raw = output["results"][f"law_fast_{name}"]
        renamed = TASKS[name].harness_metrics
        if renamed:
            metrics = {ours: float(raw[theirs]) for ours, theirs in renamed.items()}
        else:
            metrics = {k.split(",")[0]: float(v) for k, v in raw.items() if k.endswith(",none") and "stderr" not in k}
        metrics["n"] = len(docs_of[name])
        if details:  # one sample per document (generate_until tasks log one per filter: keep the first)
            samples = {}
            for sample in output["samples"][f"law_fast_{name}"]:
                samples.setdefault(sample["doc_id"], sample)
            metrics["items"] = [samples[k] for k in sorted(samples)]
        results[name] = metrics
    return results
