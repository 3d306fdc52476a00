"""Bounded load test of the Triton ``deblur`` model, from a client process of its own.

    python -m benchmarks.triton_load [--requests 8] [--sizes 512 1024] [--concurrency 1 2 4]

Writes a model repository of the bundle (``export.triton``), starts the
``tritonserver`` of nvidia-pytriton on 127.0.0.1 (``export.triton_server``), and
sends ``--requests`` uint8 images per (size, concurrency) cell from this process,
one ``tritonclient.http`` client per concurrent sender. Reports throughput, p50 /
p99 latency, failed or lost requests (every reply's shape and dtype is checked) and
the resident memory of the server's processes after each cell, in
``benchmarks/reports/<machine>/triton_load.{md,json}``. Figures, not assertions:
exit status 1 only where a request failed or was lost.
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional

import numpy as np
import psutil
from tqdm import tqdm

from benchmarks.machine import describe_machine, git_commit, machine_slug
from common.atomic import atomic_write
from export import triton
from export.triton_server import TritonServer
from runtime.bundle import DEFAULT_BUNDLE

REPORTS = Path(__file__).resolve().parent / "reports"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.triton_load", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--requests", type=int, default=8, help="requests per cell")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="square image sides")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--instances", type=int, default=2, help="deblur model instances")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per instance")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/<machine>)")
    args = parser.parse_args(argv)
    for name in ("requests", "instances", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if min(args.sizes + args.concurrency) < 1:
        parser.error("--sizes and --concurrency must be >= 1")
    return args


def _request(url: str, image: np.ndarray, local: threading.local) -> float:
    """One inference; returns its latency in seconds. Raises on a bad or missing reply."""
    import tritonclient.http as httpclient

    if not hasattr(local, "client"):
        local.client = httpclient.InferenceServerClient(url, network_timeout=600.0)
    inp = httpclient.InferInput("image_uint8", list(image.shape), "UINT8")
    inp.set_data_from_numpy(image)
    start = time.perf_counter()
    result = local.client.infer("deblur", [inp])
    latency = time.perf_counter() - start
    sharp = result.as_numpy("deblurred_uint8")
    if sharp is None or sharp.shape != image.shape or sharp.dtype != np.uint8:
        raise RuntimeError(f"bad reply: {None if sharp is None else (sharp.shape, sharp.dtype)}")
    return latency


def server_rss_mib(pid: int) -> float:
    """Resident memory of the server and its Python-backend stubs."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root] + root.children(recursive=True)) / 2**20


def run_cell(server: TritonServer, image: np.ndarray, concurrency: int, requests: int, bar: tqdm) -> dict:
    local = threading.local()
    latencies: List[float] = []
    errors: List[str] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(_request, server.url, image, local) for _ in range(requests)]
        for future in futures:
            try:
                latencies.append(future.result())
            except Exception as err:  # noqa: BLE001  (every failure is counted and reported)
                errors.append(str(err).splitlines()[0])
            bar.update()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    assert server.process is not None
    return {
        "size": image.shape[0],
        "concurrency": concurrency,
        "requests": requests,
        "ok": len(latencies),
        "failed": len(errors),
        "lost": requests - len(latencies) - len(errors),
        "errors": errors[:3],
        "wall_s": wall,
        "throughput_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "server_rss_mib": server_rss_mib(server.process.pid),
        "loadavg_1min": os.getloadavg()[0],
    }


def served_backend(log: str) -> str:
    """What the deblur model logged it runs (``export/triton_model.py``), e.g. its backend."""
    marker = "deblur: runtime "
    line = next((line for line in log.splitlines() if marker in line), None)
    return "unknown" if line is None else line.split(marker, 1)[1].split(", ", 1)[-1].rstrip('"')


def _image(side: int) -> np.ndarray:
    rng = np.random.default_rng(side)
    return (rng.random((side, side, 3)) * 255).astype(np.uint8)


def report_markdown(results: dict) -> str:
    rows = [
        "| size | concurrency | requests | ok | failed / lost | throughput (img/s) | p50 (ms) "
        "| p99 (ms) | server RSS (MiB) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["cells"]:
        rows.append(
            f"| {c['size']}x{c['size']} | {c['concurrency']} | {c['requests']} | {c['ok']} | "
            f"{c['failed']} / {c['lost']} | {c['throughput_per_s']:.3f} | {c['p50_ms']:.0f} | "
            f"{c['p99_ms']:.0f} | {c['server_rss_mib']:.0f} | {c['loadavg_1min']:.1f} |"
        )
    m = results["machine"]
    return "\n".join(
        [
            "# Triton load test (`python -m benchmarks.triton_load`)",
            "",
            f"Commit {results['commit']}, {results['date']}; {m['cpu']}, {results['instances']} `deblur` "
            f"instances x {results['threads']} runtime thread(s), runtime defaults otherwise "
            f"(the model logged: {results['backend']}). Server: the tritonserver of nvidia-pytriton 0.7.0 on "
            "127.0.0.1; client: this process, one tritonclient.http client per concurrent sender.",
            "",
            "**Measured under load**: this machine was shared with a model training run and other "
            "jobs (1-minute load average in the table), so the absolute figures are slow and vary "
            "by tens of percent; compare cells of one run only. Latency is per request, from send "
            "to reply; throughput is completed requests over the cell's wall time.",
            "",
            *rows,
            "",
            f"Requests sent: {results['sent']}, failed: {results['failed']}, lost: {results['lost']}. "
            "Server RSS (server + Python-backend stubs) is read after each cell: growth across "
            "cells of one size would be memory kept per request.",
            "",
        ]
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    machine = describe_machine(args.threads * args.instances)
    out = args.out or REPORTS / machine_slug(machine, "cpu")
    cells = []
    with tempfile.TemporaryDirectory(prefix="triton-load-") as tmp:
        repo = Path(tmp) / "repo"
        if triton.main(
            [
                "--bundle",
                str(args.bundle),
                "--out",
                str(repo),
                "--instances",
                str(args.instances),
                "--threads",
                str(args.threads),
            ]
        ):
            return 1
        with TritonServer(repo) as server:
            total = len(args.sizes) * len(args.concurrency) * args.requests
            with tqdm(total=total, desc="requests", unit="req", disable=None) as bar:
                for side in args.sizes:
                    image = _image(side)
                    for _ in range(args.instances):  # warm each instance (not counted)
                        _request(server.url, image, threading.local())
                    for concurrency in args.concurrency:
                        cells.append(run_cell(server, image, concurrency, args.requests, bar))
            backend = served_backend(server.log_file.read_text(errors="replace"))
    results = {
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine,
        "instances": args.instances,
        "threads": args.threads,
        "backend": backend,
        "cells": cells,
        "sent": sum(c["requests"] for c in cells),
        "failed": sum(c["failed"] for c in cells),
        "lost": sum(c["lost"] for c in cells),
    }
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    atomic_write(out / "triton_load.json", lambda tmp: Path(tmp).write_text(text))
    markdown = report_markdown(results)
    atomic_write(out / "triton_load.md", lambda tmp: Path(tmp).write_text(markdown))
    print(markdown)
    return 1 if results["failed"] or results["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
