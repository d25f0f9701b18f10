#!/usr/bin/env bash
# Core methods on CIFAR-100 (thesis table 4.1 rows Local DE, Global DE, SSE, StarSSE), then the table.
# Stage 1 trains phase I of each (checkpoint, seed) once; stage 2 the methods, which reuse it; stage 3 the table.
# Every run is resumable (re-run the file). Runners: RUNNER=local|slurm|print (sweeps/_runner.sh).
source "$(dirname "$0")/_cifar100_common.sh"

stage phase1 "phase I of every checkpoint x seed, shared by SSE, StarSSE and Local DE"
for c in $CKPTS; do for s in $SEEDS; do phase1 "$c" "$s"; done; done

stage methods "SSE, StarSSE, Local DE and Global DE"
for c in $CKPTS; do
  for s in $SEEDS; do
    run $LAUNCH scripts/sse.py     $PHASE1 $CYCLES --pretrained "$(ckpt "$c")" --seed "$s" --output_dir "$OUT/sse/ckpt$c-seed$s"
    run $LAUNCH scripts/starsse.py $PHASE1 $CYCLES --pretrained "$(ckpt "$c")" --seed "$s" --output_dir "$OUT/starsse/ckpt$c-seed$s"
    # Local DE: 5 independent fine-tunes of one checkpoint (member 1 is the phase-I model above)
    run $LAUNCH scripts/finetune.py $PHASE1 --members 5 --pretrained "$(ckpt "$c")" --seed "$s" --output_dir "$OUT/local_de/ckpt$c-seed$s"
  done
done
# Global DE: one fine-tune of each of 5 checkpoints
global_de "$PHASE1" "$OUT/global_de" "$(ckpt 1)" "$(ckpt 2)" "$(ckpt 3)" "$(ckpt 4)" "$(ckpt 5)"

stage report "the table"
# the core runs' folders only: other sweeps write under $OUT too (the Swin-T runs must not meet these in a selection)
run $PY scripts/report.py "$OUT/sse" "$OUT/starsse" "$OUT/local_de" ${GLOBAL_DE_DIR:+"$GLOBAL_DE_DIR"} $SELECT \
    --out "$OUT/report_core" --title "BYOL ResNet-50 -> CIFAR-100, ensembles of 5"
finish
