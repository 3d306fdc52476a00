"""Run one backend's worker process and collect its JSON lines, within a deadline."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks.backends import BackendSpec
from benchmarks.machine import REPO

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
#: OpenBLAS kernel / cache overrides that some machines set; unset for the GEMM peak.
BLAS_TUNING_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def child_env(threads: int, unset: Sequence[str] = ()) -> Dict[str, str]:
    """The environment of a worker: every BLAS / OpenMP pool set to ``threads``, the
    variables in ``unset`` removed."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update({k: str(threads) for k in THREAD_ENV})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_module(
    module: str,
    args: List[str],
    threads: int,
    timeout: Optional[float],
    stderr_path: Path,
    on_line: Callable[[dict], None] = lambda _: None,
    unset: Sequence[str] = (),
) -> Tuple[List[dict], Optional[str]]:
    """Run ``python -m module args``, parsing each stdout line that is a JSON object
    (environment: ``child_env(threads, unset)``).

    Returns:
        (the parsed lines, None or why the process ended badly: time-out, signal,
        non-zero exit with the last line of its stderr).
    """
    lines: List[dict] = []
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
            env=child_env(threads, unset),
        )
        timer = threading.Timer(timeout, proc.kill) if timeout is not None else None
        if timer:
            timer.start()
        start = time.monotonic()
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                item = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(item, dict):
                lines.append(item)
                on_line(item)
        proc.wait()
        if timer:
            timer.cancel()
    if proc.returncode == 0:
        return lines, None
    if timeout is not None and time.monotonic() - start >= timeout:
        return lines, f"timed out after {timeout:.0f} s"
    if proc.returncode < 0:
        return lines, f"worker killed by signal {-proc.returncode} (out of memory?)"
    tail = [ln for ln in Path(stderr_path).read_text(errors="replace").splitlines() if ln.strip()]
    return lines, f"worker exited with {proc.returncode}: {tail[-1] if tail else 'no message'}"


def worker_args(
    spec: BackendSpec,
    sizes: List[str],
    checkpoint: Path,
    bundle: Optional[Path],
    work: Path,
    settings: dict,
    validation: Optional[Path],
) -> List[str]:
    """Command-line of ``benchmarks.worker`` for one backend."""
    args = [
        "--backend",
        spec.name,
        "--checkpoint",
        str(checkpoint),
        "--inputs",
        str(work),
        "--out",
        str(work),
        "--sizes",
        ",".join(sizes),
        "--runs",
        str(settings["runs"]),
        "--warmup",
        str(settings["warmup"]),
        "--threads",
        str(settings["threads"]),
        "--cell-seconds",
        str(settings["cell_seconds"]),
    ]
    if bundle is not None:
        args += ["--bundle", str(bundle)]
    if validation is not None:
        args += ["--quality", str(validation)]
    return args
