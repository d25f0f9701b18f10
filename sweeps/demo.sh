#!/usr/bin/env bash
# The main job on the embedded default (scikit-learn digits, CPU): pre-training, then Local DE, Global DE, SSE,
# StarSSE, SSE-RTD, SSE-MSE, frozen-stage StarSSE, StarSSE-CE and StarSSE-WO with 2 runs each and a from-scratch
# baseline, then the results table. `make demo` runs it.
#
# The paper's protocol at CPU size: each run r in {0, 1} fine-tunes pre-trained checkpoint r with seed r
# (the thesis uses 2 checkpoints x 3 seeds); Global DE fine-tunes the 4 checkpoints once each.
# Everything is cached and resumable: re-running skips finished members.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/demo}
CACHE=${CACHE:-runs/cache}
M=4                                   # ensemble size
RUNS="0 1"
COMMON="--dataset digits --members $M --cache_dir $CACHE --quiet"
ckpt() { echo "$CACHE/pretrained/digits-byol-seed$1.safetensors"; }
start=$(date +%s)

echo "== pre-training: 4 independent BYOL checkpoints on the unlabelled digits pool"
for s in 0 1 2 3; do $PY scripts/pretrain.py --seed "$s" --cache_dir "$CACHE"; done

for r in $RUNS; do
  echo "== run $r: checkpoint $r, seed $r"
  $PY scripts/finetune.py --pretrained scratch --members 1 --seed "$r" --cache_dir "$CACHE" --quiet \
      --output_dir "$OUT/scratch/run$r"
  $PY scripts/finetune.py $COMMON --pretrained "$(ckpt "$r")" --seed "$r" --output_dir "$OUT/local_de/run$r"
  $PY scripts/finetune.py $COMMON --pretrained "$(ckpt 0)" "$(ckpt 1)" "$(ckpt 2)" "$(ckpt 3)" --seed "$r" \
      --output_dir "$OUT/global_de/run$r"
  $PY scripts/sse.py $COMMON --pretrained "$(ckpt "$r")" --seed "$r" --output_dir "$OUT/sse/run$r"
  $PY scripts/starsse.py $COMMON --pretrained "$(ckpt "$r")" --seed "$r" --output_dir "$OUT/starsse/run$r"
  # similarity regularisers on the AvgPool output, the thesis' alphas (RTD 0.0316, MSE 20)
  $PY scripts/sse_rtd.py $COMMON --similarity rtd --pretrained "$(ckpt "$r")" --seed "$r" --output_dir "$OUT/sse_rtd/run$r"
  $PY scripts/sse_rtd.py $COMMON --similarity mse --pretrained "$(ckpt "$r")" --seed "$r" --output_dir "$OUT/sse_mse/run$r"
  # frozen-stage StarSSE: cycles 2..M train stage4, stage5 and fc only, at 4x the phase-I lr (thesis optimum x3-x5)
  $PY scripts/starsse.py $COMMON --freeze stage4 --cycle_lr_mult 4 --pretrained "$(ckpt "$r")" --seed "$r" \
      --output_dir "$OUT/starsse_freeze/run$r"
  # diversity losses: StarSSE-CE on the samples member j gets wrong (alpha 0.1) and StarSSE-WO (alpha 10)
  $PY scripts/starsse_ce.py $COMMON --mode incorrect --alpha 0.1 --pretrained "$(ckpt "$r")" --seed "$r" \
      --output_dir "$OUT/starsse_ce/run$r"
  $PY scripts/starsse_wo.py $COMMON --alpha 10 --pretrained "$(ckpt "$r")" --seed "$r" --output_dir "$OUT/starsse_wo/run$r"
done

echo "== results ($(( $(date +%s) - start )) s)"
$PY scripts/report.py "$OUT" --out "$OUT/report" --title "Embedded default: digits, 4 labels per class, resnet_mini"
echo "== analyses: representations, diversity structure, subsets (every thesis figure the demo runs allow)"
$PY scripts/thesis_report.py "$OUT" --subset_size 3 --out "$OUT/thesis_report" --cpu | tail -n 1
