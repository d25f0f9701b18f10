#!/usr/bin/env bash
# Run on a GPU machine from the repo root (about 10 minutes): prints the GPU model, ResNet-50 images/s at 224 px
# (fp16 + channels_last) for a bare loop and for lib.train.fit, and a short StarSSE run's wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY benchmarks/gpu_check.py
