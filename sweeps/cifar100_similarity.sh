#!/usr/bin/env bash
# SSE-RTD / SSE-MSE (thesis section 4): the thesis grids on the AvgPool output, plus StarSSE-RTD / StarSSE-MSE
# at the optima, then the table. Phase I is reused from the core runs (same cache).
source "$(dirname "$0")/_cifar100_common.sh"

for c in $CKPTS; do
  for s in $SEEDS; do
    common="$PHASE1 $CYCLES --pretrained $(ckpt "$c") --seed $s --layers avgpool"
    for a in 0.0316 0.1 0.316 1 3.16 10; do
      $LAUNCH scripts/sse_rtd.py $common --similarity rtd --alpha "$a" --output_dir "$OUT/sse_rtd/alpha$a/ckpt$c-seed$s"
    done
    for a in 0.1 1 10 20 40; do
      $LAUNCH scripts/sse_rtd.py $common --similarity mse --alpha "$a" --output_dir "$OUT/sse_mse/alpha$a/ckpt$c-seed$s"
    done
    $LAUNCH scripts/sse_rtd.py $common --star --similarity rtd --alpha 0.0316 --output_dir "$OUT/starsse_rtd/alpha0.0316/ckpt$c-seed$s"
    $LAUNCH scripts/sse_rtd.py $common --star --similarity mse --alpha 10 --output_dir "$OUT/starsse_mse/alpha10/ckpt$c-seed$s"
  done
done
$PY scripts/report.py "$OUT/sse_rtd" "$OUT/sse_mse" "$OUT/starsse_rtd" "$OUT/starsse_mse" "$OUT/sse" "$OUT/starsse" \
    --group_by method alpha --out "$OUT/report_similarity" --title "Similarity regularisers (CIFAR-100)"
