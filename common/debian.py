"""Debian packages fetched without installing anything: ``apt-get download`` + ``dpkg -x``.

A package comes from this machine's apt sources, or, with ``suite``, from another
Debian suite (e.g. ``trixie`` on a bookworm machine) through a private apt setup:
sources, package lists and cache in a folder of ours, the system's apt state untouched.
The mirror is the one this machine already uses (it serves every suite).

    python -m common.debian --dest DIR [--suite trixie] PKG...   # unpacks into DIR/root
"""

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

SYSTEM_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class DebianError(RuntimeError):
    """A package could not be downloaded or unpacked (one-line reason)."""


def _apt(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", *args], cwd=cwd, capture_output=True, text=True)


def mirror() -> str:
    """The first ``URIs:`` of this machine's Debian sources, else deb.debian.org."""
    if SYSTEM_SOURCES.is_file():
        for line in SYSTEM_SOURCES.read_text().splitlines():
            if line.startswith("URIs:") and line.split(":", 1)[1].strip():
                return line.split(":", 1)[1].split()[0]
    return DEFAULT_MIRROR


def suite_options(suite: str, state_dir: Path) -> List[str]:
    """apt-get options that read only ``suite`` (main) and keep its state under ``state_dir``."""
    sources = state_dir / "sources"
    for sub in (sources, state_dir / "lists/partial", state_dir / "cache/archives/partial"):
        sub.mkdir(parents=True, exist_ok=True)
    (sources / f"{suite}.sources").write_text(
        f"Types: deb\nURIs: {mirror()}\nSuites: {suite}\nComponents: main\nSigned-By: {KEYRING}\n"
    )
    return [
        "-o", "Dir::Etc::SourceList=/dev/null",
        "-o", f"Dir::Etc::SourceParts={sources}",
        "-o", f"Dir::State::Lists={state_dir / 'lists'}",
        "-o", f"Dir::Cache={state_dir / 'cache'}",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip


def download(package: str, dest: Path, suite: Optional[str] = None, state: Optional[dict] = None) -> Path:
    """The ``.deb`` of ``package`` in ``dest``, downloaded unless one is there.

    A failed download runs ``apt-get update`` once (per ``state`` dict, shared by the
    calls of one build) and tries again. A ``suite``'s private apt state and its
    ``.deb`` files live in ``dest/apt-<suite>``, so one package can be had from two suites.

    Raises:
        DebianError: the download failed.
    """
    # apt-get runs in the folder: its option paths must not be relative
    folder = (dest / f"apt-{suite}" if suite else dest).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    state = {} if state is None else state
    options = suite_options(suite, folder) if suite else []
    result = _apt([*options, "download", package], folder)
    if result.returncode != 0 and not state.get(suite or "system"):
        state[suite or "system"] = True
        _apt([*options, "update"], folder)
        result = _apt([*options, "download", package], folder)
    found = sorted(folder.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not found:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DebianError(f"apt-get download {package} failed: {last}")
    return found[-1]


def unpack(deb: Path, folder: Path) -> None:
    """``dpkg-deb -x`` ``deb`` into ``folder``.

    Raises:
        DebianError: dpkg-deb failed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        raise DebianError(f"dpkg-deb -x {deb.name} failed: {result.stderr.strip()}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.debian", description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, required=True, help="folder: debs/ and the unpacked root/")
    parser.add_argument("--suite", help="a Debian suite other than this machine's (e.g. trixie)")
    parser.add_argument("packages", nargs="+", metavar="PKG")
    args = parser.parse_args(argv)
    state: dict = {}
    try:
        for package in args.packages:
            unpack(download(package, args.dest / "debs", args.suite, state), args.dest / "root")
    except DebianError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
