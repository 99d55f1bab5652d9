"""CLI on a tiny saved model; README and CI stay in sync."""

import json
import re
from pathlib import Path

import pytest

from law_fast.cli import _layers, main

ROOT = Path(__file__).resolve().parents[1]


def test_layers_parser():
    assert _layers("4-8") == (4, 5, 6, 7, 8)
    assert _layers("1,3,5") == (1, 3, 5)
    assert _layers("1-2,7") == (1, 2, 7)


def test_info_prints_backends(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    import torch

    assert info["torch"] == torch.__version__ and "law_fast" in info and "ops" in info


def test_wash_command_on_tiny_saved_model(tiny_dir, tmp_path, tiny_tokenizer, capsys):

    model_dir = tiny_dir
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"subject": "France", "prompt": "The capital of {} is", "object": "Paris"}\n')
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Some text about the city number {i} and the river." for i in range(30)))
    config = tmp_path / "cfg.json"
    config.write_text(
        json.dumps(
            {
                "layers": [1, 2],
                "only_known": False,
                "v_num_grad_steps": 2,
                "total_iters": 5,
                "learning_rate": 1e-4,
                "stats_max_length": 64,
            }
        )
    )
    out = tmp_path / "out"
    code = main(
        [
            "wash",
            "--model",
            str(model_dir),
            "--facts",
            str(facts),
            "--out",
            str(out),
            "--config",
            str(config),
            "--corpus",
            str(corpus),
        ]
    )
    assert code == 0
    assert (out / "deltas.safetensors").is_file() and (out / "report.json").is_file()
    assert json.loads((out / "report.json").read_text())["n_facts"] == 1
    # a second run refuses to overwrite, with exit code 2 and a clear message
    code = main(
        [
            "wash",
            "--model",
            str(model_dir),
            "--facts",
            str(facts),
            "--out",
            str(out),
            "--config",
            str(config),
            "--corpus",
            str(corpus),
        ]
    )
    assert code == 2
    assert "not empty" in capsys.readouterr().err


