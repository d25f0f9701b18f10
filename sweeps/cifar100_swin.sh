#!/usr/bin/env bash
# Supervised Swin-T -> CIFAR-100 with the reference code's hyper-parameters (configs/swin/*): phase I 102 epochs,
# AdamW lr 1e-4, weight decay 0.25, linear warm-up from 5e-7 over int(0.1 x 102) = 10 whole epochs (stepped once per
# epoch, then a per-epoch cosine over the other 92: --warmup_granularity epoch), gradient clipping 5.0, label
# smoothing 0.1, Mixup 0.8 / CutMix 1.0, RandAugment rand-m9-mstd0.5-inc1, RandomErasing 0.25, drop-path 0.1, bicubic
# resizing (the model's timm data config), batch 256 with the last short batch dropped (--drop_last), 224 px, test
# Resize 256 + CenterCrop 224 (--test_resize 256; timm's own Swin crop would resize to 248).
# Cycles: the reference code ships cycle lr 1e-4 for 102 epochs (1x the phase-I lr and epochs, configs/swin/
# swin_{sse,starsse}.py) and its Swin scripts sweep the NeurIPS ratio grid (cycle lr {0.25, 0.5, 1, 2, 4} x 1e-4, cycle
# epochs int({0.5, 1, 2, 4} x 102)) on 2 checkpoints x 2 seeds; the paper's Swin optimum could not be read. So: the
# rows Local DE, Global DE (5 checkpoints), SSE and StarSSE at the shipped 1e-4 / 102 over $SWIN_CKPTS x $SEEDS, the
# grid for SSE and StarSSE over $SWIN_CKPTS x $GRID_SEEDS (SWIN_GRID=0 leaves it out; its 1x / 1x point is the rows
# above, not trained twice), then the table with each method's cycle setting selected on validation.
#
#   DATA=/data CKPT_DIR=/ckpts bash sweeps/cifar100_swin.sh            # checkpoints $CKPT_DIR/swin_{1..5}.pth
#   DATA=/data SWIN_PRETRAINED=timm bash sweeps/cifar100_swin.sh       # timm's own ImageNet weights (no Global DE)
source "$(dirname "$0")/_cifar100_common.sh"
SWIN_PRETRAINED=${SWIN_PRETRAINED:-files}   # files: $CKPT_DIR/swin_<k>.pth; timm: the model's timm weights
SWIN_CKPTS=${SWIN_CKPTS:-"1 2"}
GRID_SEEDS=${GRID_SEEDS:-"0 1"}             # the reference's Swin grid: 2 checkpoints x 2 runs
SWIN_GRID=${SWIN_GRID:-1}
swin() { if [ "$SWIN_PRETRAINED" = timm ]; then echo timm; else echo "$CKPT_DIR/swin_$1.pth"; fi; }
[ "$SWIN_PRETRAINED" = timm ] && SWIN_CKPTS=1   # one set of weights
SWIN="--dataset cifar100 --data_dir $DATA --arch timm/swin_tiny_patch4_window7_224 --optimizer adamw --lr 1e-4"
SWIN="$SWIN --weight_decay 0.25 --warmup_epochs 10.2 --warmup_lr 5e-7 --warmup_granularity epoch --clip_grad 5"
SWIN="$SWIN --label_smoothing 0.1 --mixup 0.8 --cutmix 1.0 --augment model --auto_augment rand-m9-mstd0.5-inc1"
SWIN="$SWIN --reprob 0.25 --drop_path 0.1 --data_pipeline torchvision --image_size 224 --test_resize 256"
SWIN="$SWIN --epochs 102 --batch_size 256 --drop_last --mixed_precision $PRECISION"
SWIN="$SWIN --cache_dir $CACHE$([ "$VAL_SPLIT" = none ] || echo " --val_split $VAL_SPLIT")"
SWIN_CYCLES="--members 5 --cycle_lr 1e-4 --cycle_epochs 102"   # the reference code's configs/swin/swin_{sse,starsse}.py
seeds=$(printf '%s\n' $SEEDS $([ "$SWIN_GRID" = 0 ] || echo $GRID_SEEDS) | sort -nu | tr '\n' ' ')

stage phase1 "phase I of every Swin checkpoint x seed"
for c in $SWIN_CKPTS; do
  for s in $seeds; do
    run $LAUNCH scripts/finetune.py $SWIN --pretrained "$(swin "$c")" --seed "$s" \
        --output_dir "$(phase1_dir "$CACHE" "swin-ckpt$c-seed$s" $SWIN "$(swin "$c")")"
  done
done

stage methods "Local DE, Global DE, SSE and StarSSE; the SSE / StarSSE cycle grid"
for c in $SWIN_CKPTS; do
  for s in $SEEDS; do
    run $LAUNCH scripts/finetune.py $SWIN --members 5 --pretrained "$(swin "$c")" --seed "$s" --output_dir "$OUT/swin/local_de/ckpt$c-seed$s"
    run $LAUNCH scripts/sse.py      $SWIN $SWIN_CYCLES --pretrained "$(swin "$c")" --seed "$s" --output_dir "$OUT/swin/sse/ckpt$c-seed$s"
    run $LAUNCH scripts/starsse.py  $SWIN $SWIN_CYCLES --pretrained "$(swin "$c")" --seed "$s" --output_dir "$OUT/swin/starsse/ckpt$c-seed$s"
  done
done
if [ "$SWIN_PRETRAINED" = timm ]; then
  echo "Global DE skipped: timm's weights are one checkpoint" >&2
else
  global_de "$SWIN" "$OUT/swin/global_de" "$(swin 1)" "$(swin 2)" "$(swin 3)" "$(swin 4)" "$(swin 5)"
fi
if [ "$SWIN_GRID" != 0 ]; then
  for c in $SWIN_CKPTS; do
    for s in $GRID_SEEDS; do
      for lr_ratio in 0.25 0.5 1 2 4; do
        for ep_ratio in 0.5 1 2 4; do
          [ "$lr_ratio $ep_ratio" = "1 1" ] && continue  # the shipped setting: the SSE / StarSSE rows above
          clr=$(awk "BEGIN{print 1e-4 * $lr_ratio}"); cep=$(awk "BEGIN{print int(102 * $ep_ratio)}")
          for algo in sse starsse; do
            run $LAUNCH scripts/$algo.py $SWIN --members 5 --cycle_lr "$clr" --cycle_epochs "$cep" \
                --pretrained "$(swin "$c")" --seed "$s" \
                --output_dir "$OUT/swin/grid/$algo-lr${lr_ratio}x-ep${ep_ratio}x/ckpt$c-seed$s"
          done
        done
      done
    done
  done
fi

stage report "the table"
run $PY scripts/report.py "$OUT/swin" $SELECT --out "$OUT/report_swin" \
    --title "Swin-T -> CIFAR-100, ensembles of 5 (SSE / StarSSE: each cycle setting a row$([ -z "$SELECT" ] || echo ", one selected on validation"))"
finish
