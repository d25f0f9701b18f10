#!/usr/bin/env bash
# SSE-RTD / SSE-MSE (thesis section 4): the thesis grids, RTD alpha {0.0316 .. 10} and MSE alpha {0.1 .. 40}, on each
# of stage2, stage3, stage4, stage5 and avgpool alone and on all five together; at the optima (RTD 0.0316, MSE 20, on
# avgpool) also against the pre-trained checkpoint instead of model 1, in cycles 2..M (--reference pretrained) and
# from phase I on (--reference pretrained_phase1, the thesis code's "pretrain" mode: its phase I is its own, trained
# in stage 2); StarSSE-RTD / StarSSE-MSE at their optima (StarSSE-MSE: alpha 10 with cycle lr 0.2 = 4x, as the
# thesis code's scripts/byol_starsse_mse.py). Phase I is shared (stage 1); alpha and layers are chosen on validation.
# Then the table (run cifar100_core.sh for the SSE and StarSSE rows).
source "$(dirname "$0")/_cifar100_common.sh"
LAYER_SETS=("stage2" "stage3" "stage4" "stage5" "avgpool" "stage2 stage3 stage4 stage5 avgpool")

stage phase1 "phase I of every checkpoint x seed"
for c in $CKPTS; do for s in $SEEDS; do phase1 "$c" "$s"; done; done

stage methods "SSE-RTD and SSE-MSE per layer over their alpha grids; references; StarSSE-RTD / StarSSE-MSE"
for c in $CKPTS; do
  for s in $SEEDS; do
    common="$PHASE1 $CYCLES --pretrained $(ckpt "$c") --seed $s"
    for layers in "${LAYER_SETS[@]}"; do
      tag=$([ "$layers" = "${LAYER_SETS[5]}" ] && echo all || echo "$layers")
      for a in 0.0316 0.1 0.316 1 3.16 10; do
        run $LAUNCH scripts/sse_rtd.py $common --layers $layers --similarity rtd --alpha "$a" \
            --output_dir "$OUT/sse_rtd/$tag-alpha$a/ckpt$c-seed$s"
      done
      for a in 0.1 1 10 20 40; do
        run $LAUNCH scripts/sse_rtd.py $common --layers $layers --similarity mse --alpha "$a" \
            --output_dir "$OUT/sse_mse/$tag-alpha$a/ckpt$c-seed$s"
      done
    done
    for ref in pretrained pretrained_phase1; do
      run $LAUNCH scripts/sse_rtd.py $common --layers avgpool --similarity rtd --alpha 0.0316 --reference $ref \
          --output_dir "$OUT/sse_rtd/avgpool-alpha0.0316-$ref/ckpt$c-seed$s"
      run $LAUNCH scripts/sse_rtd.py $common --layers avgpool --similarity mse --alpha 20 --reference $ref \
          --output_dir "$OUT/sse_mse/avgpool-alpha20-$ref/ckpt$c-seed$s"
    done
    run $LAUNCH scripts/sse_rtd.py $common --layers avgpool --star --similarity rtd --alpha 0.0316 \
        --output_dir "$OUT/starsse_rtd/alpha0.0316/ckpt$c-seed$s"
    run $LAUNCH scripts/sse_rtd.py $PHASE1 --members 5 --cycle_lr 0.2 --cycle_epochs 12 --pretrained "$(ckpt "$c")" \
        --seed "$s" --layers avgpool --star --similarity mse --alpha 10 --output_dir "$OUT/starsse_mse/alpha10/ckpt$c-seed$s"
  done
done

stage report "the table"
run $PY scripts/report.py "$OUT/sse_rtd" "$OUT/sse_mse" "$OUT/starsse_rtd" "$OUT/starsse_mse" "$OUT/sse" "$OUT/starsse" \
    --group_by method alpha layers reference $SELECT --out "$OUT/report_similarity" --title "Similarity regularisers (CIFAR-100)"
finish
