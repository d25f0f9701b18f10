# The sweep runner (sourced by every sweep): a sweep lists its runs as stages, and RUNNER decides how they run.
#
#   stage NAME "TITLE"     begin a stage: stage 1 trains what the others share (pre-training, phase I of every
#                          checkpoint x seed), stage 2 the methods, stage 3 the reports; each waits for the one before
#   run CMD ARGS...        one task of the current stage: one command (a run), its arguments kept exactly
#   run_sh 'CODE'          one task written as shell code (a pipe, say)
#   finish                 run (or submit) the stages; call it once, last
#
# RUNNER=local (default)   the stages in order, each command after the other (JOBS=N: N commands of a stage at a time,
#                          each with its output in <out>/local/; the stage fails if any command fails; GPUS="0 1 2 3"
#                          gives each of the N running commands its own CUDA_VISIBLE_DEVICES, one entry each)
# RUNNER=slurm             each stage is one `sbatch --array` (ARRAY_LIMIT=K: at most K tasks at a time) that waits for
#                          the stage before with --dependency=afterok (a failed task cancels every later stage);
#                          SBATCH_ARGS passes the rest (partition, GPUs, time, account), SBATCH_ARGS_<stage> adds
#                          options for one stage (e.g. SBATCH_ARGS_report="-p cpu"); logs
#                          <out>/slurm/<sweep>.<stage>-<job>_<task>.out; WAIT=1 waits for the sweep to end and prints
#                          every task's end state
# RUNNER=print             lists the commands, stage by stage, and runs nothing
#
# Preemption under Slurm: tasks are submitted with --requeue --signal=B:USR1@$SIGNAL_BEFORE. On USR1 (the time
# limit is near) the task tells its command to stop (SIGTERM): the run finishes the current step, writes its resume
# point and exits (lib/infra/preemption.py), and the task requeues itself (scontrol requeue). On SIGTERM (scancel, scontrol
# requeue, preemption) Slurm signals every process itself and decides whether the job comes back. A requeued task
# runs the same command again, which resumes. Two tasks that need the same phase-I cache entry are safe: it is locked
# (lib/infra/locks.py).

RUNNER=${RUNNER:-local}
JOBS=${JOBS:-1}
ARRAY_LIMIT=${ARRAY_LIMIT:-}
SBATCH_ARGS=${SBATCH_ARGS:-}
SIGNAL_BEFORE=${SIGNAL_BEFORE:-120}   # seconds before the time limit at which Slurm sends USR1 (then: resume point, requeue)
WAIT=${WAIT:-0}
GPUS=${GPUS:-}
SWEEP=${SWEEP:-$(basename "$0" .sh)}  # names the jobs and the files of this sweep under <out>/slurm/
case $RUNNER in local|slurm|print) ;; *) echo "RUNNER must be local, slurm or print, not '$RUNNER'" >&2; exit 2 ;; esac
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "JOBS must be a positive integer, not '$JOBS'" >&2; exit 2; }
[[ -z $ARRAY_LIMIT || $ARRAY_LIMIT =~ ^[1-9][0-9]*$ ]] || { echo "ARRAY_LIMIT must be a positive integer" >&2; exit 2; }
read -r -a _GPUS <<< "$GPUS"
[ -z "$GPUS" ] || [ "${#_GPUS[@]}" -ge "$JOBS" ] || { echo "GPUS needs one entry per running command (JOBS=$JOBS)" >&2; exit 2; }

_STAGES=() _TITLES=() _CMDS=() _CMD_STAGE=()

stage() {
  _STAGES+=("${1:?stage NAME [TITLE]}")
  _TITLES+=("${2:-$1}")
}

