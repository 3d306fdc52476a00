"""The arrows between the packages: training -> export -> runtime, common under all four.

Checked on the source (every import, at module level or inside a function):

- ``common`` imports none of the project's packages and never torch;
- ``training`` imports neither ``runtime`` nor ``export`` (nor ``benchmarks``);
- ``runtime`` imports none of the others (``common`` only) and never torch;
- ``export`` never imports ``benchmarks``;
- ``benchmarks`` imports torch (directly or through ``training``) only inside functions of
  the modules that run PyTorch in their own processes (``BENCHMARK_TORCH``): the workers
  (``runners`` in ``benchmarks.worker``, ``gemm``) and ``benchmarks.prepare``; elsewhere
  only the torch-free ``training.metrics``.

And at run time: importing any ``benchmarks`` module or ``runtime`` imports no torch.
"""

import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "training", "export", "runtime", "benchmarks")
#: package -> top-level modules it must never import.
FORBIDDEN = {
    "common": {"training", "export", "runtime", "benchmarks", "torch"},
    "training": {"runtime", "export", "benchmarks"},
    "runtime": {"training", "export", "benchmarks", "torch"},
    "export": {"benchmarks"},
}
#: benchmarks modules (and why) that import torch or training inside their functions.
BENCHMARK_TORCH = {
    "runners": "the PyTorch runner of benchmarks.worker",
    "gemm": "the GEMM peak worker (run as its own process)",
    "prepare": "the parent's PyTorch steps (stand-in model, model figures, validation images)",
    "photo_ensemble": "renders the held-out photo set (training.data.photo_validation)",
    "train_speed": "times training steps (training.speed), in its own process",
}


def _imports(path: Path) -> Iterator[Tuple[str, int, bool, str]]:
    """(top-level module, line, at module level, full module) of every absolute import."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            yield name.split(".")[0], node.lineno, id(node) in top_level, name


def _sources(package: str) -> Iterator[Path]:
    return (p for p in sorted((ROOT / package).rglob("*.py")) if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_arrows(package):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _sources(package)
        for name, line, _, _ in _imports(path)
        if name in FORBIDDEN[package]
    ]
    assert wrong == []


def test_benchmarks_import_torch_only_where_pytorch_runs():
    wrong = []
    for path in _sources("benchmarks"):
        for name, line, at_module_level, module in _imports(path):
            if name not in ("torch", "training") or module == "training.metrics":
                continue
            if at_module_level and name == "torch" or path.stem not in BENCHMARK_TORCH:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert wrong == []


def test_training_metrics_is_torch_free():
    """``training.metrics``, the one training module benchmarks import anywhere, needs no torch."""
    assert [
        name for name, *_ in _imports(ROOT / "training" / "metrics.py") if name in ("torch", "training")
    ] == []


def test_importing_benchmarks_and_runtime_imports_no_torch():
    modules = ["runtime", "runtime.infer", "runtime.stream"] + [
        f"benchmarks.{p.stem}" for p in _sources("benchmarks") if p.stem != "__init__"
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
