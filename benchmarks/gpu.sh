#!/usr/bin/env bash
# GPU benchmark in a few minutes, installing nothing: every CUDA path this machine
# can run (PyTorch CUDA FP32/FP16, ONNX Runtime CUDA, TensorRT, torch.compile last);
# the missing ones are reported as skipped with the reason, failures as errors.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        (make bench-gpu)
#   BUDGET=300 PYTHON=python3 bash benchmarks/gpu.sh out/bench-gpu
#
# OUT_DIR defaults to benchmarks/reports/gpu-<name>; extra arguments after OUT_DIR
# go to `python -m benchmarks.run` (e.g. --no-compile, --sizes 512x512,1024x1024).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null; then
    py=.venv/bin/python
else
    py=python3
fi
if ! "$py" -c "import torch, numpy" 2>/dev/null; then
    echo "gpu.sh: $py cannot import torch and numpy; set PYTHON to an interpreter that can" >&2
    exit 1
fi

out_args=()
if [[ $# -gt 0 && "$1" != -* ]]; then
    out_args=(--out "$1")
    shift
fi

exec "$py" -m benchmarks.run --device cuda --budget-seconds "${BUDGET:-180}" \
    --runs "${RUNS:-10}" --warmup 3 --cell-seconds 8 --quality-images 12 "${out_args[@]}" "$@"
