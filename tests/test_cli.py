"""CLI on a tiny saved model; README and CI stay in sync."""

import json
import re
from pathlib import Path

from law_fast.cli import _layers, main

ROOT = Path(__file__).resolve().parents[1]


def test_layers_parser():
    assert _layers("4-8") == (4, 5, 6, 7, 8)
    assert _layers("1,3,5") == (1, 3, 5)
    assert _layers("1-2,7") == (1, 2, 7)


def test_info_prints_backends(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] and "law_fast" in info


def test_wash_command_on_tiny_saved_model(tmp_path, tiny_tokenizer, capsys):
    from conftest import make_tiny_model

    model_dir = tmp_path / "tiny"
    make_tiny_model("gpt2", len(tiny_tokenizer)).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
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


def test_wash_checks_out_before_any_work(tmp_path, tiny_tokenizer, capsys, monkeypatch):
    from conftest import make_tiny_model

    import law_fast.washing.api as api

    model_dir = tmp_path / "tiny"
    make_tiny_model("gpt2", len(tiny_tokenizer)).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
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
