"""Sweeps on a real Slurm scheduler: a two-node cluster started on this machine from Debian's packages
(tests/slurm/cluster.sh: munged, slurmctld and one slurmd per node, each on its own port; stopped by PID at the end).

- the demo (2 runs) through RUNNER=slurm gives the same table as through RUNNER=local, stage after stage;
- two concurrent jobs that need the same phase-I cache entry train it once (one waits for the other's lock);
- a run requeued by `scontrol requeue` (SIGTERM) and then told to stop by USR1 (what --signal=B:USR1@120 sends)
  resumes each time and ends with metrics identical to an uninterrupted run;
- a failed stage-1 task cancels every later stage, and the runner says so task by task;
- sweeps/slurm_multinode.sbatch on two nodes (one accelerate launch per node, gloo on CPU) trains exactly as one
  two-process launch.
As root (CI) they always run: if Slurm cannot be installed or started, they fail. As another user they are skipped
with one line (cluster.sh installs slurm-wlm with apt-get and runs munged and the Slurm daemons as root).
"""
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import numpy as np
import pytest
from conftest import ACCELERATE, PY, REPO, copy_pretrained, needs_root, tb_lrs

from lib.infra.files import load_json, load_weights

pytestmark = [needs_root("a Slurm cluster on this machine (tests/slurm/cluster.sh installs slurm-wlm with apt-get "
                         "and starts munged, slurmctld and slurmd as root)"),
              pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one worker: one cluster, started once
CLUSTER = os.path.join(REPO, "tests", "slurm", "cluster.sh")
# one thread per task: the two nodes share this machine's 2 cores, and local and Slurm runs then compute alike
THREADS = {"OMP_NUM_THREADS": "1"}


class Cluster:
    def __init__(self, folder):
        self.folder = folder
        self.env = dict(os.environ, SLURM_CONF=os.path.join(folder, "slurm.conf"), **THREADS)

    def run(self, *cmd, check=True, timeout=60, **kw):
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=self.env, timeout=timeout, **kw)
        assert not check or r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
        return r

    def jobs(self, job):
        """scontrol's records of a job (one per array task, or one for a pending range), as dicts."""
        out = self.run("scontrol", "show", "job", "-o", job, check=False).stdout
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]

    def wait_done(self, jobs, timeout=300):
        """Wait until none of the jobs is in the queue any more (squeue answers, and lists none of them)."""
        t0 = time.time()
        while True:
            r = self.run("squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T", check=False)
            if (r.returncode == 0 and not r.stdout.strip()) or "Invalid job id" in r.stderr:
                return
            assert time.time() - t0 < timeout, r.stdout + r.stderr
            time.sleep(0.5)

    def sweep(self, path, timeout=400, **env):
        return subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=timeout,
                              env=dict(self.env, PY=PY, WAIT_POLL="1", **env))


