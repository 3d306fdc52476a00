"""Runtime overhead: the share of ``Deblurrer.run`` spent outside the graph calls.

    python -m benchmarks.overhead [--bundle models/default] [--sizes 1024x1024,3840x2160]
                                  [--rounds 3] [--threads N] [--backend auto] [--out DIR]

Every graph call of the tiled pipeline (estimate, condition, restore: the backend's
``run``, including its own input and output copies) is timed; the rest of
``Deblurrer.run`` is the runtime's overhead: validation, padding, dtype conversion,
tile extraction, blending, clipping. One warm-up call per size compiles the graphs.
Writes ``overhead.json`` and ``overhead.md`` beside the benchmark report of this
machine (``benchmarks/reports/<machine>/``) unless ``--out`` says otherwise.
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from benchmarks.inputs import parse_sizes, size_label, synthetic_image
from benchmarks.machine import REPO, describe_machine, usable_cpus
from benchmarks.model_source import shown
from benchmarks.side_report import write_side_report
from runtime import DeblurError, Deblurrer

DEFAULT_SIZES = "1024x1024,3840x2160"
#: Issue 16's target: time outside the graph calls <= 10% of the total.
TARGET_SHARE = 0.10


class GraphTimer:
    """Wraps a backend's ``run(graph, inputs)`` and adds up the seconds spent in it."""

    def __init__(self, run: Callable):
        self.run = run
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, graph: str, inputs: dict) -> dict:
        start = time.perf_counter()
        try:
            return self.run(graph, inputs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def measure(deblurrer: Deblurrer, width: int, height: int, rounds: int) -> Dict:
    """Median total and graph time of ``rounds`` calls (after one warm-up) on a synthetic image.

    Returns:
        ``total_ms``, ``graph_ms``, ``outside_ms`` (medians over the rounds of each
        call's figures), ``share`` (outside / total of the median call), ``graph_calls``
        per image and ``rounds``.
    """
    timer = GraphTimer(deblurrer.pipeline.run)
    deblurrer.pipeline.run = timer
    image = synthetic_image(width, height)
    deblurrer.run(image)
    calls: List[tuple] = []
    for _ in range(rounds):
        timer.seconds, timer.calls = 0.0, 0
        start = time.perf_counter()
        deblurrer.run(image)
        calls.append((time.perf_counter() - start, timer.seconds, timer.calls))
    total, graph, count = sorted(calls)[len(calls) // 2]
    return {
        "total_ms": total * 1e3,
        "graph_ms": graph * 1e3,
        "outside_ms": (total - graph) * 1e3,
        "share": (total - graph) / total,
        "graph_calls": count,
        "rounds": rounds,
    }


def markdown(result: Dict) -> str:
    """The result as a short Markdown report."""
    machine = result["machine"]
    lines = [
        "# Runtime overhead: time outside the graph calls",
        "",
        f"Bundle {result['bundle']}, backend {result['backend']}, {result['threads']} threads; "
        f"CPU {machine['cpu']} ({', '.join(machine['cpu_features']) or 'no listed features'}); "
        f"commit {machine['git_commit']}. Median call of {result['rounds']} after one warm-up "
        "(`python -m benchmarks.overhead`).",
        "",
        "| size | total ms | in graph calls ms | outside ms | share outside | target <= 10% |",
        "|---|---|---|---|---|---|",
    ]
    for size, row in result["sizes"].items():
        verdict = "met" if row["share"] <= TARGET_SHARE else "**missed**"
        lines.append(
            f"| {size} | {row['total_ms']:.0f} | {row['graph_ms']:.0f} | {row['outside_ms']:.0f} | "
            f"{row['share']:.1%} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"WxH list (default {DEFAULT_SIZES})")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per size (default 3)")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--backend", default="auto", help="runtime backend (default auto)")
    parser.add_argument("--out", type=Path, help="report folder (default: this machine's report folder)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    try:
        sizes = parse_sizes(args.sizes)
        with Deblurrer(args.bundle, backend=args.backend, device="cpu", threads=args.threads) as deblurrer:
            rows = {size_label(w, h): measure(deblurrer, w, h, args.rounds) for w, h in sizes}
            backend = deblurrer.describe()
    except (ValueError, DeblurError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    machine = describe_machine(args.threads)
    result = {
        "bundle": shown(args.bundle),
        "backend": backend,
        "threads": args.threads,
        "rounds": args.rounds,
        "machine": machine,
        "sizes": rows,
    }
    write_side_report(args.out, "overhead", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
