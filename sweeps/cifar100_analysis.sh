#!/usr/bin/env bash
# The analyses of thesis sections 4 and 6 and the runs only they need: a 15-member StarSSE and a 15-member Local DE
# from each checkpoint (seed $SUBSET_SEED; the thesis trains each twice) for the subset study (figure 6.1, table 6.1),
# then the representation analysis (figures 4.2, 4.3 on the core SSE / StarSSE runs, 4.5 on the cycle grid), the
# diversity structure (table 6.2, figures 6.2, 6.4) and every table and figure into $OUT/thesis_report/index.md.
# Run cifar100_core.sh and cifar100_cycle_grid.sh first (and the other sweeps for their tables). Phase I is shared:
# members 1..5 of the Local DE come from the cache of the core runs.
source "$(dirname "$0")/_cifar100_common.sh"
SUBSET_SEED=${SUBSET_SEED:-0}

for c in $CKPTS; do
  $LAUNCH scripts/starsse.py $PHASE1 --members 15 --cycle_lr 0.1 --cycle_epochs 12 --pretrained "$(ckpt "$c")" \
      --seed "$SUBSET_SEED" --output_dir "$OUT/subsets/starsse15/ckpt$c-seed$SUBSET_SEED"
  $LAUNCH scripts/finetune.py $PHASE1 --members 15 --pretrained "$(ckpt "$c")" \
      --seed "$SUBSET_SEED" --output_dir "$OUT/subsets/local_de15/ckpt$c-seed$SUBSET_SEED"
done
# every subset of 5: StarSSE keeps member 1 (2 x C(14,4) = 2002), Local DE all (2 x C(15,5) = 6006)
$PY scripts/subsets.py "$OUT/subsets/starsse15" "$OUT/subsets/local_de15" --size 5 --out "$OUT/report_subsets"
# member 1 against member i on the first 256 test images (one GPU forward per member, cached in <run>/analysis/)
$PY scripts/analyze_representations.py "$OUT/sse" --data_dir "$DATA" --out "$OUT/report_representations/sse"
$PY scripts/analyze_representations.py "$OUT/starsse" --data_dir "$DATA" --out "$OUT/report_representations/starsse"
# figure 4.5: every cycle setting of the grid, coloured by setting (local / optimal / semi-local)
for algo in sse starsse; do
  $PY scripts/analyze_representations.py "$OUT"/grid/$algo-lr* --group_by method cycle_lr cycle_epochs \
      --data_dir "$DATA" --out "$OUT/report_representations/grid_$algo"
done
$PY scripts/diversity_structure.py "$OUT/grid" "$OUT/starsse" --out "$OUT/report_diversity_structure"
$PY scripts/thesis_report.py "$OUT" --data_dir "$DATA" --out "$OUT/thesis_report" \
    --title "BYOL ResNet-50 -> CIFAR-100: every table and figure of the thesis"
