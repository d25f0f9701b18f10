#!/usr/bin/env bash
# The main job on the embedded default (scikit-learn digits, CPU): pre-training, then Local DE, Global DE, Standard
# SSE, SSE, StarSSE, SSE-RTD, SSE-MSE, frozen-stage StarSSE, StarSSE-CE and StarSSE-WO with 2 runs each and a
# from-scratch baseline, each also scored on three synthetic out-of-distribution sets, then the uniform model soup of
# every run, then the results table, then a few predictions of one ensemble on test digits. `make demo` runs it.
#
# The paper's protocol at CPU size: each run r in {0, 1} fine-tunes pre-trained checkpoint r with seed r
# (the thesis uses 2 checkpoints x 3 seeds); Global DE fine-tunes the 4 checkpoints once each.
# Everything is cached and resumable: re-running skips finished members.
#
# Runners (sweeps/_runner.sh): RUNNER=local (default, one run after another), RUNNER=local JOBS=2, RUNNER=slurm
# (one job array per stage; SBATCH_ARGS, ARRAY_LIMIT, WAIT=1), RUNNER=print. RUNS and METHODS choose a subset,
# M the ensemble size, DEMO_FLAGS adds flags to every run, ANALYSES=0 skips the analyses after the table; e.g. a quick
# check of a Slurm cluster:
#   RUNNER=slurm WAIT=1 RUNS=0 METHODS="local_de starsse" M=2 DEMO_FLAGS="--epochs 2 --cycle_epochs 1" ANALYSES=0 \
#       OUT=runs/demo_slurm bash sweeps/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source sweeps/_runner.sh
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/demo}
CACHE=${CACHE:-runs/cache}
M=${M:-4}                             # ensemble size
RUNS=${RUNS:-"0 1"}
METHODS=${METHODS:-"scratch local_de global_de standard_sse sse starsse sse_rtd sse_mse starsse_freeze starsse_ce starsse_wo"}
ANALYSES=${ANALYSES:-1}
PHASE1="--dataset digits --cache_dir $CACHE --quiet${DEMO_FLAGS:+ $DEMO_FLAGS}"   # the phase-I settings of every method below
# digits have no natural out-of-distribution set inside a package: pixel-permuted digits (pixel statistics kept,
# structure lost), uniform noise, digits upside down (lib.data.tasks.load_eval_set)
OOD="--ood_dataset permuted --ood_dataset noise --ood_dataset flipped"
COMMON="$PHASE1 --members $M $OOD"
ckpt() { echo "$CACHE/pretrained/digits-byol-seed$1.safetensors"; }
chosen() { [[ " $METHODS " == *" $1 "* ]]; }
# one run of method $1 for run $r (only if METHODS names it), into $OUT/$1/run$r
method() { local m=$1; shift; if chosen "$m"; then run "$@" --output_dir "$OUT/$m/run$r"; fi; }

stage pretrain "pre-training: independent BYOL checkpoints on the unlabelled digits pool"
if chosen global_de; then needed="0 1 2 3"; else needed=$RUNS; fi
for s in $needed; do [ -f "$(ckpt "$s")" ] || run $PY scripts/pretrain.py --seed "$s" --cache_dir "$CACHE"; done  # once

stage phase1 "phase I of each run (checkpoint r, seed r), shared by every method that starts from it"
if [ -n "$(echo " $METHODS " | sed 's/ scratch / /; s/ global_de / /' | tr -d ' ')" ]; then
  for r in $RUNS; do
    run $PY scripts/finetune.py $PHASE1 --pretrained "$(ckpt "$r")" --seed "$r" \
        --output_dir "$(phase1_dir "$CACHE" "digits-ckpt$r-seed$r" $PHASE1)"
  done
fi

stage methods "the ensembles: $(echo $METHODS | wc -w) methods x runs {$(echo $RUNS | tr ' ' ,)}"
for r in $RUNS; do                    # one line per run: method NAME COMMAND
  method scratch        $PY scripts/finetune.py $PHASE1 $OOD --pretrained scratch --members 1 --seed "$r"
  method local_de       $PY scripts/finetune.py $COMMON --pretrained "$(ckpt "$r")" --seed "$r"
  method global_de      $PY scripts/finetune.py $COMMON --pretrained "$(ckpt 0)" "$(ckpt 1)" "$(ckpt 2)" "$(ckpt 3)" --seed "$r"
  # Standard SSE: the first cycle too at the cycle lr and length (no phase I)
  method standard_sse   $PY scripts/sse.py $COMMON --standard --pretrained "$(ckpt "$r")" --seed "$r"
  method sse            $PY scripts/sse.py $COMMON --pretrained "$(ckpt "$r")" --seed "$r"
  method starsse        $PY scripts/starsse.py $COMMON --pretrained "$(ckpt "$r")" --seed "$r"
  # similarity regularisers on the AvgPool output, the thesis' alphas (RTD 0.0316, MSE 20)
  method sse_rtd        $PY scripts/sse_rtd.py $COMMON --similarity rtd --pretrained "$(ckpt "$r")" --seed "$r"
  method sse_mse        $PY scripts/sse_rtd.py $COMMON --similarity mse --pretrained "$(ckpt "$r")" --seed "$r"
  # frozen-stage StarSSE: cycles 2..M train stage4, stage5 and fc only, at 4x the phase-I lr (thesis optimum x3-x5)
  method starsse_freeze $PY scripts/starsse.py $COMMON --freeze stage4 --cycle_lr_mult 4 --pretrained "$(ckpt "$r")" --seed "$r"
  # diversity losses: StarSSE-CE on the samples member j gets wrong (alpha 0.1) and StarSSE-WO (alpha 10)
  method starsse_ce     $PY scripts/starsse_ce.py $COMMON --mode incorrect --alpha 0.1 --pretrained "$(ckpt "$r")" --seed "$r"
  method starsse_wo     $PY scripts/starsse_wo.py $COMMON --alpha 10 --pretrained "$(ckpt "$r")" --seed "$r"
done

stage soups "the uniform model soup of every run (BatchNorm statistics re-estimated on training data)"
for r in $RUNS; do
  for m in $METHODS; do
    [ "$m" = scratch ] && continue  # one member: nothing to average
    run $PY scripts/soup.py "$OUT/$m/run$r" --mode uniform
  done
done

stage report "results, then the analyses (representations, diversity structure, subsets: every thesis figure the demo runs allow)"
run $PY scripts/report.py "$OUT" --out "$OUT/report" --title "Embedded default: digits, 4 labels per class, resnet_mini" \
    --ood_column permuted/entropy --ood_column noise/entropy
[ "$ANALYSES" = 0 ] || run_sh "set -o pipefail; $(printf '%q ' $PY scripts/thesis_report.py "$OUT" --subset_size 3 --out "$OUT/thesis_report" --cpu)| tail -n 1"

stage use "using an ensemble: predictions on a few test digits (scripts/predict.py; docs/using-ensembles.md)"
use=$(for m in starsse $METHODS; do chosen "$m" && { echo "$m"; break; }; done)  # StarSSE, else the first method run
preds="$OUT/use/preds.csv"
run_sh "$(printf '%q ' $PY scripts/predict.py "$OUT/$use/run${RUNS%% *}" --data test --limit 8 --out "$preds")&& head -n 3 $(printf '%q' "$preds")"
finish
