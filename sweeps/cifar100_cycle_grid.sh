#!/usr/bin/env bash
# The NeurIPS paper's cycle grid for SSE and StarSSE: cycle lr in {0.25, 0.5, 1, 2, 4} x phase-I lr and cycle
# epochs in {0.5, 1, 2, 4} x phase-I epochs (local / optimal / semi-local regimes), plus Standard SSE at every grid
# point (every cycle, the first included, at the cycle lr and length, from the pre-trained checkpoint). Phase I is
# trained once (stage 1); the settings are compared on the validation split (report.py --select_by val). Then, as
# the paper's protocol, each method's selected setting is retrained on the full training set for every checkpoint x
# seed of $CKPTS x $SEEDS and reported on the test set (FINAL=0 skips it; VAL_SPLIT=none has nothing to select).
source "$(dirname "$0")/_cifar100_common.sh"
GRID_SEEDS=${GRID_SEEDS:-"0 1"}
FINAL=${FINAL:-1}

stage phase1 "phase I of every checkpoint x seed"
for c in $CKPTS; do for s in $GRID_SEEDS; do phase1 "$c" "$s"; done; done

stage methods "SSE, StarSSE and Standard SSE at every grid point"
for c in $CKPTS; do
  for s in $GRID_SEEDS; do
    for lr_ratio in 0.25 0.5 1 2 4; do
      for ep_ratio in 0.5 1 2 4; do
        clr=$(awk "BEGIN{print 0.05 * $lr_ratio}"); cep=$(awk "BEGIN{print int(25 * $ep_ratio)}")
        point="--members 5 --cycle_lr $clr --cycle_epochs $cep --pretrained $(ckpt "$c") --seed $s"
        for algo in sse starsse; do
          run $LAUNCH scripts/$algo.py $PHASE1 $point --output_dir "$OUT/grid/$algo-lr${lr_ratio}x-ep${ep_ratio}x/ckpt$c-seed$s"
        done
        run $LAUNCH scripts/sse.py $PHASE1 $point --standard \
            --output_dir "$OUT/grid/standard_sse-lr${lr_ratio}x-ep${ep_ratio}x/ckpt$c-seed$s"
      done
    done
  done
done

stage report "the table"
run $PY scripts/report.py "$OUT/grid" --group_by method cycle_lr cycle_epochs $SELECT --out "$OUT/report_grid" \
    --title "SSE / StarSSE / Standard SSE cycle grid (CIFAR-100)"

[ "$FINAL" = 0 ] || FINAL_TITLE="SSE / StarSSE / Standard SSE at the cycle setting selected on validation, retrained on \
the full training set (CIFAR-100)" final_stages "$OUT/report_grid" "$OUT/final_grid" \
    "sse:sse.py" "starsse:starsse.py" "standard_sse:sse.py --standard"
finish
