"""Which files a run reads and writes: the one output-naming rule, collisions and reruns.

Naming, one rule for every mode: the input ``X.ext`` gives ``X_deblurred.png``
(``.tif`` for float32 TIFF inputs) and, as asked, ``X_defocus.png``,
``X_defocus_raw.tif`` and ``X_compare.png``, all in the input's folder, or in
``--output-dir``. ``-o FILE`` (one input) names the deblurred file; the others are
``FILE-stem_defocus.png`` and so on beside it.

Checked by ``check_plan`` before the model loads, each a one-line ``DeblurError``:

- no output is an input (or the ``--defocus-map`` file): inputs are never overwritten;
- no two inputs share an output name (``x.png`` and ``x.jpg`` in one folder): refused,
  naming both, instead of one output overwriting the other;
- every output folder exists and takes a file (read-only, missing, or a file).

Reruns: a folder's files named like this project's outputs (``*_deblurred``,
``*_defocus``, ``*_defocus_raw``, ``*_compare``) are skipped, with one log line; given by name they
are read like any image. Files of other types in a folder are reported, not silently
skipped.
"""

import logging
import os
import tempfile
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from runtime.errors import DeblurError
from runtime.image_io import EXTENSIONS

log = logging.getLogger("runtime")

OUTPUT_SUFFIX = "_deblurred"
MAP_SUFFIX = "_defocus"
RAW_MAP_SUFFIX = "_defocus_raw"
COMPARE_SUFFIX = "_compare"
OWN_SUFFIXES = (OUTPUT_SUFFIX, MAP_SUFFIX, RAW_MAP_SUFFIX, COMPARE_SUFFIX)
#: Deblurred outputs are .png, or .tif for float32 inputs.
OUTPUT_EXTENSIONS = (".png", ".tif")


def is_own_output(path: Path) -> bool:
    """Whether ``path`` is named like a file this project writes."""
    return path.stem.endswith(OWN_SUFFIXES)


def _names(paths: Sequence[Path], shown: int = 5) -> str:
    return ", ".join(p.name for p in paths[:shown]) + (", ..." if len(paths) > shown else "")


def collect_inputs(paths: Sequence[str]) -> List[Path]:
    """Files as given and the images inside given folders (sorted, not recursive).

    In folders, earlier outputs of this project are skipped, and other file types and
    entries that are not regular files are reported (logged). Missing paths are kept:
    reading them reports the error.
    """
    found: List[Path] = []
    for name in paths:
        path = Path(name)
        if not path.is_dir():
            found.append(path)
            continue
        entries = sorted(p for p in path.iterdir() if not p.name.startswith(".") and not p.is_dir())
        files = [p for p in entries if p.is_file()]
        special = [p for p in entries if not p.is_file()]
        if special:
            log.warning(
                "%s: skipped %d entr%s that %s not regular files (FIFO, device, socket or broken link): %s",
                path,
                len(special),
                "y" if len(special) == 1 else "ies",
                "is" if len(special) == 1 else "are",
                _names(special),
            )
        images = [p for p in files if p.suffix.lower() in EXTENSIONS]
        own = [p for p in images if is_own_output(p)]
        others = [p for p in files if p.suffix.lower() not in EXTENSIONS]
        if own:
            log.info(
                "%s: skipped %d earlier output%s of this tool (%s)",
                path,
                len(own),
                "" if len(own) == 1 else "s",
                ", ".join(f"*{s}" for s in OWN_SUFFIXES),
            )
        if others:
            kinds = sorted({p.suffix.lower() or "no extension" for p in others})
            log.warning(
                "%s: skipped %d file%s of other types (%s): %s; this tool reads %s",
                path,
                len(others),
                "" if len(others) == 1 else "s",
                ", ".join(kinds),
                _names(others),
                ", ".join(EXTENSIONS),
            )
        found.extend(p for p in images if p not in own)
    return found


class OutputPaths(NamedTuple):
    deblurred: Path
    color_map: Path
    raw_map: Path
    comparison: Path


def output_paths(
    src: Path, output: Optional[Path], output_dir: Optional[Path], ext: str = ".png"
) -> OutputPaths:
    """The files of one input; ``ext`` is the deblurred file's extension unless
    ``output`` (``-o``) names the file."""
    if output is not None:
        out, base = output, output.with_name(output.stem)
    else:
        base = (src.parent if output_dir is None else output_dir) / src.stem
        out = Path(f"{base}{OUTPUT_SUFFIX}{ext}")
    return OutputPaths(
        out,
        Path(f"{base}{MAP_SUFFIX}.png"),
        Path(f"{base}{RAW_MAP_SUFFIX}.tif"),
        Path(f"{base}{COMPARE_SUFFIX}.png"),
    )


def _written(
    src: Path,
    output: Optional[Path],
    output_dir: Optional[Path],
    save_map: Optional[str],
    save_comparison: bool,
) -> List[Path]:
    """Every path the run may write for ``src`` (both extensions where the dtype decides)."""
    exts = OUTPUT_EXTENSIONS if output is None else (output.suffix,)
    paths = [output_paths(src, output, output_dir, ext).deblurred for ext in exts]
    files = output_paths(src, output, output_dir)
    wanted = (
        (files.color_map, save_map in ("color", "both")),
        (files.raw_map, save_map in ("raw", "both")),
        (files.comparison, save_comparison),
    )
    return paths + [p for p, asked in wanted if asked]


def _key(path: Path) -> str:
    return os.path.realpath(path)


def check_writable(folder: Path) -> None:
    """Refuse a folder that is missing, not a folder, or does not take a new file."""
    if not folder.exists():
        raise DeblurError(f"output folder {folder} does not exist")
    if not folder.is_dir():
        raise DeblurError(f"output folder {folder} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".defocus-deblur-probe.", dir=folder)
    except OSError as err:
        raise DeblurError(f"cannot write to {folder} ({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def check_plan(
    inputs: Sequence[Path],
    output: Optional[Path],
    output_dir: Optional[Path],
    save_map: Optional[str],
    save_comparison: bool = False,
    defocus_map: Optional[Path] = None,
) -> None:
    """Refuse, before any work, a run that would overwrite an input, write two inputs to
    one name, or write into a folder that cannot take files (see the module docstring)."""
    if output is not None:
        if output.is_dir():
            raise DeblurError(f"-o {output} is a folder: name a file, or use --output-dir")
        if output.suffix.lower() not in EXTENSIONS:
            raise DeblurError(
                f"-o {output}: unknown output format {output.suffix!r} (use {', '.join(EXTENSIONS)})"
            )
    read = {_key(p) for p in inputs if p.exists()}
    if defocus_map is not None:
        read.add(_key(defocus_map))
    owner: Dict[str, Tuple[int, Path]] = {}
    folders: Dict[str, Path] = {}
    for index, src in enumerate(inputs):
        if not src.exists():
            continue
        for path in _written(src, output, output_dir, save_map, save_comparison):
            key = _key(path)
            if key in read:
                raise DeblurError(
                    f"{path} is an input: refusing to overwrite it (name another output, or use --output-dir)"
                )
            first, other = owner.setdefault(key, (index, src))
            if first != index:
                raise DeblurError(
                    f"{other} and {src} would both write {path}: rename one, or "
                    "run them with different --output-dir"
                )
            folders.setdefault(_key(path.parent), path.parent)
    for folder in folders.values():
        check_writable(folder)
