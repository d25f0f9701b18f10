"""Never silently wrong: divergence stops the run, what is read back is verified, everything is checked before
anything is written, environment faults are one line, and records survive resumes. Each test first reproduces the
fault (the command, the damaged file, the full disk) and then checks the one-line message, the exit status and that
nothing on disk was lost or poisoned."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import INTERRUPTED, REPO, mounted_tmpfs, needs_root, run_script, run_scripts, signalled_at_start

from lib.infra.files import load_json, save_weights


def _one_error_line(r, *patterns, status=2):
    assert r.returncode == status, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for p in patterns:
        assert p in lines[0], lines[0]
    return lines[0]


def _finished_entries(cache):
    return [d for d in glob.glob(os.path.join(cache, "finetune", "*")) if os.path.isfile(os.path.join(d, "member_1.json"))]


def test_divergence_stops_saves_nothing_and_the_corrected_rerun_works(tmp_path, fresh_cache):
    cache, out = fresh_cache(), tmp_path / "x"
    flags = ["--cpu", "--quiet", "--members", "3", "--epochs", "2", "--cycle_epochs", "2", "--cache_dir", cache,
             "--output_dir", out]
    line = _one_error_line(run_script("starsse.py", *flags, "--lr", "1e6"), "member 1 (fine-tune)", "NaN or infinite",
                           "at epoch 1, step", "nothing of this member was saved")
    assert "the ce loss became" in line or "the weights (" in line  # the loss term, or the tensor after a finite loss
    assert not glob.glob(str(out / "member_*")) and not _finished_entries(cache)  # nothing poisoned, no cached phase I
    r = run_script("starsse.py", *flags)  # the corrected command, same directory: accepted (nothing was trained there)
    assert r.returncode == 0, r.stderr
    met = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert all(np.isfinite(met["member_accuracy"]))


def test_a_regulariser_that_diverges_names_its_term(tmp_path, tiny):
    r = run_script("sse_rtd.py", *tiny, "--similarity", "mse", "--alpha", "1e300", "--members", "2",
                   "--output_dir", tmp_path / "m")
    _one_error_line(r, "member 2 (cycle)", "the mse loss became NaN or infinite")
    assert (tmp_path / "m" / "member_1.json").exists() and not (tmp_path / "m" / "member_2.json").exists()


def test_checkpoint_with_a_nan_is_refused_before_training(tmp_path, cache_dir):
    from lib.models.checkpoints import read_checkpoint
    state = read_checkpoint(os.path.join(cache_dir, "pretrained", "digits-byol-seed0.safetensors"))
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_weights(str(bad), state)
    r = run_script("starsse.py", "--cpu", "--pretrained", bad, "--cache_dir", cache_dir, "--output_dir", tmp_path / "o")
    _one_error_line(r, "layer2.0.conv1.weight holds NaN or inf")
    assert not (tmp_path / "o").exists()


def test_metrics_json_is_strict(tmp_path, tiny):
    r = run_script("finetune.py", *tiny, "--members", "1", "--output_dir", tmp_path / "one")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "one" / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["diversity"] is None  # the diversity of one member does not exist


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, cache_dir):
    """Two finished 2-member StarSSE runs sharing one fresh phase-I cache."""
    import shutil
    root = tmp_path_factory.mktemp("verify")
    cache = root / "cache"
    shutil.copytree(os.path.join(cache_dir, "pretrained"), cache / "pretrained")
    flags = ["--cpu", "--quiet", "--epochs", "2", "--cycle_epochs", "1", "--members", "2", "--cache_dir", cache]
    for name in ("a", "b"):
        r = run_script("starsse.py", *flags, "--output_dir", root / name)
        assert r.returncode == 0, r.stderr
    return root, flags


def test_damaged_member_files_are_named_and_never_spread(two_runs):
    root, flags = two_runs
    a = root / "a"
    rec = load_json(a / "member_1.json")
    assert set(rec["sha256"]) == {"weights", "probs", "logits"} and "record_sha256" in rec
    cached = load_json(a / "member_1.json")["cached"]
    assert not os.path.samefile(a / "member_1.safetensors", os.path.join(cached, "member_1.safetensors"))  # a copy
    # 1. a truncated weight file: one line naming it, saying it is damaged and how to recover
    w = a / "member_1.safetensors"
    good = w.read_bytes()
    w.write_bytes(good[: len(good) // 2])
    _one_error_line(run_script("starsse.py", *flags, "--output_dir", a), str(w), "is damaged",
                    "delete member 1's files")
    # ... and the cache was not damaged with it: a new run reusing phase I gets the good member 1
    r = run_script("starsse.py", *flags, "--members", "1", "--output_dir", root / "c")
    assert r.returncode == 0, r.stderr
    assert (root / "c" / "member_1.safetensors").read_bytes() == good
    # 2. a same-size corruption of the probabilities is noticed too
    w.write_bytes(good)
    p = a / "member_2_probs.npy"
    data = bytearray(p.read_bytes())
    data[-7] ^= 0xFF
    p.write_bytes(bytes(data))
    _one_error_line(run_script("starsse.py", *flags, "--output_dir", a), str(p), "is damaged")
    # 3. recovering as told: delete member 2's files, re-run: retrained, identical
    for f in glob.glob(str(a / "member_2*")):
        os.remove(f)
    r = run_script("starsse.py", *flags, "--output_dir", a)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(a / "member_2_probs.npy"), np.load(root / "b" / "member_2_probs.npy"))


def test_everything_is_checked_before_anything_is_written(tmp_path, cache_dir):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    base = ["--cpu", "--quiet", "--cache_dir", cache_dir]
    cases = [(["--seed", "-1"], "--seed must be >= 0"),
             (["--lr", "1e308"], "--lr 1e+308 with --momentum 0.9 gives steps that overflow"),
             (["--cache_dir", a_file], "is a file, not a folder"),
             (["--output_dir", a_file / "run"], "is a file, not a folder")]
    outs = [tmp_path / f"out{i}" for i in range(len(cases))]
    results = run_scripts([("starsse.py", *base, "--output_dir", out, *flags) for (flags, _), out in zip(cases, outs)]
                          + [("starsse.py", *base, "--output_dir", a_file)])
    for (_, pattern), out, r in zip(cases + [(None, "is a file, not a folder")], outs + [None], results):
        _one_error_line(r, pattern)
        assert out is None or not out.exists()
    assert a_file.read_text() == "x"


@pytest.mark.slow
def test_batch_size_not_divisible_by_the_processes_is_refused_first(tmp_path, cache_dir):
    from conftest import ACCELERATE
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    r = subprocess.run([ACCELERATE, "launch", "-q", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", os.path.join(REPO, "scripts", "starsse.py"),
                        "--batch_size", "15", "--cache_dir", cache_dir, "--output_dir", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "--batch_size 15 must be divisible by the number of processes (2)" in r.stderr
    assert not (tmp_path / "o").exists()


@needs_root("mounts a full and a read-only tmpfs")
def test_full_disk_and_read_only_folder_are_one_line(tmp_path, cache_dir):
    full, ro = tmp_path / "full", tmp_path / "ro"
    # a 2-member resnet_mini run: 0.7 MB of weights a member, 1.5 MB a resume point
    with mounted_tmpfs(full, "size=8m"), mounted_tmpfs(ro, "ro,size=64k"):
        flags = ["--cpu", "--quiet", "--epochs", "1", "--cycle_epochs", "1", "--members", "2", "--cache_dir", cache_dir]
        (full / "ballast").write_bytes(b"\0" * 7_800_000)  # room for the config and labels, not for a member
        r = run_script("starsse.py", *flags, "--output_dir", full / "run")
        _one_error_line(r, "the disk is full (writing", "re-run the same command to resume")
        assert not glob.glob(str(full / "run" / "*.tmp"))  # nothing half-written
        (full / "ballast").unlink()
        r = run_script("starsse.py", *flags, "--output_dir", full / "run")  # room again: the same command finishes
        assert r.returncode == 0, r.stderr
        _one_error_line(run_script("starsse.py", *flags, "--output_dir", ro / "run"), "read-only file system")


def test_ctrl_c_during_start_up_is_one_line(tmp_path, cache_dir):
    r = signalled_at_start("starsse.py", signal.SIGINT, "--cpu", "--cache_dir", cache_dir, "--output_dir",
                           tmp_path / "o")
    assert r.returncode == 130 and r.stderr.strip() == "interrupted while starting: nothing was written", r.stderr
    assert not (tmp_path / "o").exists()


def test_leftovers_of_a_killed_process_are_cleaned_at_the_next_start(two_runs):
    root, flags = two_runs
    a = root / "a"
    (a / "member_2.safetensors.x1y2.tmp").write_bytes(b"half")  # an orphaned temporary file
    (a / "member_2.resume.pt").write_bytes(b"stale")  # a resume point of a member that was finished
    r = run_script("starsse.py", *flags, "--output_dir", a)
    assert r.returncode == 0, r.stderr
    assert not glob.glob(str(a / "*.tmp")) and not (a / "member_2.resume.pt").exists()
    modes = {f: os.stat(f).st_mode & 0o777 for f in glob.glob(str(a / "member_*"))}
    assert len(set(modes.values())) == 1, modes  # weight files have the permissions of the rest of the run


@pytest.mark.slow
def test_preempted_run_resumes_to_the_same_result(tmp_path, fresh_cache, uninterrupted):
    """SIGTERM (what Slurm sends) mid-run: the current step finishes, the resume point is written, exit 75; the same
    command resumes mid-epoch and ends identical to an uninterrupted run."""
    ref, out, cache = uninterrupted, tmp_path / "pre", fresh_cache("c2")
    cmd = [sys.executable, os.path.join(REPO, "scripts", "starsse.py"), *INTERRUPTED, "--cache_dir", cache,
           "--output_dir", str(out)]
    def points():
        return {(f, os.stat(f).st_mtime_ns) for f in glob.glob(f"{cache}/**/*.resume.pt", recursive=True) +
                glob.glob(str(out / "*.resume.pt")) if os.path.exists(f)}
    stops = 0
    for _ in range(8):  # a SIGTERM as soon as the run writes a new resume point: in phase I, then in each cycle
        seen = points()  # including the one the last stop wrote
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and not points() - seen:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            break
        assert proc.returncode == 75 and err.strip().startswith("preempted: ") and "Traceback" not in err, err
        stops += 1
    assert proc.returncode == 0 and stops >= 2
    a, b = load_json(ref / "metrics.json"), load_json(out / "metrics.json")
    assert a["member_accuracy"] == b["member_accuracy"] and a["nll"] == b["nll"]
    for i in (1, 2):
        assert np.array_equal(np.load(ref / f"member_{i}_probs.npy"), np.load(out / f"member_{i}_probs.npy"))
    rec = load_json(out / "member_2.json")
    assert [h["epoch"] for h in rec["history"]] == [1, 2] and rec["seconds_per_epoch"] is not None


@pytest.mark.slow
def test_truncated_resume_point_after_a_stop_is_one_line_and_the_run_finishes(tmp_path, fresh_cache):
    """SIGTERM mid-cycle, then `truncate -s 1000 member_2.resume.pt`: the re-run says in one line (naming the file)
    that the resume point is damaged, trains member 2 again from its start and finishes (exit 0, no traceback)."""
    out = tmp_path / "t"
    flags = ["--cpu", "--quiet", "--epochs", "2", "--cycle_epochs", "6", "--members", "2", "--cache_dir", fresh_cache(),
             "--output_dir", out]
    point = out / "member_2.resume.pt"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "starsse.py"), *map(str, flags)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not point.exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75 and point.exists(), err
    os.truncate(point, 1000)
    r = run_script("starsse.py", *flags)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip() == f"warning: member 2 (cycle): its resume point {point} is damaged (cut short, or not a " \
                               f"resume point: RuntimeError); restarting this member from its start"
    assert "member 2 (cycle): resuming" not in r.stdout
    rec = load_json(out / "member_2.json")
    assert [h["epoch"] for h in rec["history"]] == list(range(1, 7)) and not point.exists()
