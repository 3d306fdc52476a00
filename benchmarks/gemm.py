"""The machine's measured matrix-multiply peak: the yardstick for achieved GFLOP/s.

    python -m benchmarks.gemm --device cpu --threads 2

Run in its own process: BLAS reads its thread count from the environment at import
(``benchmarks.run`` sets ``OMP/OPENBLAS/MKL_NUM_THREADS`` and unsets the OpenBLAS
kernel overrides). Prints one JSON line: ``{"fp32_gflops": ..., "n": ..., "repeats": ...}``
(plus ``fp16_gflops`` on CUDA, ``bf16_gflops`` through torch on CPUs with native BF16).
"""

import argparse
import json
import sys
import time
from typing import Callable, List, Optional

import numpy as np

from benchmarks.stats import gemm_gflops
from common.cpu import cpu_flags, cpu_has_bf16

CPU_N = 4096
CUDA_N = 8192


def best_time(fn: Callable[[], None], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    """Fastest of ``repeats`` calls after one warm-up, in seconds."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_peak(n: int = CPU_N, repeats: int = 5, threads: Optional[int] = None) -> dict:
    """NumPy (BLAS) float32 ``n x n`` matmul GFLOP/s, best of ``repeats``; where the CPU
    has native BF16, torch's bfloat16 matmul too (``threads``: torch's)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    out = np.empty_like(a)
    seconds = best_time(lambda: np.matmul(a, b, out=out), repeats)
    result = {
        "device": "cpu",
        "library": "numpy",
        "n": n,
        "repeats": repeats,
        "fp32_gflops": gemm_gflops(n, seconds),
    }
    if cpu_has_bf16(cpu_flags()):
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        x, y = (torch.from_numpy(m).to(torch.bfloat16) for m in (a, b))
        result["bf16_gflops"] = gemm_gflops(n, best_time(lambda: torch.matmul(x, y), repeats))
        result["bf16_library"] = f"torch {torch.__version__}"
    return result


def cuda_peak(n: int = CUDA_N, repeats: int = 10) -> dict:
    """torch CUDA ``n x n`` matmul GFLOP/s in FP32 (TF32 off) and FP16, best of ``repeats``."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    result = {
        "device": "cuda",
        "library": f"torch {torch.__version__}",
        "n": n,
        "repeats": repeats,
        "gpu": torch.cuda.get_device_name(),
    }
    for dtype, key in ((torch.float32, "fp32_gflops"), (torch.float16, "fp16_gflops")):
        a = torch.rand(n, n, device="cuda", dtype=dtype)
        b = torch.rand(n, n, device="cuda", dtype=dtype)
        result[key] = gemm_gflops(n, best_time(lambda: torch.matmul(a, b), repeats, torch.cuda.synchronize))
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gemm", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (BLAS: from env)")
    parser.add_argument("--n", type=int, default=None, help="matrix size")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        if args.device == "cpu":
            result = cpu_peak(args.n or CPU_N, args.repeats, args.threads)
            result["threads"] = args.threads
        else:
            result = cuda_peak(args.n or CUDA_N, args.repeats)
    except Exception as exc:  # reported, never fatal to the benchmark
        result = {"device": args.device, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
