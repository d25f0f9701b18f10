# Shared settings of the CIFAR-100 sweeps (sourced). The paper's setup: BYOL ResNet-50 -> CIFAR-100,
# phase I 25 epochs, lr 0.05, weight decay 1e-4, SGD momentum 0.9, batch 256, 224 px reference augmentation;
# 5 members; cycles of 12 epochs at lr 0.1 (thesis optimum for SSE and StarSSE).
#
#   DATA=/data/cifar CKPT_DIR=/ckpts bash sweeps/cifar100_core.sh
# DATA: folder holding cifar-100-python/. CKPT_DIR: the BYOL checkpoints byol-1000ep-{1..5}.pt of the paper.
# LAUNCH: how to start a script (default: accelerate launch with the single-GPU fp16 config; for several GPUs,
#   LAUNCH="accelerate launch --config_file accelerate_configs/multi_gpu_fp16.yaml --num_processes 8").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:?set DATA to the folder holding cifar-100-python/}
CKPT_DIR=${CKPT_DIR:-checkpoints}
OUT=${OUT:-runs/cifar100}
LAUNCH=${LAUNCH:-accelerate launch -q --config_file accelerate_configs/single_gpu_fp16.yaml}
SEEDS=${SEEDS:-"0 1 2"}                 # 3 seeds ...
CKPTS=${CKPTS:-"1 2"}                   # ... x 2 checkpoints = 6 runs per method, as in the thesis
PY=${PY:-python}
ckpt() { echo "$CKPT_DIR/byol-1000ep-$1.pt"; }
PHASE1="--dataset cifar100 --data_dir $DATA --epochs 25 --lr 0.05 --weight_decay 1e-4 --momentum 0.9 --batch_size 256"
CYCLES="--members 5 --cycle_lr 0.1 --cycle_epochs 12"
