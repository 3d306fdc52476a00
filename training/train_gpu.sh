#!/usr/bin/env bash
# Train the default (small) model on one GPU in under 10 minutes. Installs nothing:
# needs python3 with torch (CUDA), opencv, scikit-image, safetensors, tqdm, matplotlib.
#   bash training/train_gpu.sh OUT_DIR [extra training.train arguments]
set -euo pipefail
out=${1:?usage: train_gpu.sh OUT_DIR}
shift
cd "$(dirname "$0")/.."
python3 -m training.train --config configs/small_gpu.toml --out "$out" --device cuda "$@"
