"""common.debian: downloads through apt-get (faked here: no network in tests) and the
private apt setup of another suite."""

from pathlib import Path

import pytest

from common import debian


class Result:
    def __init__(self, returncode=0, stderr=""):
        self.returncode, self.stdout, self.stderr = returncode, "", stderr


@pytest.fixture
def apt_calls(monkeypatch):
    """Record apt-get calls; ``download`` writes ``pkg_1.0_all.deb`` unless the package
    name starts with ``missing``."""
    calls = []

    def fake(args, cwd):
        calls.append(list(args))
        if args[-1] == "update":
            return Result()
        if args[-1].startswith("missing"):
            return Result(100, "E: Unable to locate package\n")
        (Path(cwd) / f"{args[-1]}_1.0_all.deb").write_bytes(b"!<arch>\n")
        return Result()

    monkeypatch.setattr(debian, "_apt", fake)
    return calls


def test_system_download_needs_no_update(tmp_path, apt_calls):
    assert debian.download("pkg", tmp_path) == tmp_path / "pkg_1.0_all.deb"
    assert apt_calls == [["download", "pkg"]]
    debian.download("pkg", tmp_path)  # already there: apt-get is not run again
    assert len(apt_calls) == 1


def test_failed_download_updates_once_per_state(tmp_path, apt_calls):
    state: dict = {}
    for name in ("missing-a", "missing-b"):
        with pytest.raises(debian.DebianError, match=f"^apt-get download {name} failed: E: Unable to locate"):
            debian.download(name, tmp_path, state=state)
    assert [c[-1] for c in apt_calls] == ["missing-a", "update", "missing-a", "missing-b"]


def test_suite_reads_only_its_private_sources(tmp_path, apt_calls, monkeypatch):
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    monkeypatch.setattr(debian, "SYSTEM_SOURCES", sources)
    debian.download("pkg", tmp_path / "debs", suite="trixie")
    options = apt_calls[0][:-2]
    state = tmp_path / "debs" / "apt-trixie"
    assert f"Dir::Etc::SourceParts={state / 'sources'}" in options
    assert "Dir::Etc::SourceList=/dev/null" in options
    assert f"Dir::State::Lists={state / 'lists'}" in options
    written = (state / "sources" / "trixie.sources").read_text()
    assert "URIs: http://mirror.example/debian\nSuites: trixie\nComponents: main\n" in written


def test_one_package_from_two_suites(tmp_path, apt_calls):
    system = debian.download("pkg", tmp_path)
    bullseye = debian.download("pkg", tmp_path, suite="bullseye")
    assert system == tmp_path / "pkg_1.0_all.deb"
    assert bullseye == tmp_path / "apt-bullseye" / "pkg_1.0_all.deb"
    assert [c[-1] for c in apt_calls] == ["pkg", "pkg"]


def test_mirror_default_without_system_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "SYSTEM_SOURCES", tmp_path / "none.sources")
    assert debian.mirror() == debian.DEFAULT_MIRROR


def test_unpack_failure_is_one_line(tmp_path, capsys, apt_calls):
    assert debian.main(["--dest", str(tmp_path), "pkg"]) == 1  # the fake .deb is no archive
    err = capsys.readouterr().err
    assert err.startswith("error: dpkg-deb -x pkg_1.0_all.deb failed: ") and err.count("\n") == 1
