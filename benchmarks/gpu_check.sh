#!/usr/bin/env bash
# Run on a GPU machine from the repo root (about 3 minutes on an H100/H200): the GPU model; ResNet-50 images/s at
# 224 px (fp16 + channels_last) for a bare loop and for lib.train.fit; a short StarSSE run's wall time; the
# frozen-stage step time and memory at 224 px; SSE-RTD / SSE-MSE step cost at batch 256, 224 px; the device data
# pipeline on the GPU against torchvision workers. Each part runs even if an earlier one failed; the exit status
# says whether all passed. PY: the Python to use (default: .venv/bin/python when it exists, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, torchvision, accelerate; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'accelerate', accelerate.__version__)"
failed=0
part() {  # part TITLE COMMAND...: run one part, report its wall time, remember a failure
  echo "== $1"
  local t0=$SECONDS
  shift
  "$@" || { echo "!! FAILED (exit $?): $*"; failed=1; }
  echo "   ($((SECONDS - t0)) s)"
}
part "throughput and StarSSE" $PY benchmarks/gpu_check.py
part "frozen stages (thesis: 0.74 / 0.60 / 0.55 of StarSSE's V100 time)" \
  $PY benchmarks/freeze_epoch_time.py --device cuda --size 224 --batch 128 --fp16
part "SSE-RTD and SSE-MSE step cost" timeout 300 $PY benchmarks/sse_rtd_step_cost.py --device cuda
part "data pipeline on the GPU" $PY benchmarks/data_pipeline.py --device cuda
exit $failed
