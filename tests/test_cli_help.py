"""Every command's ``--help``: the usage line names the command as it is typed."""

import argparse
import importlib
import sys
import tomllib
from pathlib import Path
from typing import Callable, Dict

import pytest

#: module -> how its ``--help`` is reached (``main(argv)`` or ``parse_args(argv)``).
COMMANDS: Dict[str, str] = {
    "runtime.infer": "main",
    "runtime.stream": "main",
    "runtime.video": "main",
    "runtime.cuda_buffers": "main",
    "training.train": "main",
    "training.evaluate": "main",
    "training.average": "main",
    "export.onnx": "main",
    "export.engine": "main",
    "export.verify": "main",
    "export.trt_lint": "main",
    "benchmarks.run": "main",
    "benchmarks.gemm": "main",
    "benchmarks.overhead": "main",
    "benchmarks.photo_ensemble": "main",
    "benchmarks.worker": "parse_args",
}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_usage_line_reads_python_m(module, capsys):
    entry: Callable = getattr(importlib.import_module(module), COMMANDS[module])
    with pytest.raises(SystemExit) as exit_:
        entry(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {module} ")


SCRIPTS: Dict[str, str] = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
    "project"
]["scripts"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_name_themselves(script, monkeypatch, capsys):
    module, function = SCRIPTS[script].split(":")
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/{script}", "--help"])
    with pytest.raises(SystemExit) as exit_:
        getattr(importlib.import_module(module), function)()
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {script} ")


class _Parsed(Exception):
    pass


@pytest.mark.parametrize(
    "module", ["export.engine", "export.onnx", "runtime.infer", "runtime.stream", "runtime.video"]
)
def test_every_option_has_help(module, monkeypatch):
    def capture(parser, *args, **kwargs):
        raise _Parsed(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    entry: Callable = getattr(importlib.import_module(module), COMMANDS[module])
    with pytest.raises(_Parsed) as parsed:
        entry([])
    parser = parsed.value.args[0]
    assert [a.dest for a in parser._actions if not a.help] == []
