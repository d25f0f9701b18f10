#!/usr/bin/env bash
# Frozen-stage (PEFT) StarSSE, thesis section 5: cycles 2..5 train only the stages from --freeze on, with cycle
# learning rates x1..x6 of the phase-I lr (optimum x3-x5); plus Local DE fine-tuned with frozen stages from the
# start. Each twice: --frozen_bn train (the reference code, whose frozen BatchNorm statistics kept updating: thesis
# table 4.1) and --frozen_bn eval (ours: frozen means frozen), separate rows of the table. Model 1 is the shared
# phase-I model (stage 1). Then the table (with the time fractions against StarSSE; run cifar100_core.sh for its row).
source "$(dirname "$0")/_cifar100_common.sh"

stage phase1 "phase I of every checkpoint x seed"
for c in $CKPTS; do for s in $SEEDS; do phase1 "$c" "$s"; done; done

stage methods "frozen-stage StarSSE (3 freeze levels x 6 lr multipliers) and Local DE, BatchNorm train and eval"
for c in $CKPTS; do
  for s in $SEEDS; do
    for bn in train eval; do
      for f in stage4 stage5 head; do
        for m in 1 2 3 4 5 6; do
          run $LAUNCH scripts/starsse.py $PHASE1 --members 5 --cycle_epochs 12 --freeze "$f" --frozen_bn "$bn" \
              --cycle_lr_mult "$m" --pretrained "$(ckpt "$c")" --seed "$s" \
              --output_dir "$OUT/peft_starsse/$f-x$m-bn_$bn/ckpt$c-seed$s"
        done
        run $LAUNCH scripts/peft_freeze.py $PHASE1 --members 5 --freeze "$f" --frozen_bn "$bn" \
            --pretrained "$(ckpt "$c")" --seed "$s" --output_dir "$OUT/peft_local_de/$f-bn_$bn/ckpt$c-seed$s"
      done
    done
  done
done

stage report "the table"
run $PY scripts/report.py "$OUT/peft_starsse" "$OUT/peft_local_de" "$OUT/starsse" --group_by method cycle_lr frozen_bn \
    $SELECT --out "$OUT/report_peft" --title "Frozen-stage StarSSE and Local DE (CIFAR-100)"
finish
