"""mypy against the installed ``tensorrt-stubs``, which mypy cannot read as shipped.

    python -m tools.typecheck runtime export [more files or folders]

tensorrt-stubs 10.13.0.35.1 puts ``.pyi`` files into ``site-packages/tensorrt``
without a ``py.typed`` marker (mypy then skips them as untyped), and its
``tensorrt_bindings/tensorrt.pyi`` holds two syntax errors (parameters named
``in``; a parameter without default after defaulted ones). This copies the stubs
into ``<venv>/tensorrt-typings`` with those lines fixed and runs mypy with that
folder on its path; errors inside the stubs themselves are not reported.
"""

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import List, Optional

STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")
CONFIG = """[mypy]
mypy_path = {typings}
warn_unused_ignores = True
cache_dir = {typings}/.mypy_cache
[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
[mypy-tensorrt_libs]
ignore_missing_imports = True
# Packages without type information (no stubs, no py.typed marker).
[mypy-onnxruntime,onnxruntime.*,onnxconverter_common,onnxconverter_common.*,onnxslim,onnxslim.*]
ignore_missing_imports = True
[mypy-polygraphy,polygraphy.*,tqdm,tqdm.*,google.protobuf,google.protobuf.*]
ignore_missing_imports = True
# Followed for their types only: training/ is not part of this check.
[mypy-training,training.*]
follow_imports = silent
"""


def fix_stub(text: str) -> str:
    """Make the TensorRT stub parse: rename ``in`` parameters, default ``channel_axis``."""
    text = re.sub(r"([(,] *)in: ", r"\1in_: ", text)
    return text.replace(
        "power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)"
    )


def prepare(typings: Path) -> Path:
    """Write the fixed stubs and a mypy config into ``typings``; return the config path."""
    site = Path(sysconfig.get_paths()["purelib"])
    for package in STUB_PACKAGES:
        if not (site / package).is_dir():
            raise FileNotFoundError(
                f"{site / package}: tensorrt-stubs is not installed "
                "(pip install --no-deps tensorrt-stubs==10.13.0.35.1)"
            )
        shutil.rmtree(typings / package, ignore_errors=True)
        shutil.copytree(
            site / package, typings / package, ignore=shutil.ignore_patterns("*.py", "*.so", "__pycache__")
        )
    for stub in (typings / "tensorrt_bindings").glob("*.pyi"):
        stub.write_text(fix_stub(stub.read_text()))
    config = typings / "mypy.ini"
    config.write_text(CONFIG.format(typings=typings))
    return config


def main(argv: Optional[List[str]] = None) -> int:
    files = list(sys.argv[1:] if argv is None else argv) or ["runtime", "export", "tools"]
    typings = Path(sys.prefix) / "tensorrt-typings"
    try:
        config = prepare(typings)
    except OSError as exc:
        print(f"typecheck: {exc}", file=sys.stderr)
        return 1
    return subprocess.call([sys.executable, "-m", "mypy", "--config-file", str(config), *files])


if __name__ == "__main__":
    sys.exit(main())
