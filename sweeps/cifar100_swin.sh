#!/usr/bin/env bash
# Supervised Swin-T -> CIFAR-100 with the reference code's hyper-parameters (configs/swin/*): phase I 102 epochs,
# AdamW lr 1e-4, weight decay 0.25, linear warm-up over the first 10 % of phase I (10.2 epochs) from 5e-7, gradient
# clipping 5.0, label smoothing 0.1, Mixup 0.8 / CutMix 1.0, RandAugment rand-m9-mstd0.5-inc1, RandomErasing 0.25,
# drop-path 0.1, bicubic resizing (the model's timm data config), batch 256, 224 px. Cycles: the NeurIPS paper's
# relative optimum, 2x the phase-I lr (2e-4) for 0.5x its epochs (51); the reference code ships no Swin cycle setting.
# Rows: Local DE, Global DE (5 checkpoints), SSE and StarSSE (5 members each), then the table.
#
#   DATA=/data CKPT_DIR=/ckpts bash sweeps/cifar100_swin.sh            # checkpoints $CKPT_DIR/swin_{1..5}.pth
#   DATA=/data SWIN_PRETRAINED=timm bash sweeps/cifar100_swin.sh       # timm's own ImageNet weights (no Global DE)
source "$(dirname "$0")/_cifar100_common.sh"
SWIN_PRETRAINED=${SWIN_PRETRAINED:-files}   # files: $CKPT_DIR/swin_<k>.pth; timm: the model's timm weights
SWIN_CKPTS=${SWIN_CKPTS:-"1 2"}
swin() { if [ "$SWIN_PRETRAINED" = timm ]; then echo timm; else echo "$CKPT_DIR/swin_$1.pth"; fi; }
[ "$SWIN_PRETRAINED" = timm ] && SWIN_CKPTS=1   # one set of weights
SWIN="--dataset cifar100 --data_dir $DATA --arch timm/swin_tiny_patch4_window7_224 --optimizer adamw --lr 1e-4"
SWIN="$SWIN --weight_decay 0.25 --warmup_epochs 10.2 --warmup_lr 5e-7 --clip_grad 5 --label_smoothing 0.1 --mixup 0.8"
SWIN="$SWIN --cutmix 1.0 --augment model --auto_augment rand-m9-mstd0.5-inc1 --reprob 0.25 --drop_path 0.1"
SWIN="$SWIN --data_pipeline torchvision --image_size 224 --epochs 102 --batch_size 256 --mixed_precision $PRECISION"
SWIN="$SWIN --cache_dir $CACHE$([ "$VAL_SPLIT" = none ] || echo " --val_split $VAL_SPLIT")"
SWIN_CYCLES="--members 5 --cycle_lr 2e-4 --cycle_epochs 51"

stage phase1 "phase I of every Swin checkpoint x seed"
for c in $SWIN_CKPTS; do
  for s in $SEEDS; do
    run $LAUNCH scripts/finetune.py $SWIN --pretrained "$(swin "$c")" --seed "$s" \
        --output_dir "$(phase1_dir "$CACHE" "swin-ckpt$c-seed$s" $SWIN "$(swin "$c")")"
  done
done

stage methods "Local DE, Global DE, SSE and StarSSE"
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

stage report "the table"
run $PY scripts/report.py "$OUT/swin" $SELECT --out "$OUT/report_swin" --title "Swin-T -> CIFAR-100, ensembles of 5"
finish
