#!/usr/bin/env bash
# Every GPU figure of docs/performance.md, on one GPU machine, from the repo root. Parts, in order of priority
# (each under its own time guard; PARTS="starsse rtd" runs a subset; a part that fails or runs out of time does not
# stop the others, except smoke; the exit status says whether all passed):
#   smoke       tiny runs of every benchmark on the GPU (~1 min): stops here when one fails, before lent time is spent
#   starsse     a whole paper-size StarSSE (5 members, 25 + 4 x 12 epochs, ResNet-50 224 px, batch 256, fp16, device
#               pipeline) on a CIFAR-100-shaped set: wall time, images/s, time outside training (target < 10 min)
#   rtd         SSE-RTD / SSE-MSE step cost against SSE at batch 256, 224 px: sequential, overlapped, pipelined barcodes
#   speed       lib.training.loop.fit eager vs torch.compile, fp16 vs bf16 (ResNet-50 224 px batch 256), compile time included
#   throughput  lib.training.loop.fit against a bare PyTorch loop; a short StarSSE command's wall time
#   freeze      frozen-stage step time and memory at 224 px
#   pipeline    the device data pipeline on the GPU against torchvision workers
# About 16 minutes in all on an H100/H200 (starsse ~10-11, rtd ~2, speed ~2, the rest ~3).
# PY: the Python to use (default: .venv/bin/python when it exists, else python3). STARSSE_ARGS: extra flags of
# paper_starsse.py, e.g. "--epochs 1 --cycle_epochs 1" (5 epochs, projected to the paper's 73) on a short lease;
# SPEED_ARGS likewise for step_speed.py.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
PARTS=${PARTS:-"smoke starsse rtd speed throughput freeze pipeline"}
STARSSE_ARGS=${STARSSE_ARGS:-}
SPEED_ARGS=${SPEED_ARGS:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, torchvision, accelerate; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'accelerate', accelerate.__version__)"
date -u +"%Y-%m-%d %H:%M UTC"
failed=0
part() {  # part NAME SECONDS TITLE COMMAND...: run one part if selected, under a time guard; report its wall time
  local name=$1 limit=$2 title=$3
  shift 3
  case " $PARTS " in *" $name "*) ;; *) return ;; esac
  echo "== $name: $title (time guard ${limit} s)"
  local t0=$SECONDS
  timeout "$limit" "$@" || { echo "!! $name FAILED or timed out (exit $?): $*"; failed=1; }
  echo "   ($((SECONDS - t0)) s)"
}
part smoke 120 "every benchmark, tiny, on the GPU" bash -c "$PY benchmarks/paper_starsse.py --smoke &&
  $PY benchmarks/sse_rtd_step_cost.py --device cuda --smoke && $PY benchmarks/step_speed.py --device cuda \
  --arch resnet_mini --size 32 --batch 32 --images 256 --variants 'eager fp16' 'eager bf16'"
if [ $failed = 1 ]; then echo "!! smoke failed: nothing else run"; exit 1; fi
part starsse 720 "paper-size StarSSE end to end" $PY benchmarks/paper_starsse.py $STARSSE_ARGS
part rtd 240 "SSE-RTD and SSE-MSE step cost (sequential, overlapped and pipelined barcodes)" \
  $PY benchmarks/sse_rtd_step_cost.py --device cuda
part speed 300 "torch.compile and bf16 against eager fp16" $PY benchmarks/step_speed.py --device cuda $SPEED_ARGS
part throughput 240 "lib.training.loop.fit against a bare loop; a short StarSSE" $PY benchmarks/gpu_check.py
part freeze 180 "frozen stages: per-step time (thesis per-epoch 0.60 / 0.40 / 0.32)" \
  $PY benchmarks/freeze_epoch_time.py --device cuda --size 224 --batch 128 --fp16
part pipeline 120 "data pipeline on the GPU" $PY benchmarks/data_pipeline.py --device cuda
exit $failed
