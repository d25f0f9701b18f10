"""StarSSE wall time with 2 processes: --member_parallel (each process trains whole rays, 1 thread each) against
the sequential one-process run (2 threads), on the embedded default with 5 members and longer cycles, phase I
already cached for both (it is shared and is not parallelised). Each command runs as a user would run it.

    python benchmarks/member_parallel.py
"""
import os
import shutil
import subprocess
import sys
import tempfile

from _timing import compare, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
ACCELERATE = os.path.join(os.path.dirname(PY), "accelerate")
tmp = tempfile.mkdtemp()
FLAGS = ["--quiet", "--members", "5", "--cycle_epochs", "200", "--cache_dir", os.path.join(tmp, "cache")]
subprocess.run([PY, f"{REPO}/scripts/starsse.py", *FLAGS, "--members", "1", "--output_dir", f"{tmp}/warm"],
               check=True, capture_output=True)  # phase I and the embedded checkpoint, once, into the shared cache
runs = [0]


def fresh_out():
    runs[0] += 1
    return os.path.join(tmp, f"run{runs[0]}")


def sequential():
    subprocess.run([PY, f"{REPO}/scripts/starsse.py", *FLAGS, "--output_dir", fresh_out()], check=True,
                   capture_output=True)


def member_parallel():
    env = dict(os.environ, ACCELERATE_USE_CPU="true")
    r = subprocess.run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", f"{REPO}/scripts/starsse.py", *FLAGS,
                        "--member_parallel", "--output_dir", fresh_out()], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"member-parallel run failed:\n{r.stderr[-4000:]}")


results = compare({"sequential (1 process)": sequential, "member-parallel (2 processes)": member_parallel},
                  reps=3, warmup=0)
report("StarSSE, 4 rays of 200 epochs (digits), whole command wall time", results, "sequential (1 process)")
shutil.rmtree(tmp)
