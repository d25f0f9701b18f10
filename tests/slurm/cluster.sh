#!/usr/bin/env bash
# A Slurm cluster of NODES (default 2) nodes on this one machine, for the tests (as root, no interaction, no systemd).
#
#   bash tests/slurm/cluster.sh start DIR   # installs slurm-wlm + munge from Debian if missing, writes DIR/slurm.conf,
#                                           # starts munged, slurmctld and one slurmd per node; prints SLURM_CONF=...
#   SLURM_CONF=DIR/slurm.conf sbatch ...     # every Slurm command reads the cluster from SLURM_CONF
#   bash tests/slurm/cluster.sh stop DIR    # cancels every job, stops the daemons by the PIDs they wrote
#
# Everything lives in DIR (config, state, spool, logs, munge socket, PID files) and the ports are free ones, so it
# touches no system-wide Slurm or munge and several clusters can coexist. The nodes node1..nodeN are one slurmd each,
# all at 127.0.0.1 with their own port (NodeHostname localhost), sharing the machine's cores: enough for array jobs,
# dependencies, requeues and a real two-node srun. Facts behind the settings: /work/shared/reference/slurm.md
# (DefMemPerCPU so that tasks share a node; no cgroups: proctrack/linuxproc, task/none).
set -euo pipefail
cmd=${1:?usage: cluster.sh start|stop DIR}
DIR=$(realpath -m "${2:?usage: cluster.sh start|stop DIR}")
export SLURM_CONF=$DIR/slurm.conf

NODES=${NODES:-2}  # node1..nodeN, one slurmd each on its own port, sharing this machine's CPUs between them

# NodeName lines: the machine's CPUs and 4000 MB split between the nodes (at least 1 CPU each)
nodes_conf() {
  local n cpus=$(( $(nproc) / NODES )); [ "$cpus" -ge 1 ] || cpus=1
  for n in $(seq "$NODES"); do
    echo "NodeName=node$n NodeAddr=127.0.0.1 NodeHostname=localhost Port=$(free_port) CPUs=$cpus RealMemory=$((4000 / NODES)) State=UNKNOWN"
  done
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# PID in a file, if that process is alive
alive_pid() { local p; p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo "$p"; }

stop_pidfiles() {  # SIGTERM the processes named in the files "$@", wait up to 10 s for all, then SIGKILL the rest
  local f p i pids=()
  for f in "$@"; do p=$(alive_pid "$f") && pids+=("$p"); done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for i in $(seq 100); do
    any_alive "${pids[@]}" || return 0
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

any_alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

start() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
      || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge from Debian (once)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm slurmctld slurmd slurm-client munge >/dev/null
  fi
  mkdir -p "$DIR"/{state,spool,log,munge}
  chmod 755 "$DIR"
  chown munge:munge "$DIR/munge" && chmod 755 "$DIR/munge"
  [ -s /etc/munge/munge.key ] || { echo "no /etc/munge/munge.key (the munge package creates it)" >&2; exit 1; }
  local ctld_port slurmd_port
  ctld_port=$(free_port); slurmd_port=$(free_port)
  cat > "$SLURM_CONF" <<CONF
ClusterName=enstest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
# finished jobs stay visible to scontrol for 10 minutes (there is no accounting database)
MinJobAge=600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
$(nodes_conf)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  runuser -u munge -- munged --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
      --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
  slurmctld -c
  local n
  for n in $(seq "$NODES"); do slurmd -N "node$n"; done
  local i
  for i in $(seq 150); do  # the node is up when sinfo says idle (~2 s)
    if [ "$(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)" = "$NODES" ]; then echo "SLURM_CONF=$SLURM_CONF"; return 0; fi
    sleep 0.2
  done
  echo "the Slurm node did not come up; logs in $DIR/log" >&2
  tail -n 20 "$DIR"/log/*.log >&2 || true
  exit 1
}

stop() {
  if [ -n "$(alive_pid "$DIR/slurmctld.pid" || true)" ]; then
    squeue -h -o %A 2>/dev/null | sort -u | xargs -r scancel --quiet 2>/dev/null || true
    local i
    for i in $(seq 50); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  stop_pidfiles "$DIR"/slurmd-*.pid "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"  # together: each takes ~2 s
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) echo "usage: cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
