"""The small reports beside a machine's benchmark report (``overhead``, ``photo-ensemble``)."""

import json
from pathlib import Path
from typing import Optional

from benchmarks.machine import REPO, machine_slug
from benchmarks.model_source import shown
from common.atomic import atomic_write


def write_side_report(out: Optional[Path], stem: str, result: dict, text: str) -> None:
    """Write ``stem.json`` (``result``) and ``stem.md`` (``text``) into ``out``, by default
    the CPU report folder of ``result["machine"]``, and print ``text`` and where it went."""
    out = out or REPO / "benchmarks" / "reports" / machine_slug(result["machine"], "cpu")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{stem}.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    atomic_write(out / f"{stem}.md", lambda tmp: Path(tmp).write_text(text))
    print(text, end="")
    print(f"written: {shown(out / f'{stem}.md')}")
