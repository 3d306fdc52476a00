"""Atomic file writes: a temporary file in the target's folder, renamed into place.

Readers never see half a file, and a crash leaves the previous file intact.
"""

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Sequence, Tuple

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[str], Any], suffix: str = ".tmp") -> None:
    """Call ``write(tmp_path)``, then rename the result onto ``path``.

    The file gets the usual permissions (0666 minus the umask), not mkstemp's 0600.
    ``suffix`` ends the temporary name: writers that pick a format by extension
    (ffmpeg) get ``path``'s own.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_all([(path, data)])


def atomic_write_all(files: Sequence[Tuple[Path, bytes]]) -> None:
    """Write every file or none: all to temporary files first, then all renamed.

    On any error or interrupt the temporary files, and the files already renamed, are
    removed, so a set that failed (an image and its defocus maps) leaves nothing.
    """
    temps: List[Tuple[str, Path]] = []
    renamed: List[Path] = []
    try:
        for path, data in files:
            path = Path(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_UMASK)
        for tmp, path in temps:
            os.replace(tmp, path)
            renamed.append(path)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        for path in renamed:
            path.unlink(missing_ok=True)
        raise
