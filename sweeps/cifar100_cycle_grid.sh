#!/usr/bin/env bash
# The NeurIPS paper's cycle grid for SSE and StarSSE: cycle lr in {0.25, 0.5, 1, 2, 4} x phase-I lr and cycle
# epochs in {0.5, 1, 2, 4} x phase-I epochs (local / optimal / semi-local regimes). Phase I is trained once.
source "$(dirname "$0")/_cifar100_common.sh"

for c in $CKPTS; do
  for s in ${GRID_SEEDS:-0 1}; do
    for lr_ratio in 0.25 0.5 1 2 4; do
      for ep_ratio in 0.5 1 2 4; do
        clr=$(awk "BEGIN{print 0.05 * $lr_ratio}"); cep=$(awk "BEGIN{print int(25 * $ep_ratio)}")
        for algo in sse starsse; do
          $LAUNCH scripts/$algo.py $PHASE1 --members 5 --cycle_lr "$clr" --cycle_epochs "$cep" \
              --pretrained "$(ckpt "$c")" --seed "$s" --output_dir "$OUT/grid/$algo-lr${lr_ratio}x-ep${ep_ratio}x/ckpt$c-seed$s"
        done
      done
    done
  done
done
$PY scripts/report.py "$OUT/grid" --group_by method cycle_lr cycle_epochs --out "$OUT/report_grid" \
    --title "SSE / StarSSE cycle grid (CIFAR-100)"