def _pids(folder):
    files = glob.glob(os.path.join(folder, "*.pid")) + glob.glob(os.path.join(folder, "munge", "*.pid"))
    return {f: int(open(f).read().strip() or 0) for f in files}


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def slurm():
    folder = tempfile.mkdtemp(prefix="ens-slurm-", dir="/tmp")  # not under pytest's 0700 folders: munged runs as munge
    r = subprocess.run(["bash", CLUSTER, "start", folder], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"could not start the Slurm test cluster:\n{r.stdout}{r.stderr}"
    pids = _pids(folder)
    assert len(pids) == 4 and all(_alive(p) for p in pids.values()), pids  # munged, slurmctld, 2 x slurmd
    yield Cluster(folder)
    r = subprocess.run(["bash", CLUSTER, "stop", folder], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not [f for f, p in pids.items() if _alive(p)], "a daemon outlived cluster.sh stop"
    shutil.rmtree(folder, ignore_errors=True)


def mini_sweep(path, stages, out):
    """A sweep file of plain commands: stages = [(name, [argv, ...]), ...]."""
    import shlex
    lines = ["set -euo pipefail", f"source {REPO}/sweeps/_runner.sh", f"OUT={out}"]
    for name, commands in stages:
        lines.append(f"stage {name} {name}")
        lines += ["run " + " ".join(shlex.quote(str(a)) for a in cmd) for cmd in commands]
    path.write_text("\n".join(lines + ["finish", ""]))
    return path


def table(report):
    """The rows of report.md without the timing column (seconds differ between any two runs)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in open(report).read().splitlines()
            if line.startswith("| ")]
    keep = [i for i, name in enumerate(rows[0]) if "time" not in name]
    assert len(keep) < len(rows[0])
    return [[row[i] for i in keep] for row in rows]


# ----------------------------------------------------------------------------------------------------------------

def test_demo_through_slurm_gives_the_same_table_as_local(slurm, cache_dir, tmp_path):
    demo = dict(RUNS="0", METHODS="local_de starsse", M="2", DEMO_FLAGS="--epochs 2 --cycle_epochs 1 --cpu",
                ANALYSES="0")
    local = slurm.sweep(os.path.join(REPO, "sweeps", "demo.sh"), RUNNER="local", OUT=str(tmp_path / "local"),
                        CACHE=copy_pretrained(cache_dir, tmp_path / "cache_local"), **demo)
    assert local.returncode == 0, local.stderr
    out = tmp_path / "slurm"
    r = slurm.sweep(os.path.join(REPO, "sweeps", "demo.sh"), RUNNER="slurm", WAIT="1", OUT=str(out),
                    CACHE=copy_pretrained(cache_dir, tmp_path / "cache_slurm"), ARRAY_LIMIT="1",
                    SBATCH_ARGS="--time=10 --comment=demo", SBATCH_ARGS_report="--comment=table", **demo)
    assert r.returncode == 0, r.stdout + r.stderr
    assert table(out / "report" / "report.md") == table(tmp_path / "local" / "report" / "report.md")
    assert len(table(out / "report" / "report.md")) == 3  # header, Local DE, StarSSE
    # one array job per stage, each started after the one before had ended (--dependency=afterok); the pre-training
    # stage is empty (the checkpoint exists) and is not submitted
    jobs = [line.split("\t") for line in (out / "slurm" / "demo.jobs").read_text().splitlines()]
    assert [(name, n) for name, _, n in jobs] == [("phase1", "1"), ("methods", "2"), ("soups", "2"), ("report", "1"),
                                                  ("use", "1")]
    spans = []
    for name, job, n in jobs:
        records = slurm.jobs(job)
        assert len(records) == int(n) and all(x["JobState"] == "COMPLETED" for x in records), records
        spans.append((min(x["StartTime"] for x in records), max(x["EndTime"] for x in records)))
    assert all(spans[k][0] >= spans[k - 1][1] for k in range(1, len(spans))), spans
    methods = sorted(slurm.jobs(jobs[1][1]), key=lambda x: x["StartTime"])
    assert methods[1]["StartTime"] >= methods[0]["EndTime"]  # ARRAY_LIMIT=1: one task at a time
    for (name, job, _), comment in zip(jobs, ["demo", "demo", "demo", "table", "demo"]):  # SBATCH_ARGS, then _<stage>
        assert all(x["TimeLimit"] == "00:10:00" and x["Comment"] == comment for x in slurm.jobs(job)), name
    states = (out / "slurm" / "demo.states").read_text()
    assert states.count("COMPLETED, exit code 0:0") == 7
    # the last step predicted the same on both (StarSSE run 0 on 8 test digits)
    assert (out / "use" / "preds.csv").read_text() == (tmp_path / "local" / "use" / "preds.csv").read_text()
    for name, job, n in jobs:  # a log per task
        for task in range(1, int(n) + 1):
            log = (out / "slurm" / f"demo.{name}-{job}_{task}.out").read_text()
            assert f"task {task}/{n}" in log and log.rstrip().endswith("done"), log


@pytest.fixture(scope="module")
def concurrent(slurm, cache_dir, tmp_path_factory):
    """SSE and StarSSE of one checkpoint and seed as two tasks of one stage, started together: both need the same
    phase-I entry. Whichever takes its lock first is stopped (SIGSTOP) while it holds it, until the other one says
    it is waiting, so that the two really overlap however the machine is loaded."""
    root = tmp_path_factory.mktemp("concurrent")
    cache = copy_pretrained(cache_dir, root / "cache")
    flags = ["--cpu", "--epochs", "40", "--cycle_epochs", "20", "--members", "3", "--cache_dir", cache]  # no --quiet
    sweep = mini_sweep(root / "pair.sh", [("methods", [
        [PY, "scripts/sse.py", *flags, "--output_dir", root / "sse"],
        [PY, "scripts/starsse.py", *flags, "--output_dir", root / "starsse"]])], root / "out")
    r = slurm.sweep(sweep, RUNNER="slurm")
    assert r.returncode == 0, r.stderr
    job = (root / "out" / "slurm" / "pair.jobs").read_text().split("\t")[1]
    logs = [root / "out" / "slurm" / f"pair.methods-{job}_{t}.out" for t in (1, 2)]
    holder, t0 = None, time.time()
    while holder is None:  # the lock file names its holder while it is held
        for lock in glob.glob(os.path.join(cache, "finetune", "*.lock")):
            m = re.search(r"PID (\d+)", open(lock).read())
            if m:
                holder = int(m.group(1))
        assert time.time() - t0 < 180, [p.read_text() for p in logs if p.exists()]
        time.sleep(0.05)
    os.kill(holder, signal.SIGSTOP)
    try:
        t0 = time.time()
        while not any(p.exists() and "waiting for phase I" in p.read_text() for p in logs):
            assert time.time() - t0 < 180, [p.read_text() for p in logs if p.exists()]
            time.sleep(0.1)
    finally:
        os.kill(holder, signal.SIGCONT)
    slurm.wait_done([job])
    return dict(root=root, cache=cache, flags=flags, holder=holder, logs=[p.read_text() for p in logs],
                records=slurm.jobs(job))


def test_two_concurrent_jobs_train_a_shared_phase_one_once(concurrent):
    assert all(x["JobState"] == "COMPLETED" for x in concurrent["records"]), concurrent["records"]
    waited = [log for log in concurrent["logs"] if "waiting for phase I of member 1" in log]
    assert len(waited) == 1
    # the one that waited names the other job's process, then reuses the entry: only the holder trained phase I
    assert f"held by host {socket.gethostname()}, PID {concurrent['holder']}," in waited[0]
    trained = [log for log in concurrent["logs"] if "member 1 (fine-tune)" in log]  # its progress bar
    assert len(trained) == 1 and trained[0] is not waited[0]
    assert f"PID {concurrent['holder']}" in trained[0]  # the task log's header names its command's PID
    entries = [p for p in glob.glob(os.path.join(concurrent["cache"], "finetune", "*")) if os.path.isdir(p)]
    assert len(entries) == 1
    a, b = (load_json(concurrent["root"] / run / "member_1.json") for run in ("sse", "starsse"))
    assert a["cached"] == b["cached"] == entries[0] and a["sha256"] == b["sha256"]
    for run in ("sse", "starsse"):
        assert not [f for f in os.listdir(concurrent["root"] / run) if f.endswith((".resume.pt", ".tmp"))]
        assert open(concurrent["root"] / run / ".lock").read() == ""  # released
    assert open(entries[0] + ".lock").read() == ""


def _requeued_start(slurm, task, starts, timeout=180):
    """After a requeue the task waits in PENDING for its BeginTime (2 minutes): start it sooner. Not at once: a node
    refuses a job whose credential it revoked in the same second ("Job credential revoked", the job ends FAILED),
    which is what the 2 minutes guard against."""
    t0 = time.time()
    while True:
        rec = slurm.jobs(task)[0]
        if rec["JobState"] == "PENDING" and int(rec["Restarts"]) == starts - 1:
            time.sleep(1.5)
            slurm.run("scontrol", "update", f"JobId={task}", "StartTime=now")
            return
        assert time.time() - t0 < timeout, rec
        time.sleep(0.2)


def _wait_for(path_pattern, log, timeout=180):
    t0 = time.time()
    while not glob.glob(path_pattern):
        assert time.time() - t0 < timeout, log.read_text() if log.exists() else "no log"
        time.sleep(0.02)


def test_requeued_and_signalled_run_ends_identical_to_an_uninterrupted_one(slurm, concurrent, cache_dir, tmp_path):
    cache = copy_pretrained(cache_dir, tmp_path / "cache")
    flags = [f if f != concurrent["cache"] else cache for f in concurrent["flags"]] + ["--quiet"]
    out = tmp_path / "run"
    # through `accelerate launch`, as the CIFAR-100 sweeps run: the launcher stands between the task and the run
    launch = [ACCELERATE, "launch", "-q", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision",
              "no", "--dynamo_backend", "no"]
    sweep = mini_sweep(tmp_path / "one.sh", [("methods", [[*launch, "scripts/starsse.py", *flags, "--output_dir", out]])],
                       tmp_path / "out")
    r = slurm.sweep(sweep, RUNNER="slurm")
    assert r.returncode == 0, r.stderr
    job = (tmp_path / "out" / "slurm" / "one.jobs").read_text().split("\t")[1]
    task, log = f"{job}_1", tmp_path / "out" / "slurm" / f"one.methods-{job}_1.out"
    # 1. scontrol requeue during phase I: Slurm's SIGTERM, a resume point, the task comes back and resumes
    _wait_for(os.path.join(cache, "finetune", "*", "member_1.resume.pt"), log)
    slurm.run("scontrol", "requeue", task)
    _requeued_start(slurm, task, starts=2)
    # 2. USR1 to the batch shell during member 2 (what --signal=B:USR1@120 sends before the time limit): the task
    #    forwards it, the run writes its resume point, exits 75, and the task requeues itself
    _wait_for(str(out / "member_2.resume.pt"), log)
    slurm.run("scancel", "--batch", "--signal=USR1", task)
    _requeued_start(slurm, task, starts=3)
    slurm.wait_done([job])
    text = log.read_text()
    assert slurm.jobs(task)[0]["JobState"] == "COMPLETED", text
    for expected in ("start 1:", "SIGTERM from Slurm", "preempted: member 1 (fine-tune) stopped", "start 2:",
                     "member 1 (fine-tune): resuming at", "USR1: the time limit is near", "preempted: member 2",
                     "requeueing job", "start 3:", "member 2 (cycle): resuming at"):
        assert expected in text, (expected, text)
    assert text.rstrip().endswith("done")
    a, b = load_json(concurrent["root"] / "starsse" / "metrics.json"), load_json(out / "metrics.json")
    for key in ("member_accuracy", "ensemble_accuracy", "ensemble_accuracy_by_size", "diversity", "nll", "ece"):
        assert a[key] == b[key], key
    for i in (1, 2, 3):
        assert np.array_equal(np.load(concurrent["root"] / "starsse" / f"member_{i}_probs.npy"),
                              np.load(out / f"member_{i}_probs.npy"))
    assert not [f for f in os.listdir(out) if f.endswith((".resume.pt", ".tmp"))]


def test_a_failed_stage_one_task_cancels_every_later_stage(slurm, tmp_path):
    sweep = mini_sweep(tmp_path / "broken.sh", [
        ("phase1", [[PY, "scripts/finetune.py", "--cpu", "--pretrained", tmp_path / "missing.pt",
                     "--output_dir", tmp_path / "p1"], ["true"]]),
        ("methods", [["touch", tmp_path / "m1"], ["touch", tmp_path / "m2"]]),
        ("report", [["touch", tmp_path / "report"]])], tmp_path / "out")
    r = slurm.sweep(sweep, RUNNER="slurm", WAIT="1")
    assert r.returncode == 1 and "some tasks did not complete" in r.stderr
    jobs = [line.split("\t")[1] for line in (tmp_path / "out" / "slurm" / "broken.jobs").read_text().splitlines()]
    states = r.stdout.splitlines()[-4:]
    assert states == [
        f"broken.phase1 task 1 (job {jobs[0]}_1): FAILED, exit code 2:0, reason NonZeroExitCode",
        f"broken.phase1 task 2 (job {jobs[0]}_2): COMPLETED, exit code 0:0",
        f"broken.methods task 1-2 (job {jobs[1]}_1-2): CANCELLED, exit code 0:0, reason DependencyNeverSatisfied",
        f"broken.report task 1 (job {jobs[2]}_1): CANCELLED, exit code 0:0, reason DependencyNeverSatisfied"], r.stdout
    assert (tmp_path / "out" / "slurm" / "broken.states").read_text().splitlines() == states
    log = (tmp_path / "out" / "slurm" / f"broken.phase1-{jobs[0]}_1.out").read_text()
    assert "error: " in log and "missing.pt" in log and "FAILED with exit status 2" in log
    assert not any((tmp_path / f).exists() for f in ("m1", "m2", "report", "p1"))


def test_multinode_sbatch_trains_as_one_two_process_launch(slurm, cache_dir, tmp_path):
    """sweeps/slurm_multinode.sbatch on 2 nodes: srun starts `accelerate launch --num_machines 2 --machine_rank
    $SLURM_NODEID` on each (one process each, gloo on CPU), preempted once (USR1) and requeued; against one
    uninterrupted `accelerate launch --num_processes 2` on one machine."""
    flags = ["--quiet", "--epochs", "30", "--cycle_epochs", "5", "--members", "2", "--lr_granularity", "iteration",
             "--with_tracking", "--data_pipeline", "device", "--mixed_precision", "no"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(slurm.env, ACCELERATE_USE_CPU="true", GPUS_PER_NODE="1", ACCELERATE=ACCELERATE, MAIN_PORT=str(port))
    cache = copy_pretrained(cache_dir, tmp_path / "c2")
    r = subprocess.run(["sbatch", "--parsable", "--output", str(tmp_path / "multinode-%j.out"), "--chdir", REPO,
                        os.path.join(REPO, "sweeps", "slurm_multinode.sbatch"), "scripts/starsse.py", *flags,
                        "--cache_dir", cache, "--output_dir", str(tmp_path / "nodes")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    one = subprocess.Popen([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                            os.path.join(REPO, "scripts", "starsse.py"), *flags, "--cache_dir",
                            copy_pretrained(cache_dir, tmp_path / "c1"), "--output_dir", str(tmp_path / "one")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, ACCELERATE_USE_CPU="true", **THREADS))
    try:
        log = tmp_path / f"multinode-{job}.out"
        _wait_for(os.path.join(cache, "finetune", "*", "member_1.resume.pt"), log)  # phase I is under way
        slurm.run("scancel", "--batch", "--signal=USR1", job)  # what --signal=B:USR1@120 sends
        _requeued_start(slurm, job, starts=2)
        slurm.wait_done([job], timeout=600)
        _out, err = one.communicate(timeout=600)
    finally:
        one.kill()
    assert one.returncode == 0, err[-3000:]
    text = log.read_text()
    rec = slurm.jobs(job)[0]
    assert rec["JobState"] == "COMPLETED" and rec["NodeList"] == "node[1-2]" and rec["NumNodes"] == "2", (rec, text)
    assert "start 1: 2 nodes (node[1-2]) x 1 processes, main process at 127.0.0.1" in text
    for expected in ("USR1: the time limit is near", "preempted: member 1 (fine-tune) stopped", "requeueing job",
                     "start 2: 2 nodes", "member 1 (fine-tune): resuming at", "exit status 0"):
        assert expected in text, (expected, text)
    # both machines were one world of 2 processes: the phase-I cache entry was trained by 2 processes
    keys = [load_json(p)["processes"] for p in glob.glob(os.path.join(cache, "finetune", "*", "config.json"))]
    assert keys == [2], keys
    lrs_nodes, lrs_one = tb_lrs(str(tmp_path / "nodes")), tb_lrs(str(tmp_path / "one"))
    assert len(lrs_one) == (30 + 5) * 3 and lrs_nodes == lrs_one  # the same schedule, iteration by iteration
    a, b = load_json(tmp_path / "nodes" / "metrics.json"), load_json(tmp_path / "one" / "metrics.json")
    for key in ("member_accuracy", "ensemble_accuracy", "diversity", "nll", "ece"):
        assert a[key] == b[key], key
    for i in (1, 2):
        wa = load_weights(tmp_path / "nodes" / f"member_{i}.safetensors")
        wb = load_weights(tmp_path / "one" / f"member_{i}.safetensors")
        assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa), i
