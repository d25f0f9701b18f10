"""The training loop and the algorithms on the embedded default (tiny sizes, CPU, fp32)."""
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_script, settings, tb_lrs
from torch.utils.data import TensorDataset

from lib.infra.files import load_json, load_weights
from lib.settings.schema import LoopSettings
from lib.training.experiment import Experiment
from lib.training.loop import Member, Schedule, fit, make_accelerator


def _loop(**kw):
    return LoopSettings(**{**dict(batch_size=8, momentum=0.9, weight_decay=0.01, quiet=True), **kw})


def test_fit_is_sgd_with_momentum_and_each_call_starts_with_zero_momentum(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    model = torch.nn.Linear(4, 3)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    loop = _loop()
    acc = make_accelerator(cpu=True)

    def grads(state):  # full-batch gradient of CE + nothing else (weight decay is added by SGD)
        m = torch.nn.Linear(4, 3)
        m.load_state_dict(state)
        F.cross_entropy(m(x), y).backward()
        return {"weight": m.weight.grad, "bias": m.bias.grad}

    model, _, iters = fit(acc, model, TensorDataset(x, y), loop, Schedule(np.array([0.1, 0.05]), 2),
                          Member(str(tmp_path / "a.pt"), seed=1))
    assert iters == 1
    # by hand: buf1 = g0 + wd w0; w1 = w0 - 0.1 buf1; buf2 = 0.9 buf1 + g1 + wd w1; w2 = w1 - 0.05 buf2
    g0 = grads(w0)
    buf1 = {k: g0[k] + 0.01 * w0[k] for k in g0}
    w1 = {k: w0[k] - 0.1 * buf1[k] for k in g0}
    g1 = grads(w1)
    buf2 = {k: 0.9 * buf1[k] + g1[k] + 0.01 * w1[k] for k in g0}
    w2 = {k: w1[k] - 0.05 * buf2[k] for k in g0}
    for k in w2:
        assert torch.allclose(model.state_dict()[k], w2[k], atol=1e-6)
    # a new cycle: momentum is reset, so its first step is a plain gradient step
    start = {k: v.clone() for k, v in model.state_dict().items()}
    model, _, _ = fit(acc, model, TensorDataset(x, y), loop, Schedule(np.array([0.2]), 1),
                      Member(str(tmp_path / "b.pt"), seed=2))
    g = grads(start)
    for k in g:
        assert torch.allclose(model.state_dict()[k], start[k] - 0.2 * (g[k] + 0.01 * start[k]), atol=1e-6)


def _run(method, flags, cycle_from=None):
    exp = Experiment(settings(flags, method))
    w1 = exp.finetune(1)
    w = w1
    for i in range(2, exp.cfg.members + 1):
        w = exp.cycle(i, init=w if method == "SSE" else w1)
    exp.finish()
    return exp


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_sse_keeps_its_trajectory_while_starsse_restarts_from_model_1(tmp_path, tiny):
    sse = _run("SSE", tiny + ["--output_dir", tmp_path / "sse"])
    star = _run("StarSSE", tiny + ["--output_dir", tmp_path / "star"])
    w = {i: load_weights(sse.run.weights(i)) for i in (1, 2, 3)}
    s = {i: load_weights(star.run.weights(i)) for i in (1, 2, 3)}
    # phase I is trained once: both runs hold the same cached model 1
    assert load_json(sse.run.record(1))["cached"] == load_json(star.run.record(1))["cached"]
    assert _equal(w[1], s[1])
    assert _equal(w[2], s[2])  # cycle 2 starts from model 1 in both, with the same (seed, member) randomness
    assert not _equal(w[3], s[3]) and not _equal(w[1], w[2])
    # member 3 is exactly a cycle from model 2 in SSE and a cycle from model 1 in StarSSE
    exp = Experiment(settings(tiny + ["--output_dir", tmp_path / "check_sse"], "check"))
    assert _equal(exp.cycle(3, init=w[2]), w[3])
    exp = Experiment(settings(tiny + ["--output_dir", tmp_path / "check_star"], "check"))
    assert _equal(exp.cycle(3, init=w[1]), s[3])
    # records say what was trained
    rec = load_json(sse.run.record(3))
    assert rec["epochs"] == 1 and rec["lr_start"] == pytest.approx(0.02) and rec["trainable_fraction"] == 1.0


def test_local_de_member_1_is_phase_1_and_members_are_independent(tmp_path, tiny):
    flags = tiny + ["--members", "2", "--output_dir", tmp_path / "local"]
    args = settings(flags, "Local DE")
    exp = Experiment(args)
    m1, m2 = exp.finetune(1), exp.finetune(2)
    assert not _equal(m1, m2)
    sse = _run("SSE", tiny + ["--members", "2", "--output_dir", tmp_path / "sse"])
    assert _equal(load_weights(sse.run.weights(1)), m1)
    # a member does not depend on how many members ran before it in this process
    fresh = Experiment(settings(tiny + ["--members", "2", "--output_dir", tmp_path / "only2"], "Local DE"))
    shutil.rmtree(os.path.join(args.cache_dir, "finetune"))  # force re-training member 2 alone
    assert _equal(fresh.finetune(2), m2)


def test_global_de_fine_tunes_each_checkpoint(tmp_path, tiny, cache_dir):
    ck = [os.path.join(cache_dir, "pretrained", f"digits-byol-seed{s}.safetensors") for s in (0, 1)]
    r = run_script("finetune.py", *tiny, "--members", "2", "--pretrained", *ck, "--output_dir", tmp_path / "g")
    assert r.returncode == 0, r.stderr
    m = load_json(tmp_path / "g" / "metrics.json")
    assert m["method"] == "Global DE" and m["members"] == 2
    assert load_json(tmp_path / "g" / "member_2.json")["init"] == f"pretrained:{ck[1]}"


def test_fine_tuning_really_learns(tmp_path, tiny):
    flags = tiny + ["--members", "1", "--epochs", "15", "--lr", "0.05", "--output_dir", tmp_path / "ft"]
    exp = Experiment(settings(flags, "Fine-tune"))
    exp.finetune(1)
    result = exp.finish()
    assert result["ensemble_accuracy"] > 60.0  # 10 classes: chance is 10 %
    probs = np.load(exp.run.probs(1))
    assert probs.shape == (540, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)


def _kill_when_new_resume_point(cmd, folders, seen, timeout=300):
    """Run cmd; SIGKILL it (as a user's kill -9 would) as soon as a resume point not in `seen` appears under
    `folders`. Returns the exit status (0: it finished before a new resume point appeared)."""
    import glob
    import signal
    import subprocess
    import time
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        points = {(f, os.stat(f).st_mtime_ns) for d in folders for f in glob.glob(f"{d}/**/*.resume.pt", recursive=True)
                  if os.path.exists(f)}
        if points - seen:
            seen |= points
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    return proc.returncode


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, fresh_cache, uninterrupted):
    import sys

    from conftest import INTERRUPTED, REPO
    ref = uninterrupted
    out, cache, kills, seen = tmp_path / "killed", fresh_cache("c2"), 0, set()
    cmd = [sys.executable, os.path.join(REPO, "scripts", "starsse.py"), *INTERRUPTED, "--cache_dir", cache,
           "--output_dir", str(out)]
    for _ in range(15):  # killed from outside at the first new resume point of every run: phase I, then each cycle
        rc = _kill_when_new_resume_point(cmd, [cache, str(out)], seen)
        if rc == 0:
            break
        assert rc == -9
        kills += 1
    assert rc == 0 and kills >= 3
    a, b = load_json(ref / "metrics.json"), load_json(out / "metrics.json")
    assert a["member_accuracy"] == b["member_accuracy"] and a["ensemble_accuracy"] == b["ensemble_accuracy"]
    for i in (1, 2):
        assert np.array_equal(np.load(ref / f"member_{i}_probs.npy"), np.load(out / f"member_{i}_probs.npy"))
    assert not any(f.endswith((".resume.pt", ".tmp")) for f in os.listdir(out))


