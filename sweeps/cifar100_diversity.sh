#!/usr/bin/env bash
# Diversity losses (thesis section 6): StarSSE-CE in both modes over alpha {0.00316 .. 0.316} and StarSSE-WO over
# alpha {-31.6 .. 31.6}, with the StarSSE cycles (lr 0.1, 12 epochs); then the table (alpha chosen on validation).
# Model 1 is shared (stage 1).
source "$(dirname "$0")/_cifar100_common.sh"

stage phase1 "phase I of every checkpoint x seed"
for c in $CKPTS; do for s in $SEEDS; do phase1 "$c" "$s"; done; done

stage methods "StarSSE-CE and StarSSE-WO over their alpha grids"
for c in $CKPTS; do
  for s in $SEEDS; do
    common="$PHASE1 $CYCLES --pretrained $(ckpt "$c") --seed $s"
    for mode in all incorrect; do
      for a in 0.00316 0.01 0.0316 0.1 0.316; do
        run $LAUNCH scripts/starsse_ce.py $common --mode "$mode" --alpha "$a" --output_dir "$OUT/starsse_ce/$mode-alpha$a/ckpt$c-seed$s"
      done
    done
    for a in -31.6 -10 -3.16 1 3.16 10 31.6; do
      run $LAUNCH scripts/starsse_wo.py $common --alpha "$a" --output_dir "$OUT/starsse_wo/alpha$a/ckpt$c-seed$s"
    done
  done
done

stage report "the table"
run $PY scripts/report.py "$OUT/starsse_ce" "$OUT/starsse_wo" "$OUT/starsse" --group_by method alpha $SELECT \
    --out "$OUT/report_diversity" --title "Diversity losses (CIFAR-100)"
finish
