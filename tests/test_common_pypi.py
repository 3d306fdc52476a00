"""common.pypi: releases fetched through ``pip download`` (faked here: no network in
tests) and their archives unpacked safely."""

import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from common import pypi


def wheel(path: Path, files: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for name, data in files.items():
            zipped.writestr(name, data)
    return path


def sdist(path: Path, files: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def pip_calls(monkeypatch):
    """Record pip commands; a download writes ``NAME-VERSION`` + the kind's extension
    into ``--dest`` unless the name starts with ``missing``."""
    calls = []

    def fake(command, capture_output, text):
        calls.append(command)
        requirement, dest = command[-1], Path(command[command.index("--dest") + 1])
        if requirement.startswith("missing"):
            return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found\n")
        name, version = pypi.pinned(requirement)
        wheel_kind = "--only-binary=:all:" in command
        suffix = "-py3-none-any.whl" if wheel_kind else ".tar.gz"
        (dest / f"{name.replace('-', '_') if wheel_kind else name}-{version}{suffix}").write_bytes(b"x")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(pypi.subprocess, "run", fake)
    return calls


@pytest.mark.parametrize(
    "kind, flag, name",
    [
        ("wheel", "--only-binary=:all:", "pkg_x-1.0-py3-none-any.whl"),
        ("sdist", "--no-binary=:all:", "pkg-x-1.0.tar.gz"),
    ],
)
def test_download_asks_pip_for_one_archive_once(tmp_path, pip_calls, kind, flag, name):
    archive = pypi.download("pkg-x==1.0", tmp_path, kind)
    assert archive == tmp_path / f"pkg-x-1.0-{kind}" / name
    assert len(pip_calls) == 1 and flag in pip_calls[0] and "--no-deps" in pip_calls[0]
    assert pypi.download("pkg-x==1.0", tmp_path, kind) == archive  # there: pip is not run again
    assert len(pip_calls) == 1


def test_failed_download_says_why(tmp_path, pip_calls):
    message = r"^pip download missing==1.0 \(wheel\) failed: ERROR: No matching distribution found$"
    with pytest.raises(pypi.PyPIError, match=message):
        pypi.download("missing==1.0", tmp_path)


@pytest.mark.parametrize("requirement", ["pkg", "pkg>=1.0", "pkg==1.*", "==1.0", "pkg==", "pkg==1.0,<2"])
def test_unpinned_requirements_refused(tmp_path, pip_calls, requirement):
    with pytest.raises(pypi.PyPIError, match="must pin one version: NAME==VERSION"):
        pypi.download(requirement, tmp_path)
    assert pip_calls == []


def test_unknown_kind_refused(tmp_path, pip_calls):
    with pytest.raises(pypi.PyPIError, match="unknown archive kind 'egg'"):
        pypi.download("pkg==1.0", tmp_path, "egg")


@pytest.mark.parametrize("make, name", [(wheel, "pkg-1.0-py3-none-any.whl"), (sdist, "pkg-1.0.tar.gz")])
def test_unpack_replaces_the_folder(tmp_path, make, name):
    archive = make(tmp_path / name, {"pkg/images/a.jpg": b"jpeg", "pkg/__init__.py": b""})
    target = tmp_path / "raw" / "pkg"
    (target / "old").mkdir(parents=True)
    pypi.unpack(archive, target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        "pkg", "pkg/__init__.py", "pkg/images", "pkg/images/a.jpg"
    ]  # fmt: skip
    assert (target / "pkg/images/a.jpg").read_bytes() == b"jpeg"
    assert sorted(p.name for p in target.parent.iterdir()) == ["pkg"]  # no staging folder left


def test_unsafe_sdist_refused_and_nothing_left(tmp_path):
    archive = sdist(tmp_path / "evil-1.0.tar.gz", {"../outside.txt": b"escape"})
    with pytest.raises(pypi.PyPIError, match="^cannot unpack evil-1.0.tar.gz: "):
        pypi.unpack(archive, tmp_path / "raw" / "evil")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "raw" / "outside.txt").exists()
    assert list((tmp_path / "raw").iterdir()) == []


@pytest.mark.parametrize("name", ["pkg-1.0-py3-none-any.whl", "pkg-1.0.tar.gz"])
def test_corrupt_archive_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"not an archive")
    with pytest.raises(pypi.PyPIError, match=f"^cannot unpack {name}: "):
        pypi.unpack(tmp_path / name, tmp_path / "raw" / "pkg")


def test_unknown_archive_refused(tmp_path):
    with pytest.raises(pypi.PyPIError, match="pkg-1.0.egg: not a wheel, .zip or .tar.gz"):
        pypi.unpack(tmp_path / "pkg-1.0.egg", tmp_path / "raw")
