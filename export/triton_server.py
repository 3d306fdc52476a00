"""Run the ``tritonserver`` binary that ships inside the ``nvidia-pytriton`` wheel.

    python -m export.triton_server --repo REPO [--http-port 8000] [--grpc-port 8001] [--model deblur]

The wheel (``pip install --no-deps nvidia-pytriton==0.7.0``) holds a full Triton
Inference Server with its Python backend, no ONNX Runtime or TensorRT backend: it
serves the Python-backend ``deblur`` model of a repository written by
``export.triton``. It is launched the way pytriton launches it: its bundled
libraries on ``LD_LIBRARY_PATH``, a backend folder whose ``python`` backend holds
the stub built for this Python, and this interpreter's ``bin`` first on ``PATH``
so that the stub's embedded Python finds this environment's packages. It listens
on 127.0.0.1 only, in its own process group, which ``stop`` ends whole.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

HOST = "127.0.0.1"
_POLL_S = 0.2


class ServerError(RuntimeError):
    """The server is not installed, did not become ready, or exited (one-line message)."""


@dataclass(frozen=True)
class Distribution:
    """Files of the Triton distribution inside the pytriton wheel."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


def find_distribution() -> Distribution:
    """Locate ``tritonserver``, its libraries and the Python-backend stub for this Python.

    Raises:
        ServerError: nvidia-pytriton is not installed, or has no stub for this Python.
    """
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "nvidia-pytriton is not installed (it ships the tritonserver binary): "
            "pip install --no-deps nvidia-pytriton==0.7.0"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    dist = Distribution(
        binary=root / "bin" / "tritonserver",
        libs=root.parent.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for path in (dist.binary, dist.libs, dist.python_backend / "libtriton_python.so", dist.stub):
        if not path.exists():
            raise ServerError(
                f"{path} is missing: this nvidia-pytriton has no tritonserver for "
                f"Python {version} (reinstall nvidia-pytriton==0.7.0)"
            )
    return dist


def backend_folder(dist: Distribution, folder: Path) -> Path:
    """``folder/python``: the Python backend with the stub for this Python, as symlinks."""
    python = folder / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in dist.python_backend.iterdir():
        if item.is_file():
            (python / item.name).symlink_to(item)
    (python / "triton_python_backend_stub").symlink_to(dist.stub)
    return folder


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_env(dist: Distribution) -> dict:
    env = os.environ.copy()
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH"), str(dist.libs)) if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


class TritonServer:
    """A ``tritonserver`` process on loopback ports; a context manager that stops it.

    Args:
        repo: Model repository (``export.triton``).
        models: Models to load (explicit model control); None: every model in ``repo``.
        http_port, grpc_port: None: a free port each.
        log_file: Where the server's output goes. Default: a file in the temp folder.
    """

    def __init__(
        self,
        repo: Path,
        models: Optional[Sequence[str]] = ("deblur",),
        http_port: Optional[int] = None,
        grpc_port: Optional[int] = None,
        log_file: Optional[Path] = None,
    ):
        self.dist = find_distribution()
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise ServerError(f"{repo}: no such model repository (write one with python -m export.triton)")
        self.models = models
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="tritonserver-")
        self.log_file = Path(log_file) if log_file else Path(self._tmp.name) / "server.log"
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        """``host:port`` of the HTTP endpoint, as ``tritonclient.http`` takes it."""
        return f"{HOST}:{self.http_port}"

    def command(self) -> List[str]:
        backends = backend_folder(self.dist, Path(self._tmp.name) / "backends")
        cmd = [
            str(self.dist.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            f"--http-address={HOST}",
            f"--http-port={self.http_port}",
            f"--grpc-address={HOST}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
        ]
        if self.models is not None:
            cmd += ["--model-control-mode=explicit"] + [f"--load-model={m}" for m in self.models]
        return cmd

    def start(self, timeout_s: float = 120.0) -> "TritonServer":
        """Start the server and wait until it and its models are ready."""
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_env(self.dist),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with status {self.process.returncode} "
                    f"before it was ready: {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"tritonserver not ready after {timeout_s:.0f} s: {self.log_tail()}")
            time.sleep(_POLL_S)
        return self

    def ready(self) -> bool:
        """True where ``/v2/health/ready`` answers 200 (server and its models ready)."""
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 5) -> str:
        """The server's error lines (``E<mmdd> ...``, ``error: ...``), else its last lines, on one line."""
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        all_lines = text.strip().splitlines()
        errors = [line for line in all_lines if re.match(r"E\d{4} |error: ", line)]
        return " | ".join((errors or all_lines)[-lines:])

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the whole process group (server and Python-backend stubs), then SIGKILL."""
        if self.process is None:
            return
        pgid = self.process.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.process.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        _kill_group(pgid)
        self.process.wait()
        _wait_group_gone(pgid)
        self.process = None
        self._tmp.cleanup()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of the group (stubs outliving the server)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_group_gone(pgid: int, timeout_s: float = 5.0) -> None:
    """Wait until init has reaped the group's orphans."""
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def group_alive(pgid: int) -> bool:
    """True while any process of group ``pgid`` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.triton_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repo", type=Path, required=True, help="model repository (export.triton)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--model", action="append", help="model to load (repeat); default: deblur")
    args = parser.parse_args(argv)
    # SIGTERM too ends in ``finally``, so the server's process group never outlives this one.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server = TritonServer(args.repo, args.model or ["deblur"], args.http_port, args.grpc_port)
        server.start()
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"serving {args.repo} on http://{server.url} and grpc {HOST}:{server.grpc_port} "
        f"(log: {server.log_file}); Ctrl-C stops it",
        flush=True,
    )
    try:
        assert server.process is not None
        server.process.wait()
        print(f"error: tritonserver exited: {server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
