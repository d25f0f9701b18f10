"""Sweep files and their runner (sweeps/_runner.sh).

The CIFAR-100 sweeps are listed with RUNNER=print and every command they would launch is parsed with the scripts' own
flags; stage 1 must train exactly the phase I the methods reuse. The runner itself is checked on small sweeps of
shell commands: stages in order, JOBS=N at a time, a failed command stops the sweep. (A real Slurm cluster:
tests/test_slurm.py.)
"""
import os
import shlex
import subprocess

import pytest
from conftest import REPO, parse

from lib.settings.schema import PHASE1_KEYS

SWEEPS = ["cifar100_core.sh", "cifar100_cycle_grid.sh", "cifar100_similarity.sh", "cifar100_peft.sh",
          "cifar100_diversity.sh", "cifar100_swin.sh"]
TRAINING = ("finetune.py", "sse.py", "starsse.py", "sse_rtd.py", "starsse_ce.py", "starsse_wo.py", "peft_freeze.py")


def listed(sweep, tmp_path, **env):
    """The stages of a sweep under RUNNER=print: [(stage name, [argv of each command])]."""
    for i in range(1, 6):
        (tmp_path / f"byol-1000ep-{i}.pt").write_bytes(b"")
        (tmp_path / f"swin_{i}.pth").write_bytes(b"")
    full = dict(os.environ, RUNNER="print", DATA=str(tmp_path), CKPT_DIR=str(tmp_path), OUT=str(tmp_path / "o"),
                CACHE=str(tmp_path / "cache"), **env)
    r = subprocess.run(["bash", os.path.join(REPO, "sweeps", sweep)], capture_output=True, text=True, env=full,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    stages = []
    for line in r.stdout.splitlines():
        if line.startswith("# stage "):
            stages.append((line.split()[3].rstrip(":"), []))
        else:
            stages[-1][1].append(shlex.split(line))
    return stages


def script_of(cmd):
    """(script file name, its flags) of a command that may start with a launcher ('accelerate launch ...')."""
    i = next(k for k, a in enumerate(cmd) if a.startswith("scripts/"))
    return os.path.basename(cmd[i]), cmd[i + 1:]


def phase1_key(args):
    """What decides a phase-I cache entry, from the parsed flags: the phase-I settings, checkpoint and seed."""
    return tuple((k, str(getattr(args, k))) for k in PHASE1_KEYS if hasattr(args, k)) + (("pretrained", args.pretrained[0]),)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_commands_parse(tmp_path, sweep):
    stages = listed(sweep, tmp_path)
    final = ["final_phase1", "final", "final_report"] if sweep == "cifar100_cycle_grid.sh" else []  # issue 26 (10)
    assert [name for name, _ in stages] == ["phase1", "methods", "report"] + final
    (_, phase1), (_, methods), (_, report) = stages[:3]
    # stage 1: one plain fine-tune per checkpoint x seed, each the phase I that the methods reuse
    shared = {}
    for cmd in phase1:
        script, flags = script_of(cmd)
        assert script == "finetune.py" and cmd[:2] == ["accelerate", "launch"]
        args = parse(flags, script)
        assert args.members is None and len(args.pretrained) == 1 and not args.output_dir.startswith(str(tmp_path / "o"))
        shared[phase1_key(args)] = args.output_dir
    assert len(shared) == len(phase1) and len(set(shared.values())) == len(phase1)
    scripts, needs_phase1 = set(), 0
    for cmd in methods:
        script, flags = script_of(cmd)
        scripts.add(script)
        assert script in TRAINING
        args = parse(flags, script)
        assert args.dataset == "cifar100" and args.batch_size == 256
        assert args.val_split == 0.1 and args.mixed_precision == "fp16"  # issue 13: settings chosen on validation
        if sweep == "cifar100_swin.sh":
            assert (args.arch, args.optimizer, args.lr, args.weight_decay, args.epochs) == \
                ("timm/swin_tiny_patch4_window7_224", "adamw", 1e-4, 0.25, 102)
            assert (args.warmup_epochs, args.warmup_lr, args.clip_grad, args.label_smoothing) == (10.2, 5e-7, 5, 0.1)
            assert (args.mixup, args.cutmix, args.augment, args.auto_augment, args.reprob, args.drop_path) == \
                (0.8, 1.0, "model", "rand-m9-mstd0.5-inc1", 0.25, 0.1)
            assert (args.data_pipeline, args.image_size) == ("torchvision", 224)
            # issue 26 (8): the reference's per-epoch warm-up of int(10.2) = 10 epochs, Resize 256 + CenterCrop 224,
            # the last short batch dropped
            assert (args.warmup_granularity, args.test_resize, args.drop_last) == ("epoch", 256, True)
            if script != "finetune.py":
                assert args.members == 5
                if "/grid/" not in args.output_dir:  # the reference code's shipped cycle: 1x lr, 1x epochs
                    assert (args.cycle_lr, args.cycle_epochs) == (1e-4, 102)
        else:
            assert args.epochs == 25 and args.lr == 0.05 and args.weight_decay == 1e-4
        if len(args.pretrained) == 1 and "--standard" not in flags and script != "peft_freeze.py":
            needs_phase1 += 1  # its member 1 is the phase I of stage 1: the same cache entry
            assert phase1_key(args) in shared, cmd
    assert needs_phase1 > 0
    # stage 3: the table, with each method's setting chosen on the validation split
    assert [script_of(c)[0] for c in report] == ["report.py"]
    assert "--select_by" in report[0] and report[0][report[0].index("--select_by") + 1] == "val"
    commands = [c for _, cs in stages for c in cs]
    if sweep == "cifar100_core.sh":
        assert scripts == {"sse.py", "starsse.py", "finetune.py"}
        assert len(methods) == 2 * 3 * 3 + 3 and len(phase1) == 2 * 3
        assert len([c for c in methods if c.count("--pretrained") == 1
                    and len(c) - c.index("--pretrained") > 5 and c[c.index("--pretrained") + 5].endswith("5.pt")]) == 3
    elif sweep == "cifar100_cycle_grid.sh":
        assert len(methods) == 2 * 2 * 5 * 4 * 3 and len(phase1) == 2 * 2
        points = {}
        for c in methods:
            args = parse(script_of(c)[1], script_of(c)[0])
            kind = "standard" if "--standard" in c else script_of(c)[0]
            points.setdefault(kind, set()).add((round(args.cycle_lr, 6), args.cycle_epochs))
        grid = {(round(0.05 * a, 6), int(25 * b)) for a in (0.25, 0.5, 1, 2, 4) for b in (0.5, 1, 2, 4)}
        for kind in ("sse.py", "starsse.py", "standard"):  # issue 14b: Standard SSE at every grid point
            assert points[kind] == grid
        # the final retrain (issue 26 (10)): each method's setting selected on validation (report.py writes it as
        # <report>/selected/<method>.yaml), retrained on the full training set for every checkpoint x seed
        (_, final_phase1), (_, final_runs), (_, final_report) = stages[3:]
        selected = os.path.join(report[0][report[0].index("--out") + 1], "selected")
        os.makedirs(selected)
        chosen = {"sse": ("SSE", 0.2, 25), "starsse": ("StarSSE", 0.1, 12), "standard_sse": ("Standard SSE", 0.05, 6)}
        for name, (method, lr, ep) in chosen.items():
            with open(os.path.join(selected, f"{name}.yaml"), "w") as f:
                f.write(f"method: {method}\ncycle_lr: {lr}\ncycle_epochs: {ep}\n")
        full = {}
        for cmd in final_phase1:
            args = parse(script_of(cmd)[1], "finetune.py")
            assert args.val_split is None and args.members is None
            full[phase1_key(args)] = args.output_dir
        assert len(full) == len(final_phase1) == 2 * 3 and not set(full) & set(shared)  # another phase I
        done = set()
        for cmd in final_runs:
            script, flags = script_of(cmd)
            args = parse(flags, script)
            name = os.path.basename(os.path.dirname(args.output_dir))
            assert args.config == os.path.join(selected, f"{name}.yaml") and args.val_split is None
            assert (args.cycle_lr, args.cycle_epochs) == chosen[name][1:] and phase1_key(args) in full
            assert ("--standard" in flags) == (name == "standard_sse") and args.members == 5
            done.add((name, args.pretrained[0], args.seed))
        assert len(done) == len(final_runs) == 3 * 2 * 3
        assert [script_of(c)[0] for c in final_report] == ["report.py"] and "--select_by" not in final_report[0]
    elif sweep == "cifar100_similarity.sh":
        def grid(sim):
            found = {}
            for c in methods:
                if sim in c and "--star" not in c and "--reference" not in c:
                    layers = tuple(c[c.index("--layers") + 1:c.index("--similarity")])
                    found.setdefault(layers, set()).add(float(c[c.index("--alpha") + 1]))
            return found
        layer_sets = {("stage2",), ("stage3",), ("stage4",), ("stage5",), ("avgpool",),
                      ("stage2", "stage3", "stage4", "stage5", "avgpool")}
        rtd, mse = grid("rtd"), grid("mse")
        assert set(rtd) == set(mse) == layer_sets  # issue 14c: each layer alone and all five together
        assert all(a == {0.0316, 0.1, 0.316, 1, 3.16, 10} for a in rtd.values())
        assert all(a == {0.1, 1, 10, 20, 40} for a in mse.values())
        for reference in ("pretrained", "pretrained_phase1"):  # issue 26 (7): cycles 2..M only, or from phase I on
            ref = {(c[c.index("--similarity") + 1], float(c[c.index("--alpha") + 1])) for c in methods
                   if "--reference" in c and c[c.index("--reference") + 1] == reference}
            assert ref == {("rtd", 0.0316), ("mse", 20)}
        star = [parse(script_of(c)[1], "sse_rtd.py") for c in methods if "--star" in c]
        assert {(a.similarity, a.alpha, a.cycle_lr, a.cycle_epochs) for a in star} == \
            {("rtd", 0.0316, 0.1, 12), ("mse", 10, 0.2, 12)}  # issue 26 (6): StarSSE-MSE at 4x the lr, as the thesis
    elif sweep == "cifar100_diversity.sh":
        ce = {(c[c.index("--mode") + 1], float(c[c.index("--alpha") + 1])) for c in methods if script_of(c)[0] == "starsse_ce.py"}
        assert ce == {(m, a) for m in ("all", "incorrect") for a in (0.00316, 0.01, 0.0316, 0.1, 0.316)}
        wo = {float(c[c.index("--alpha") + 1]) for c in methods if script_of(c)[0] == "starsse_wo.py"}
        assert wo == {-31.6, -10, -3.16, 1, 3.16, 10, 31.6}
    elif sweep == "cifar100_peft.sh":
        grid = {(c[c.index("--freeze") + 1], float(c[c.index("--cycle_lr_mult") + 1]), c[c.index("--frozen_bn") + 1])
                for c in methods if script_of(c)[0] == "starsse.py"}
        assert grid == {(f, float(m), bn) for f in ("stage4", "stage5", "head") for m in range(1, 7) for bn in ("train", "eval")}
        local = {(c[c.index("--freeze") + 1], c[c.index("--frozen_bn") + 1]) for c in methods if script_of(c)[0] == "peft_freeze.py"}
        assert local == {(f, bn) for f in ("stage4", "stage5", "head") for bn in ("train", "eval")}  # issue 14a
        assert "frozen_bn" in report[0]  # train and eval are different rows
    elif sweep == "cifar100_swin.sh":
        assert {script_of(c)[0] for c in methods} == {"finetune.py", "sse.py", "starsse.py"}
        global_de = [c for c in methods if c.count("--pretrained") == 1 and c[c.index("--pretrained") + 5].endswith("swin_5.pth")]
        grid = [c for c in methods if "/grid/" in c[c.index("--output_dir") + 1]]
        assert len(global_de) == 3 and len(methods) - len(grid) == 2 * 3 * 3 + 3
        # issue 26 (4): the reference's Swin grid, ratios of 1e-4 and 102 epochs, on 2 checkpoints x 2 seeds; its
        # 1x / 1x point is the rows above (trained once)
        points = {}
        for c in grid:
            args = parse(script_of(c)[1], script_of(c)[0])
            points.setdefault(script_of(c)[0], []).append((round(args.cycle_lr, 12), args.cycle_epochs,
                                                           args.pretrained[0], args.seed))
        expected = sorted((round(1e-4 * a, 12), int(102 * b), str(tmp_path / f"swin_{k}.pth"), s)
                          for a in (0.25, 0.5, 1, 2, 4) for b in (0.5, 1, 2, 4) if (a, b) != (1, 1)
                          for k in (1, 2) for s in (0, 1))
        assert sorted(points["sse.py"]) == sorted(points["starsse.py"]) == expected and len(expected) == 19 * 4
        assert len(phase1) == 2 * 3  # the grid's seeds are among the rows' seeds
    outputs = [c[c.index("--output_dir") + 1] for c in commands if "--output_dir" in c]
    assert len(outputs) == len(set(outputs))  # no two runs write one folder


def test_precision_and_validation_switches(tmp_path):
    """PRECISION=no trains in fp32 (the reference code); VAL_SPLIT=none trains on all 50,000 images."""
    stages = listed("cifar100_core.sh", tmp_path, PRECISION="no", VAL_SPLIT="none")
    training = [c for name, cs in stages if name != "report" for c in cs]
    for cmd in training:
        args = parse(script_of(cmd)[1], script_of(cmd)[0])
        assert args.mixed_precision == "no" and args.val_split is None
    assert "--select_by" not in stages[-1][1][0]
    # nothing selected on validation, nothing to retrain on the full set: the cycle grid has no final stages
    assert [name for name, _ in listed("cifar100_cycle_grid.sh", tmp_path, VAL_SPLIT="none")] == \
        ["phase1", "methods", "report"]
    assert [name for name, _ in listed("cifar100_cycle_grid.sh", tmp_path, FINAL="0")] == ["phase1", "methods", "report"]
    r = subprocess.run(["bash", os.path.join(REPO, "sweeps", "cifar100_core.sh")], capture_output=True, text=True,
                       env=dict(os.environ, RUNNER="print", DATA=str(tmp_path), PRECISION="fp8"), timeout=60)
    assert r.returncode == 2 and "PRECISION must be" in r.stderr


def test_demo_lists_one_line_per_run(tmp_path):
    stages = listed("demo.sh", tmp_path, PY="python")
    assert [name for name, _ in stages] == ["pretrain", "phase1", "methods", "soups", "report", "use"]
    (_, pretrain), (_, phase1), (_, methods), (_, soups), (_, report), (_, use) = stages
    assert len(pretrain) == 4 and len(phase1) == 2 and len(methods) == 2 * 11 and len(report) == 2
    names = ("scratch", "local_de", "global_de", "standard_sse", "sse", "starsse", "sse_rtd", "sse_mse",
             "starsse_freeze", "starsse_ce", "starsse_wo")
    outputs = sorted(c[c.index("--output_dir") + 1].split("/o/")[1] for c in methods)
    assert outputs == sorted(f"{m}/run{r}" for r in (0, 1) for m in names)
    # a soup of every run but the one-member scratch baseline
    assert sorted(c[c.index("scripts/soup.py") + 1].split("/o/")[1] for c in soups) == \
        sorted(f"{m}/run{r}" for r in (0, 1) for m in names if m != "scratch")
    for cmd in phase1 + methods:
        script, flags = script_of(cmd)
        parse(flags, script)
    # the last step: a few predictions of run 0 of StarSSE on test digits, three lines of their CSV shown
    [use] = use
    preds = str(tmp_path / "o" / "use" / "preds.csv")
    assert script_of(use) == ("predict.py", [str(tmp_path / "o" / "starsse" / "run0"), "--data", "test", "--limit",
                                             "8", "--out", preds, "&&", "head", "-n", "3", preds])
    # a subset: RUNS and METHODS (the pre-training stage then makes only the checkpoints it needs)
    stages = listed("demo.sh", tmp_path, PY="python", RUNS="1", METHODS="starsse local_de")
    assert [len(cs) for _, cs in stages] == [1, 1, 2, 2, 2, 1]
    assert script_of(stages[-1][1][0])[1][0] == str(tmp_path / "o" / "starsse" / "run1")
    assert stages[0][1][0][-3:] == ["1", "--cache_dir", str(tmp_path / "cache")]
    stages = listed("demo.sh", tmp_path, PY="python", RUNS="0", METHODS="scratch")
    assert [len(cs) for _, cs in stages] == [1, 0, 1, 0, 2, 1]  # no phase I to share, nothing to average
    assert script_of(stages[-1][1][0])[1][0] == str(tmp_path / "o" / "scratch" / "run0")  # the one method run


# ----------------------------------------------------------------------------------------------------------------
# the runner on small sweeps of shell commands

def mini_sweep(tmp_path, body, **env):
    """Run a sweep file that sources the runner and defines `body` (stages of shell commands)."""
    sweep = tmp_path / "mini.sh"
    sweep.write_text(f"set -euo pipefail\nsource {REPO}/sweeps/_runner.sh\nOUT={tmp_path}/out\n{body}\nfinish\n")
    return subprocess.run(["bash", str(sweep)], capture_output=True, text=True, env=dict(os.environ, **env),
                          timeout=120, cwd=tmp_path)


@pytest.mark.slow
def test_local_runner_runs_stages_in_order_and_n_at_a_time(tmp_path):
    log = tmp_path / "log"
    # each command appends "start i" and "end i" (with a pause between): JOBS=2 overlaps two commands of a stage,
    # never commands of two stages
    step = "run bash -c 'echo start $0 >> {log}; sleep 0.6; echo end $0 >> {log}; echo result $0' {i}"
    body = "stage one 'stage one'\n" + "\n".join(step.format(log=log, i=i) for i in (1, 2, 3, 4)) + \
           "\nstage two 'stage two'\n" + step.format(log=log, i=5)
    r = mini_sweep(tmp_path, body, JOBS="2")
    assert r.returncode == 0, r.stderr
    events = log.read_text().split("\n")[:-1]
    assert sorted(events[:2]) == ["start 1", "start 2"]  # two at a time
    assert events.index("start 5") > max(events.index(f"end {i}") for i in (1, 2, 3, 4))  # stage two after stage one
    running = [sum(e.startswith("start") for e in events[:k + 1]) - sum(e.startswith("end") for e in events[:k + 1])
               for k in range(len(events))]
    assert max(running) == 2  # never more than JOBS
    assert {line.split("] ")[1] for line in r.stdout.splitlines() if line.startswith("[")} == \
        {f"result {i}" for i in (1, 2, 3, 4, 5)}  # each command's last line, when it ends
    assert (tmp_path / "out" / "local" / "mini.one-3.out").read_text() == "result 3\n"
    # sequential (the default): the same order, one at a time, output on the terminal
    log.unlink()
    r = mini_sweep(tmp_path, body)
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == " ".join(f"start {i} end {i}" for i in (1, 2, 3, 4, 5)).split()
    assert [line for line in r.stdout.splitlines() if line.startswith("result")] == [f"result {i}" for i in range(1, 6)]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failed_command_fails_the_stage_and_stops_the_sweep(tmp_path, jobs):
    body = "stage one\nrun true\nrun bash -c 'echo broken >&2; exit 3'\nrun true\nstage two\nrun touch {}/never".format(tmp_path)
    r = mini_sweep(tmp_path, body, JOBS=jobs)
    assert r.returncode != 0
    assert not (tmp_path / "never").exists()
    if jobs == "1":
        assert r.returncode == 3 and "command 2/3 failed (exit status 3)" in r.stderr
    else:
        assert "FAILED (exit status 3)" in r.stderr and "broken" in r.stderr and "1 of 3 commands failed" in r.stderr


def test_runner_keeps_arguments_exactly_and_refuses_bad_settings(tmp_path):
    weird = ["a b", "it's", "$HOME", "*", "x\"y", ""]
    body = "stage one\nrun printf '<%s>' " + " ".join(shlex.quote(w) for w in weird)
    r = mini_sweep(tmp_path, body)
    assert r.returncode == 0 and r.stdout.endswith("".join(f"<{w}>" for w in weird)), r.stdout
    r = mini_sweep(tmp_path, body, RUNNER="print")
    assert shlex.split(r.stdout.splitlines()[1]) == ["printf", "<%s>", *weird]
    for env, message in [({"RUNNER": "cloud"}, "RUNNER must be local, slurm or print"), ({"JOBS": "0"}, "JOBS must be"),
                         ({"ARRAY_LIMIT": "x"}, "ARRAY_LIMIT must be")]:
        r = mini_sweep(tmp_path, body, **env)
        assert r.returncode == 2 and message in r.stderr


def test_local_runner_gives_each_running_command_its_own_gpu(tmp_path):
    log = tmp_path / "log"
    step = "run bash -c 'echo start $0 $CUDA_VISIBLE_DEVICES >> {log}; sleep 0.{i}; echo end $0 >> {log}' {i}"
    body = "stage one\n" + "\n".join(step.format(log=log, i=i) for i in (3, 1, 4, 2, 5))
    r = mini_sweep(tmp_path, body, JOBS="2", GPUS="0,1 2,3")
    assert r.returncode == 0, r.stderr
    running = {}
    for event in log.read_text().splitlines():
        kind, i, *gpu = event.split()
        if kind == "start":
            assert gpu[0] in ("0,1", "2,3") and gpu[0] not in running.values()  # never two on one GPU set
            running[i] = gpu[0]
        else:
            del running[i]
    r = mini_sweep(tmp_path, body, JOBS="3", GPUS="0 1")
    assert r.returncode == 2 and "GPUS needs one entry per running command" in r.stderr