def test_bad_facts_file_is_reported(tmp_path, capsys):
    facts = tmp_path / "bad.jsonl"
    facts.write_text('{"subject": "France", "prompt": "The capital of France is", "object": "Paris"}\n')
    assert (
        main(["wash", "--model", str(tmp_path / "missing"), "--facts", str(facts), "--out", str(tmp_path / "o")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"TEST_COMMAND='([^']+)'", ci).group(1)
    readme = (ROOT / "README.md").read_text()
    assert command in readme
    demo = re.findall(r"```bash\n(.+?)\n```", readme)[0]
    assert demo.endswith("law-fast demo")


def test_wash_checks_out_before_any_work(tiny_dir, tmp_path, tiny_tokenizer, capsys, monkeypatch):

    import law_fast.washing.api as api

    model_dir = tiny_dir
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"subject": "France", "prompt": "The capital of {} is", "object": "Paris"}\n')

    def no_wash(*args, **kwargs):
        raise AssertionError("the wash ran although --out was unusable")

    monkeypatch.setattr(api, "wash", no_wash)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    for out, overwrite, message in (
        (a_file, False, "is a file"),
        (foreign, False, "not empty"),
        (foreign, True, "not a law_fast result"),
        (model_dir, True, "is or holds the model's source"),
        (tmp_path, True, "is or holds the model's source"),
    ):
        argv = ["wash", "--model", str(model_dir), "--facts", str(facts), "--out", str(out)]
        assert main(argv + (["--overwrite"] if overwrite else [])) == 2
        assert message in capsys.readouterr().err
    assert (foreign / "keep.txt").read_text() == "mine" and (model_dir / "config.json").is_file()


@pytest.mark.parametrize("layers", ["3-1", "", "4-", "a-b", "1-2-3", "1,,2"])
def test_bad_layers_name_the_argument(layers, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stats", "--layers", layers])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --layers" in err and "Traceback" not in err


@pytest.mark.parametrize(("argument", "value"), [("--samples", "0"), ("--batch-tokens", "-1"), ("--max-length", "x")])
def test_bad_counts_name_the_argument(argument, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stats", "--layers", "1", argument, value])
    assert exit_.value.code == 2 and f"argument {argument}" in capsys.readouterr().err


def test_errors_are_one_line_without_traceback(tiny_dir, tmp_path, tiny_tokenizer, capsys, monkeypatch):

    model_dir = tiny_dir
    (tmp_path / "cfg").mkdir()
    (model_dir / "broken").mkdir()
    (model_dir / "broken" / "config.json").write_text("{ not json")
    for argv, message in (
        (["wash", "--model", str(model_dir), "--facts", str(tmp_path), "--out", str(tmp_path / "o")], str(tmp_path)),
        (["stats", "--model", str(model_dir), "--layers", "1", "--corpus", str(tmp_path / "cfg")], "cfg"),
        (["eval", "--model", str(model_dir / "broken"), "--corpus", str(tmp_path / "cfg")], "broken"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("law-fast")]  # besides progress bars
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("LAW_FAST_CACHE", str(not_a_folder))
    assert main(["stats", "--model", str(model_dir), "--layers", "1"]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "LAW_FAST_CACHE" in err


def test_a_wash_that_washes_nothing_says_so(tiny_dir, tmp_path, tiny_tokenizer, capsys):

    model_dir = tiny_dir
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"subject": "France", "prompt": "The capital of {} is", "object": "Paris"}\n')
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"The river {i} runs through the city of London." for i in range(20)))
    argv = [
        "wash",
        "--model",
        str(model_dir),
        "--facts",
        str(facts),
        "--out",
        str(tmp_path / "o"),
        "--layers",
        "1",
        "--corpus",
        str(corpus),
    ]
    assert main(argv) == 2  # a random model knows nothing
    assert "none of the 1 facts is produced by the model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(argv + ["--allow-nothing"]) == 0 and (tmp_path / "o" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(argv + ["--all-facts", "--overwrite"]) == 0  # washed although not produced
    assert json.loads((tmp_path / "o" / "report.json").read_text())["n_washed_requests"] == 1


def test_stats_exported_for_memit_and_read_back_by_wash(tiny_dir, tmp_path, capsys):
    """`law-fast stats --export-dir` writes the clients' .npz files; `law-fast wash --stats-file DIR` uses
    them (one per edited layer, matched by module name) instead of computing statistics."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Some text about the city number {i} and the river." for i in range(30)))
    stats_dir = tmp_path / "data" / "stats"
    argv = ["stats", "--model", str(tiny_dir), "--corpus", str(corpus), "--layers", "1,2", "--max-length", "64"]
    assert main([*argv, "--no-cache", "--export-dir", str(stats_dir), "--export-dtype", "float64"]) == 0
    name = str(tiny_dir).replace("/", "_")
    folder = stats_dir / name / "wikipedia_stats"
    assert sorted(p.name for p in folder.iterdir()) == [
        "transformer.h.1.mlp.c_proj_float64_mom2.npz",
        "transformer.h.2.mlp.c_proj_float64_mom2.npz",
    ]
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"subject": "France", "prompt": "The capital of {} is", "object": "Paris"}\n')
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"layers": [1, 2], "only_known": False, "v_num_grad_steps": 2}))
    wash = ["wash", "--model", str(tiny_dir), "--facts", str(facts), "--config", str(config), "--method", "memit"]
    assert main([*wash, "--out", str(tmp_path / "o1"), "--stats-file", str(folder)]) == 0
    report = json.loads((tmp_path / "o1" / "report.json").read_text())
    assert report["corpus"]["identity"] == "given statistics"
    code = main(
        [
            *wash,
            "--out",
            str(tmp_path / "o2"),
            "--stats-file",
            str(folder / "transformer.h.1.mlp.c_proj_float64_mom2.npz"),
        ]
    )
    assert code == 2
    assert "layer 2: 0 statistics files named transformer.h.2.mlp.c_proj_*.npz" in capsys.readouterr().err


def test_device_and_dtype_reach_the_model(tiny_dir, tmp_path):
    """--dtype loads the weights so (a half-precision model's edits: tests/hf/test_adapters.py)."""
    import torch

    from law_fast.hf.loading import load_model

    model, _ = load_model(str(tiny_dir), dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not a torch dtype"):
        load_model(str(tiny_dir), dtype="float33")
    out = tmp_path / "s"
    assert (
        main(
            [
                "stats",
                "--model",
                str(tiny_dir),
                "--layers",
                "1",
                "--no-cache",
                "--model-dtype",
                "float64",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    del out