def _stop_at_call(n):
    """A stand-in for lib.infra.preemption.requested: a stop signal from its n-th call on (the loop asks after every
    step, and at each epoch's end)."""
    calls = []

    def requested():
        calls.append(1)
        return "SIGTERM" if len(calls) >= n else None
    return requested


def test_a_truncated_resume_point_is_one_line_and_the_member_restarts_from_its_start(tmp_path, capsys, monkeypatch):
    """A resume point cut short (`truncate -s 1000` after a stop) is named in one line on stderr, and the member
    restarts from its start: it ends identical to an uninterrupted one (issue 23.4)."""
    from lib.infra import preemption
    from lib.infra.errors import Preempted
    from lib.models.backbones import build_model
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 3, 16, 16), torch.randint(0, 10, (48,)))
    start = build_model("resnet_mini", 10).state_dict()
    acc, loop, schedule = make_accelerator(cpu=True), _loop(batch_size=16), Schedule(np.full(6, 0.05), 2)

    def train(path):
        model = build_model("resnet_mini", 10)
        model.load_state_dict(start)
        return fit(acc, model, data, loop, schedule, Member(str(path), seed=3, desc="member 2 (cycle)"))[0]

    ref = train(tmp_path / "ref.pt").state_dict()
    point = tmp_path / "member_2.resume.pt"
    monkeypatch.setattr(preemption, "requested", _stop_at_call(4))  # 3 steps per epoch: epoch 2, after its step 1
    with pytest.raises(Preempted, match="stopped at epoch 2, step 1/3"):
        train(point)
    monkeypatch.undo()
    assert torch.load(point, weights_only=True)["step"] == 1
    os.truncate(point, 1000)
    capsys.readouterr()
    again = train(point).state_dict()
    out, err = capsys.readouterr()
    assert err.strip() == f"warning: member 2 (cycle): its resume point {point} is damaged (cut short, or not a " \
                          f"resume point: RuntimeError); restarting this member from its start"
    assert "resuming" not in out
    assert all(torch.equal(again[k], ref[k]) for k in ref)
    assert torch.load(point, weights_only=True)["epoch"] == 2  # the damaged file was replaced by a good one


