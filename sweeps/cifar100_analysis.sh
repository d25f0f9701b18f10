#!/usr/bin/env bash
# The analyses of thesis sections 4 and 6 and the runs only they need: for the subset study (figure 6.1, table 6.1),
# StarSSE trained twice with the optimal setting, 15 members each, seeds $SUBSET_SEEDS of checkpoint $SUBSET_CKPT
# (thesis l. 231: the two runs pooled, 2 x C(14, 4) = 2,002 subsets of 5 with member 1 in each), and one 15-member
# Local DE (the first of those seeds: C(15, 5) = 3,003 subsets); then the representation analysis (figures 4.2, 4.3)
# of the SSE and StarSSE runs of the thesis' optimal setting (cycle lr 0.1, 12 epochs: the core runs), figure 4.5 and
# the diversity structure (table 6.2, figures 6.2, 6.4; the diversity-cosine correlation over every setting, as the
# thesis' -0.625) on the cycle grid, and every table and figure into $OUT/thesis_report/index.md.
# Run cifar100_core.sh and cifar100_cycle_grid.sh first (and the other sweeps for their tables). Phase I is shared:
# members 1..5 of the Local DE come from the cache of the core runs.
source "$(dirname "$0")/_cifar100_common.sh"
SUBSET_CKPT=${SUBSET_CKPT:-1}
SUBSET_SEEDS=${SUBSET_SEEDS:-"0 1"}   # the thesis' two StarSSE runs, "varying only by random seeds"
c=$SUBSET_CKPT
read -r -a subset_seeds <<< "$SUBSET_SEEDS"

stage phase1 "phase I of checkpoint $c, seeds $SUBSET_SEEDS"
for s in "${subset_seeds[@]}"; do phase1 "$c" "$s"; done

stage methods "${#subset_seeds[@]} 15-member StarSSE runs and a 15-member Local DE"
for s in "${subset_seeds[@]}"; do
  run $LAUNCH scripts/starsse.py $PHASE1 --members 15 --cycle_lr 0.1 --cycle_epochs 12 --pretrained "$(ckpt "$c")" \
      --seed "$s" --output_dir "$OUT/subsets/starsse15/ckpt$c-seed$s"
done
s=${subset_seeds[0]}
run $LAUNCH scripts/finetune.py $PHASE1 --members 15 --pretrained "$(ckpt "$c")" \
    --seed "$s" --output_dir "$OUT/subsets/local_de15/ckpt$c-seed$s"

stage analyses "subsets, representations, diversity structure"
# every subset of 5: StarSSE keeps member 1 (C(14,4) = 1001 per run, the runs pooled), Local DE all (C(15,5) = 3003)
run $PY scripts/subsets.py "$OUT/subsets/starsse15" "$OUT/subsets/local_de15" --size 5 --out "$OUT/report_subsets"
# member 1 against member i on the first 256 test images (one GPU forward per member, cached in <run>/analysis/), on
# the SSE and StarSSE runs of the optimal setting (core runs: cycle lr 0.1, 12 epochs)
run $PY scripts/analyze_representations.py "$OUT/sse" --data_dir "$DATA" --out "$OUT/report_representations/sse"
run $PY scripts/analyze_representations.py "$OUT/starsse" --data_dir "$DATA" --out "$OUT/report_representations/starsse"
# figure 4.5: every cycle setting of the grid, coloured by setting (local / optimal / semi-local)
for algo in sse starsse; do  # the folder pattern is expanded when the task runs, after the grid exists
  run_sh "$(printf '%q ' $PY scripts/analyze_representations.py)$(printf '%q' "$OUT")/grid/$algo-lr* $(printf '%q ' \
      --group_by method cycle_lr cycle_epochs --data_dir "$DATA" --out "$OUT/report_representations/grid_$algo")"
done
# table 6.2, figures 6.2 and 6.4: the correlation over every pair of every SSE and StarSSE run of every setting of the
# grid (thesis l. 263: "aggregated across all experiments with different hyperparameters"); table 6.2 and figure 6.4
# show its optimal StarSSE runs
run_sh "$(printf '%q ' $PY scripts/diversity_structure.py)$(printf '%q' "$OUT")/grid/sse-lr* $(printf '%q' "$OUT")/grid/starsse-lr* \
$(printf '%q ' --out "$OUT/report_diversity_structure")"

stage report "every table and figure"
run $PY scripts/thesis_report.py "$OUT" --data_dir "$DATA" --out "$OUT/thesis_report" \
    --title "BYOL ResNet-50 -> CIFAR-100: every table and figure of the thesis"
finish
