# Shared settings of the CIFAR-100 sweeps (sourced). The paper's setup: BYOL ResNet-50 -> CIFAR-100,
# phase I 25 epochs, lr 0.05, weight decay 1e-4, SGD momentum 0.9, batch 256, 224 px reference augmentation;
# 5 members; cycles of 12 epochs at lr 0.1 (thesis optimum for SSE and StarSSE).
#
#   DATA=/data/cifar CKPT_DIR=/ckpts bash sweeps/cifar100_core.sh                       # here, one run after another
#   DATA=/data/cifar CKPT_DIR=/ckpts RUNNER=slurm SBATCH_ARGS="-p gpu --gres=gpu:1 -c 8 --mem=64G -t 24:00:00" \
#       bash sweeps/cifar100_core.sh                                                     # one job array per stage
# DATA: folder holding cifar-100-python/. CKPT_DIR: the BYOL checkpoints byol-1000ep-{1..5}.pt of the paper.
# LAUNCH: how to start a script (default: accelerate launch with the single-GPU fp16 config; for several GPUs,
#   LAUNCH="accelerate launch --config_file accelerate_configs/multi_gpu_fp16.yaml --num_processes 8").
# PRECISION: fp16 (default, as the launch config) or no (fp32, as the reference code trained), bf16.
# VAL_SPLIT: 0.1 (default) holds out 5,000 training images (stratified, the same for every run) as validation data,
#   like the reference code's use_test=False: the grids' settings are chosen on it (report.py --select_by val), never
#   on the test set. Every CIFAR-100 sweep uses the same split, so phase I of a checkpoint x seed is shared by all of
#   them. VAL_SPLIT=none trains on all 50,000 images (the thesis' tables).
# CACHE: the phase-I cache (on a shared file system for RUNNER=slurm). Runner settings: sweeps/_runner.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source sweeps/_runner.sh
DATA=${DATA:?set DATA to the folder holding cifar-100-python/}
CKPT_DIR=${CKPT_DIR:-checkpoints}
OUT=${OUT:-runs/cifar100}
CACHE=${CACHE:-runs/cache}
LAUNCH=${LAUNCH:-accelerate launch -q --config_file accelerate_configs/single_gpu_fp16.yaml}
SEEDS=${SEEDS:-"0 1 2"}                 # 3 seeds ...
CKPTS=${CKPTS:-"1 2"}                   # ... x 2 checkpoints = 6 runs per method, as in the thesis
PY=${PY:-python}
PRECISION=${PRECISION:-fp16}
VAL_SPLIT=${VAL_SPLIT:-0.1}
case $PRECISION in no|fp16|bf16) ;; *) echo "PRECISION must be no, fp16 or bf16, not '$PRECISION'" >&2; exit 2 ;; esac
ckpt() { echo "$CKPT_DIR/byol-1000ep-$1.pt"; }
PHASE1_FULL="--dataset cifar100 --data_dir $DATA --epochs 25 --lr 0.05 --weight_decay 1e-4 --momentum 0.9"
PHASE1_FULL="$PHASE1_FULL --batch_size 256 --mixed_precision $PRECISION --cache_dir $CACHE"  # all 50,000 images
PHASE1="$PHASE1_FULL$([ "$VAL_SPLIT" = none ] || echo " --val_split $VAL_SPLIT")"
CYCLES="--members 5 --cycle_lr 0.1 --cycle_epochs 12"
SELECT=$([ "$VAL_SPLIT" = none ] || echo "--select_by val")   # report.py: each method's best setting on validation

# Global DE of every seed: one fine-tune of each of the checkpoints $3.. with the flags $1, into $2/seed<s> (then
# GLOBAL_DE_DIR=$2); skipped, with a line saying why, unless every checkpoint file is there.
global_de() {
  local flags=$1 dir=$2; shift 2
  if ls "$@" >/dev/null 2>&1; then
    for s in $SEEDS; do
      run $LAUNCH scripts/finetune.py $flags --pretrained "$@" --seed "$s" --output_dir "$dir/seed$s"
    done
    GLOBAL_DE_DIR=$dir
  else
    echo "Global DE skipped: it needs the $# checkpoints $*" >&2
  fi
}

# Stage 1 of every sweep: phase I of checkpoint $1 with seed $2, a plain fine-tune whose cache entry every method of
# that checkpoint and seed reuses (so a stage-2 task never waits on another for it); $3: other phase-I flags
# (default $PHASE1; the final retrain: $PHASE1_FULL).
phase1() {
  local flags=${3:-$PHASE1}
  run $LAUNCH scripts/finetune.py $flags --pretrained "$(ckpt "$1")" --seed "$2" \
      --output_dir "$(phase1_dir "$CACHE" "cifar100-ckpt$1-seed$2" $flags)"
}

# The paper's protocol after a selection on validation: retrain each method's selected setting on the full training
# set (no --val_split) and report its test numbers. final_stages REPORT_DIR FINAL_DIR "DIR:SCRIPT FLAGS" ... adds
# three stages: phase I on the full set, the retrains (for every checkpoint x seed of $CKPTS x $SEEDS: the script
# with --config REPORT_DIR/selected/DIR.yaml, written by report.py --select_by, read when the task starts), the
# table. Nothing to do with VAL_SPLIT=none (the methods already trained on the full set).
final_stages() {
  local report=$1 final=$2 spec dir cmd c s; shift 2
  if [ "$VAL_SPLIT" = none ]; then
    echo "final retrain skipped: with VAL_SPLIT=none every run already trained on the full training set" >&2
    return 0
  fi
  stage final_phase1 "the final retrain: phase I on the full training set"
  for c in $CKPTS; do for s in $SEEDS; do phase1 "$c" "$s" "$PHASE1_FULL"; done; done
  stage final "the final retrain: each method's setting selected on validation, on the full training set"
  for c in $CKPTS; do
    for s in $SEEDS; do
      for spec in "$@"; do
        dir=${spec%%:*} cmd=${spec#*:}
        run $LAUNCH scripts/$cmd --config "$report/selected/$dir.yaml" $PHASE1_FULL --members 5 \
            --pretrained "$(ckpt "$c")" --seed "$s" --output_dir "$final/$dir/ckpt$c-seed$s"
      done
    done
  done
  stage final_report "the table of the final retrain (test numbers of the settings selected on validation)"
  run $PY scripts/report.py "$final" --out "${report}_final" --title "${FINAL_TITLE:-Final retrain on the full training set}"
}