def test_tensorboard_logs_every_term(tmp_path, tiny, fresh_cache):
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    flags = tiny + ["--members", "2", "--with_tracking", "--cache_dir", fresh_cache(), "--output_dir", tmp_path / "tb"]
    _run("StarSSE", flags)
    tags, lrs = set(), []
    for f in glob.glob(str(tmp_path / "tb" / "tensorboard" / "**" / "events*"), recursive=True):
        ea = EventAccumulator(f)
        ea.Reload()
        tags |= set(ea.Tags()["scalars"])
        if "train/lr" in ea.Tags()["scalars"]:
            lrs = [(e.step, e.value) for e in ea.Scalars("train/lr")]
    assert {"train/lr", "train/loss_step", "epoch/train_acc", "epoch/ce", "test/member_1_acc", "test/member_2_acc",
            "test/ensemble_acc", "test/diversity", "test/ensemble_acc_size_2"} <= tags
    # 40 images / batch 16 = 3 iterations per epoch: phase I steps 0-5 at 0.01, 0.005; the cycle restarts at 0.02
    assert [round(v, 6) for _, v in sorted(lrs)] == [0.01] * 3 + [0.005] * 3 + [0.02] * 3


def test_standard_sse_first_cycle_follows_the_cycle_schedule(tmp_path, tiny, fresh_cache):
    """Standard SSE (thesis figure 2.2): member 1 is a cycle like every other (cycle_lr over cycle_epochs) from the
    pre-trained checkpoint, not phase I; the later cycles continue its trajectory as SSE's do. Its own cache: member 1
    must be trained here, not reused from another test's run, for its learning rates to be logged."""
    r = run_script("sse.py", *tiny, "--standard", "--with_tracking", "--members", "2", "--cache_dir", fresh_cache(),
                   "--output_dir", tmp_path / "std")
    assert r.returncode == 0, r.stderr
    rec = [load_json(tmp_path / "std" / f"member_{i}.json") for i in (1, 2)]
    assert rec[0]["epochs"] == rec[1]["epochs"] == 1 and rec[0]["lr_start"] == rec[1]["lr_start"] == pytest.approx(0.02)
    assert load_json(tmp_path / "std" / "metrics.json")["method"] == "Standard SSE"
    lrs = [v for _, v in sorted(tb_lrs(tmp_path / "std"))]
    assert lrs == [pytest.approx(0.02)] * 6  # 2 cycles of 1 epoch x 3 iterations, each starting at cycle_lr
    sse = run_script("sse.py", *tiny, "--members", "2", "--output_dir", tmp_path / "sse")
    assert sse.returncode == 0, sse.stderr
    assert load_json(tmp_path / "sse" / "member_1.json")["lr_start"] == pytest.approx(0.01)  # phase I's lr




