"""Versioned JSON files (bundle manifests, checkpoint configs)."""

import json
from pathlib import Path
from typing import Type


def read_versioned_json(path: Path, fmt: str, error: Type[Exception]) -> dict:
    """The JSON object in ``path`` whose ``"format"`` is ``fmt``.

    Raises:
        error: with a one-line message naming the file, for bad JSON or another format.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise error(f"{path}: format is {found!r}, expected {fmt!r}")
    return data
