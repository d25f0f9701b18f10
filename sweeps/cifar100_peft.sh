#!/usr/bin/env bash
# Frozen-stage (PEFT) StarSSE, thesis section 5: cycles 2..5 train only the stages from --freeze on, with cycle
# learning rates x1..x6 of the phase-I lr (optimum x3-x5); plus Local DE fine-tuned with frozen stages from the
# start. Model 1 is the shared phase-I model. Then the table (with the time fractions against StarSSE).
source "$(dirname "$0")/_cifar100_common.sh"

for c in $CKPTS; do
  for s in $SEEDS; do
    for f in stage4 stage5 head; do
      for m in 1 2 3 4 5 6; do
        $LAUNCH scripts/starsse.py $PHASE1 --members 5 --cycle_epochs 12 --freeze "$f" --cycle_lr_mult "$m" \
            --pretrained "$(ckpt "$c")" --seed "$s" --output_dir "$OUT/peft_starsse/$f-x$m/ckpt$c-seed$s"
      done
      $LAUNCH scripts/peft_freeze.py $PHASE1 --members 5 --freeze "$f" \
          --pretrained "$(ckpt "$c")" --seed "$s" --output_dir "$OUT/peft_local_de/$f/ckpt$c-seed$s"
    done
  done
done
$PY scripts/report.py "$OUT/peft_starsse" "$OUT/peft_local_de" "$OUT/starsse" --group_by method cycle_lr \
    --out "$OUT/report_peft" --title "Frozen-stage StarSSE and Local DE (CIFAR-100)"