def test_compile_switch_trains_the_same_function(tmp_path):
    """--compile (torch.compile of the model; here its tracing-only backend, which needs no compiler) trains exactly
    what eager mode trains; the inductor backend and its speed are GPU figures (benchmarks/step_speed.py)."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    from lib.models.backbones import build_model
    start = build_model("resnet_mini", 10).state_dict()
    out = {}
    for compiled in (False, True):
        model = build_model("resnet_mini", 10)
        model.load_state_dict(start)
        loop = LoopSettings(batch_size=16, quiet=True, compile=compiled, compile_backend="eager")
        trained, history, _ = fit(make_accelerator(cpu=True), model, TensorDataset(x, y), loop,
                                  Schedule(np.full(4, 0.05), 2), Member(str(tmp_path / f"{compiled}.pt")))
        out[compiled] = (history, trained.state_dict())
    assert [h["loss"] for h in out[True][0]] == pytest.approx([h["loss"] for h in out[False][0]], abs=1e-6)
    assert all(torch.allclose(out[True][1][k].float(), out[False][1][k].float(), atol=1e-6) for k in start)
    assert set(out[True][1]) == set(start)  # plain keys: the compiled wrapper is not what is saved


def test_bf16_predicts_as_fp32_to_a_tolerance(tmp_path, tiny):
    """--mixed_precision bf16 reaches the run (config.json), the run's evaluation ran under bf16 autocast (the saved
    predictions are the bf16 ones of its members, not the fp32 ones), and on the fixed test set bf16 predicts what
    fp32 predicts to bf16's tolerance."""
    from accelerate.state import AcceleratorState
    from torch.utils.data import DataLoader

    from lib.data.tasks import load_task
    from lib.ensemble.load import load_ensemble
    from lib.evaluation.evaluate import run_settings
    from lib.evaluation.predict import predict_many
    from lib.runs.rundir import open_run
    out = str(tmp_path / "b")
    r = run_script("starsse.py", *tiny, "--members", "2", "--mixed_precision", "bf16", "--output_dir", out)
    assert r.returncode == 0, r.stderr
    assert load_json(os.path.join(out, "config.json"))["mixed_precision"] == "bf16"
    cfg, members = run_settings(open_run(out)), load_ensemble(out).members
    loader = DataLoader(load_task(cfg).test, batch_size=cfg.eval_batch_size)
    probs = {}
    for precision in ("no", "bf16"):
        AcceleratorState._reset_state(True)  # accelerate's precision is set once per process
        probs[precision] = predict_many(make_accelerator(cpu=True, mixed_precision=precision), members, loader)
    AcceleratorState._reset_state(True)
    saved = open_run(out).load_probs()
    assert np.abs(saved - probs["bf16"]).max() < 1e-6  # what the run saved is bf16's
    assert np.abs(saved - probs["no"]).max() > 1e-3  # ... which is not fp32's: bf16 was in effect
    assert np.abs(probs["bf16"] - probs["no"]).max() < 0.02, np.abs(probs["bf16"] - probs["no"]).max()
    assert (probs["bf16"].argmax(-1) == probs["no"].argmax(-1)).mean() >= 0.95  # 0.977 measured


def test_drop_last_schedule_and_loader_agree_in_a_run(tmp_path, fresh_cache):
    """--drop_last: the schedule Experiment builds (iterations_per_epoch) has the loader's length, so a run trains
    (fit refuses a schedule of another length): 40 digits in batches of 16 are 2 iterations, not 3."""
    flags = ["--cpu", "--quiet", "--epochs", "1", "--members", "1", "--batch_size", "16", "--cache_dir",
             fresh_cache(), "--output_dir", str(tmp_path / "d")]
    exp = Experiment(settings([*flags, "--drop_last"], "Fine-tune", "finetune.py"))
    assert exp.iters == 2 and exp.loop.drop_last and len(exp.data.train) == 40
    exp.finetune(1)
    assert load_json(tmp_path / "d" / "member_1.json")["history"][0]["epoch"] == 1
    exp.finish()
    plain = Experiment(settings(flags[:-1] + [str(tmp_path / "p")], "Fine-tune", "finetune.py"))
    assert plain.iters == 3 and not plain.loop.drop_last
