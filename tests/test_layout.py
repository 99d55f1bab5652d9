"""The package layout (docs/architecture.md): imports run one way, no cycle, old paths still work."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "law_fast"

# the layers of docs/architecture.md: a module may import modules of its own layer or below, never above
LAYERS = {
    "law_fast.kernels": 0,
    "law_fast.ops": 0,
    "law_fast._native": 0,
    "law_fast._moved": 0,
    "law_fast.integrity": 0,
    "law_fast.dist": 0,
    "law_fast.info": 1,
    "law_fast.config": 1,
    "law_fast.facts": 1,
    "law_fast.hf": 1,
    "law_fast.corpus": 2,
    "law_fast.eval": 3,
    "law_fast.washing": 4,
    "law_fast.baselines": 4,
    "law_fast.compat": 5,
    "law_fast.cli": 5,
    "law_fast.__main__": 5,
    "law_fast.testing": 5,
}


def _module_files() -> dict[str, Path]:
    files = {}
    for root, prefix in ((PACKAGE, "law_fast"),):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([prefix, *parts])] = path
    return files


def _imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """Every law_fast module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `from pkg import name`: the module is pkg
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    files = _module_files()
    return {name: _imports(name, path, set(files)) for name, path in files.items()}


def _layer(module: str) -> int:
    for prefix, layer in sorted(LAYERS.items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} has no layer in tests/test_layout.py::LAYERS (add it, and to docs/architecture.md)")


def test_no_import_cycle_inside_the_package():
    graph = _graph()
    assert len(graph) > 30  # the walk found the package
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_imports_run_one_way():
    wrong = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        for target in targets
        if "law_fast" not in (module, target) and _layer(target) > _layer(module)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_cycle_check_can_fail(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("from law_fast import b\n")
    (tmp_path / "b.py").write_text("import law_fast.a\n")
    modules = {"law_fast.a", "law_fast.b"}
    assert _imports("law_fast.a", tmp_path / "a.py", modules) == {"law_fast.b"}
    assert _imports("law_fast.b", tmp_path / "b.py", modules) == {"law_fast.a"}


def test_every_module_has_its_own_logger():
    missing = [
        name
        for name, path in _module_files().items()
        if path.name != "__init__.py" and "getLogger(__name__)" not in path.read_text(encoding="utf-8")
    ]
    assert not missing, f"modules without logging.getLogger(__name__): {missing}"


# old flat module → names users imported from it (each must still resolve, with a DeprecationWarning)
OLD_PATHS = {
    "law_fast.models": (
        "get_adapter",
        "Adapter",
        "capture",
        "run_until",
        "frozen",
        "load_model",
        "cache_dir",
        "model_fingerprint",
        "new_cache",
        "cache_inputs",
    ),
    "law_fast.tokens": ("fill", "encode_at", "padding_side"),
    "law_fast.generation": (
        "greedy_continuations",
        "sample_continuations",
        "context_templates",
        "known_facts",
        "answer_in",
    ),
    "law_fast.pipeline": ("wash", "WashResult"),
    "law_fast.stats": ("layer_stats", "default_corpus", "LayerStats"),
    "law_fast.targets": ("compute_targets", "target_token_ids"),
    "law_fast.keys": ("key_moments", "compute_keys"),
    "law_fast.memit": ("MemitSolver", "choose_lambda", "memit_update"),
    "law_fast.law": ("law_optimize", "LawKernels"),
    "law_fast.evaluation": ("evaluate", "EvalReport", "perplexity", "evaluate_knowledge", "text_table"),
    "law_fast.reasoning": ("loglikelihoods", "run_reasoning", "run_lm_eval", "TASKS"),
    "law_fast.metrics": ("qa_f1", "mean", "answer_in"),
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_import_paths_still_work_with_a_deprecation_warning(old):
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=old.replace(".", r"\.")):
        module = importlib.import_module(old)
    for name in OLD_PATHS[old]:
        assert getattr(module, name) is not None, f"{old}.{name}"
    with pytest.raises(AttributeError, match="moved to"):
        _ = module.no_such_name


def test_the_package_does_not_use_its_deprecated_paths():
    from law_fast._moved import MOVED

    users = [
        f"{module} imports {target}" for module, targets in _graph().items() for target in targets if target in MOVED
    ]
    assert not users, users
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for name in _module_files():
            if name != "law_fast.testing":
                importlib.import_module(name)


def test_public_api_names():
    import law_fast as lf

    assert callable(lf.wash) and callable(lf.evaluate) and callable(lf.load_model) and callable(lf.load_facts)
    import law_fast.washing.stats  # noqa: F401  (importing the subpackage must not shadow the function)

    assert callable(lf.wash)
    assert lf.WashConfig.create(layers=(1,)).layers == (1,)


def test_no_top_level_package_shadows_an_installed_one():
    """Run from the checkout, the repository root is first on sys.path (``python -m pytest``).

    A top-level ``kernels/`` package once shadowed the PyPI ``kernels`` that transformers ≥ 5.25
    imports, and every model load failed (docs/architecture.md).  Nothing importable at the root
    other than ``law_fast`` and ``setup`` may share a name with a module installed elsewhere.
    """
    import importlib.machinery
    import sys

    root = PACKAGE.parent
    names = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    names |= {p.stem for p in root.glob("*.py")}
    elsewhere = [p for p in sys.path if p and Path(p).resolve() != root]
    clashes = {
        name: spec.origin
        for name in sorted(names - {"law_fast", "setup"})
        if (spec := importlib.machinery.PathFinder.find_spec(name, elsewhere)) is not None
    }
    assert not clashes, f"modules at {root} shadow installed ones: {clashes}"
    assert names <= {"law_fast", "setup"}, f"unexpected importable names at the repository root: {sorted(names)}"


def test_transformers_models_import_from_the_repository_root():
    import subprocess
    import sys

    code = "import transformers.models.llama.modeling_llama, law_fast.kernels.law_step"
    done = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