run() {
  [ ${#_STAGES[@]} -gt 0 ] || { echo "run before the first stage" >&2; exit 2; }
  local q
  q=$(printf '%q ' "$@")
  _CMDS+=("${q% }")
  _CMD_STAGE+=($((${#_STAGES[@]} - 1)))
}

run_sh() {
  [ ${#_STAGES[@]} -gt 0 ] || { echo "run_sh before the first stage" >&2; exit 2; }
  _CMDS+=("$1")
  _CMD_STAGE+=($((${#_STAGES[@]} - 1)))
}

# The output folder of a stage-1 phase-I run (a plain fine-tune whose real product is the cache entry the methods
# reuse): <cache>/phase1/<label>-<hash of the phase-I flags>, so that other phase-I settings get another folder.
phase1_dir() { local root=$1 label=$2; shift 2; echo "$root/phase1/$label-$(printf '%s\n' "$@" | sha1sum | cut -c1-10)"; }

# the commands of stage $1, one per line in the array _STAGE_CMDS
_stage_cmds() {
  _STAGE_CMDS=()
  local i
  for i in "${!_CMDS[@]}"; do
    [ "${_CMD_STAGE[$i]}" = "$1" ] && _STAGE_CMDS+=("${_CMDS[$i]}")
  done
  return 0
}

finish() {
  local k
  case $RUNNER in
    print)
      for k in "${!_STAGES[@]}"; do
        _stage_cmds "$k"
        echo "# stage $((k + 1))/${#_STAGES[@]} ${_STAGES[$k]}: ${#_STAGE_CMDS[@]} commands (${_TITLES[$k]})"
        [ ${#_STAGE_CMDS[@]} -eq 0 ] || printf '%s\n' "${_STAGE_CMDS[@]}"
      done ;;
    local) for k in "${!_STAGES[@]}"; do _run_local "$k"; done ;;
    slurm) _submit_slurm ;;
  esac
}

# ---------------------------------------------------------------------------------------------------------------
# RUNNER=local

_run_local() {
  local k=$1 n i rc
  _stage_cmds "$k"
  n=${#_STAGE_CMDS[@]}
  [ "$n" -gt 0 ] || return 0
  echo "== ${_TITLES[$k]}"
  if [ "$JOBS" -eq 1 ]; then  # today's behaviour: one command after the other, output on the terminal
    for i in "${!_STAGE_CMDS[@]}"; do
      rc=0
      ([ -z "$GPUS" ] || export CUDA_VISIBLE_DEVICES=${_GPUS[0]}; eval "${_STAGE_CMDS[$i]}") || rc=$?
      if [ "$rc" -ne 0 ]; then
        echo "stage ${_STAGES[$k]}: command $((i + 1))/$n failed (exit status $rc): ${_STAGE_CMDS[$i]}" >&2
        exit "$rc"
      fi
    done
    return 0
  fi
  # JOBS at a time; each command's output in its own file, its last line (the run's result) printed when it ends.
  # OMP_NUM_THREADS: the cores shared between the JOBS commands (unless set), not JOBS x all cores.
  local logdir=${OUT:?OUT must be set}/local running=0 failed=0 done_=0 slot
  local -A task_of=() slot_of=()
  local busy=()  # busy[slot]: a command runs in this slot (its GPUS entry)
  mkdir -p "$logdir"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}
  for i in "${!_STAGE_CMDS[@]}"; do
    while [ "$running" -ge "$JOBS" ]; do _reap_one; done
    for ((slot = 0; slot < JOBS; slot++)); do [ -n "${busy[$slot]:-}" ] || break; done
    ([ -z "$GPUS" ] || export CUDA_VISIBLE_DEVICES=${_GPUS[$slot]}; eval "${_STAGE_CMDS[$i]}") \
        > "$logdir/$SWEEP.${_STAGES[$k]}-$((i + 1)).out" 2>&1 &
    task_of[$!]=$i slot_of[$!]=$slot busy[$slot]=1
    running=$((running + 1))
  done
  while [ "$running" -gt 0 ]; do _reap_one; done
  if [ "$failed" -gt 0 ]; then
    echo "stage ${_STAGES[$k]}: $failed of $n commands failed (logs in $logdir/)" >&2
    exit 1
  fi
}

# wait for the next command of the local pool to end and report it (uses _run_local's variables)
_reap_one() {
  local st=0 p i log
  wait -n -p p || st=$?
  i=${task_of[$p]}
  busy[${slot_of[$p]}]=""
  log="$logdir/$SWEEP.${_STAGES[$k]}-$((i + 1)).out"
  running=$((running - 1)) done_=$((done_ + 1))
  if [ "$st" -eq 0 ]; then
    echo "[${_STAGES[$k]} $done_/$n] $(tail -n 1 "$log")"
  else
    failed=$((failed + 1))
    echo "[${_STAGES[$k]} $done_/$n] FAILED (exit status $st): ${_STAGE_CMDS[$i]}" >&2
    tail -n 5 "$log" | sed 's/^/    /' >&2
    echo "    (whole output: $log)" >&2
  fi
}

# ---------------------------------------------------------------------------------------------------------------
# RUNNER=slurm

_submit_slurm() {
  command -v sbatch >/dev/null || { echo "RUNNER=slurm: sbatch not found (is this a Slurm login node?)" >&2; exit 2; }
  local repo dir k n script jid prev="" ids=() stage_args
  repo=$(pwd -P)
  dir=$(realpath -m "${OUT:?OUT must be set}")/slurm
  mkdir -p "$dir"
  : > "$dir/$SWEEP.jobs"
  for k in "${!_STAGES[@]}"; do
    _stage_cmds "$k"
    n=${#_STAGE_CMDS[@]}
    [ "$n" -gt 0 ] || continue
    script="$dir/$SWEEP.${_STAGES[$k]}.sbatch"  # a record: Slurm keeps its own copy of the script it was given
    _job_script "$repo" "$SWEEP.${_STAGES[$k]}" > "$script"
    stage_args="SBATCH_ARGS_${_STAGES[$k]}"
    # shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
    jid=$(sbatch --parsable --array="1-$n${ARRAY_LIMIT:+%$ARRAY_LIMIT}" --job-name="$SWEEP.${_STAGES[$k]}" \
          --output="$dir/$SWEEP.${_STAGES[$k]}-%A_%a.out" --open-mode=append --chdir="$repo" \
          --requeue --signal="B:USR1@$SIGNAL_BEFORE" \
          ${prev:+--dependency=afterok:$prev --kill-on-invalid-dep=yes} $SBATCH_ARGS ${!stage_args:-} "$script") || {
      echo "sbatch failed for stage ${_STAGES[$k]}${prev:+ (the stages before are submitted: scancel ${ids[*]})}" >&2
      exit 1; }
    jid=${jid%%;*}
    echo "submitted stage $((k + 1))/${#_STAGES[@]} ${_STAGES[$k]}: job $jid, $n tasks${prev:+, after job $prev}" \
         "(${_TITLES[$k]}); logs $dir/$SWEEP.${_STAGES[$k]}-${jid}_<task>.out"
    printf '%s\t%s\t%s\n' "${_STAGES[$k]}" "$jid" "$n" >> "$dir/$SWEEP.jobs"
    prev=$jid ids+=("$jid")
  done
  echo "jobs of this sweep: $dir/$SWEEP.jobs; follow them with: squeue -j $(IFS=,; echo "${ids[*]}")"
  [ "$WAIT" = 1 ] || return 0
  _wait_slurm "$dir" "${ids[@]}"
}

# the batch script of one stage: the commands, then task i runs command i (the function _slurm_task below)
_job_script() {
  local repo=$1 name=$2 c
  echo "#!/usr/bin/env bash"
  echo "# $name: generated by sweeps/_runner.sh; array task i runs command i."
  echo "cd $(printf '%q' "$repo") || exit 1"
  echo "STAGE=$(printf '%q' "$name")"
  echo "commands=("
  for c in "${_STAGE_CMDS[@]}"; do printf '  %q\n' "$c"; done
  echo ")"
  declare -f _slurm_task _requeue_self
  echo '_slurm_task "${commands[SLURM_ARRAY_TASK_ID - 1]}"'
}

# One array task (runs inside the job). The command gets its own process group. USR1 (only the batch shell gets it)
# becomes SIGTERM for that group: our scripts stop at a resume point on either, and a launcher (accelerate, torchrun)
# handles SIGTERM by passing it to its workers, which USR1 would not. The task then waits for every process of the
# group, since a resume point may still be being written.
_slurm_task() {
  local cmd=$1 child="" rc got_term="" got_usr1=""
  echo "[$(date '+%F %T')] $STAGE task $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT (job ${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID," \
       "id $SLURM_JOB_ID) on $(hostname), start $((${SLURM_RESTART_COUNT:-0} + 1)): $cmd"
  trap 'got_usr1=1; echo "[$(date "+%F %T")] USR1: the time limit is near; asking the run to stop at a resume point"; [ -n "$child" ] && kill -TERM -- "-$child" 2>/dev/null' USR1
  trap 'got_term=1; echo "[$(date "+%F %T")] SIGTERM from Slurm (scancel, requeue or preemption)"' TERM  # Slurm signals every process itself
  setsid bash -c "$cmd" &
  child=$!
  echo "[$(date '+%F %T')] command started as PID $child (process group $child)"
  while kill -0 "$child" 2>/dev/null; do wait "$child"; done  # a trapped signal interrupts wait
  wait "$child"; rc=$?
  while kill -0 -- "-$child" 2>/dev/null; do sleep 0.5; done  # what the command started, e.g. the workers of a launcher
  if [ "$rc" -eq 0 ]; then
    echo "[$(date '+%F %T')] done"
    exit 0
  elif [ -n "$got_term" ]; then
    echo "[$(date '+%F %T')] stopped by SIGTERM (exit status $rc); Slurm requeues the task or ends it"
    exit "$rc"
  elif [ -n "$got_usr1" ] || [ "$rc" -eq 75 ]; then  # 75: lib.infra.errors.PREEMPTED_EXIT, the resume point is written
    echo "[$(date '+%F %T')] preempted (exit status $rc): requeueing job $SLURM_JOB_ID; the next start resumes"
    _requeue_self
    exit "$rc"
  fi
  echo "[$(date '+%F %T')] FAILED with exit status $rc: $cmd"
  exit "$rc"
}

# Requeue this job and wait for the SIGTERM with which Slurm ends this start: a task that exited first, racing the
# requeue, would end FAILED instead of coming back. (Part of the job script, like _slurm_task.)
_requeue_self() {
  local i
  scontrol requeue "$SLURM_JOB_ID" || { echo "scontrol requeue failed: re-run the sweep to resume"; return; }
  for i in $(seq 300); do [ -z "$got_term" ] || return 0; sleep 1; done
}

# WAIT=1: wait until the sweep's jobs have left the queue, then one line per stage (or task) with its end state
_wait_slurm() {
  local dir=$1 ids bad=0 id line name task state code reason
  shift
  ids=$(IFS=,; echo "$*")
  local queued
  while :; do  # until squeue lists none of them (or knows none of them any more); retry if it cannot answer
    if queued=$(squeue -h -j "$ids" -o %i 2>&1); then [ -n "$queued" ] || break
    elif grep -q "Invalid job id" <<< "$queued"; then break; fi
    sleep "${WAIT_POLL:-5}"
  done
  : > "$dir/$SWEEP.states"
  for id in "$@"; do  # stage after stage, task after task
    while IFS= read -r line; do
      [ -n "$line" ] || continue
      name=$(_field JobName "$line") task=$(_field ArrayTaskId "$line") state=$(_field JobState "$line")
      code=$(_field ExitCode "$line") reason=$(_field Reason "$line")
      printf '%s task %s (job %s): %s, exit code %s%s\n' "$name" "$task" "${id}_$task" "$state" "$code" \
        "$([ "$reason" = None ] || echo ", reason $reason")" >> "$dir/$SWEEP.states"
      [ "$state" = COMPLETED ] || bad=1
    done < <(scontrol show job -o "$id" 2>/dev/null | sed 's/.*ArrayTaskId=\([^ ]*\).*/\1 &/' | sort -V | cut -d' ' -f2-)
  done
  cat "$dir/$SWEEP.states"
  if [ "$bad" -ne 0 ]; then
    echo "some tasks did not complete (states above, in $dir/$SWEEP.states; logs in $dir/)" >&2
    exit 1
  fi
}

_field() { grep -o "\b$1=[^ ]*" <<< "$2" | head -n 1 | cut -d= -f2-; }
