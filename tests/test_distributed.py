"""Several processes on the CPU (DDP over gloo): evaluation sees each test sample once and matches one process.

Note: `accelerate launch --cpu --num_processes 2` silently starts ONE process; two CPU processes need
`--multi_gpu` with ACCELERATE_USE_CPU=true (or Accelerator(cpu=True), which our scripts use on CPU-only machines).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ACCELERATE, REPO, copy_pretrained, settings, tb_lrs

from lib.infra.files import load_json

pytestmark = pytest.mark.slow


def _predict_digits(out):
    import torch
    from accelerate import Accelerator

    from lib.data.tasks import load_digits_task, test_loader
    from lib.evaluation.predict import predict
    from lib.models.backbones import build_model
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = build_model("resnet_mini", 10)
    task = load_digits_task(4)
    probs = predict(acc, model, test_loader(task.test, batch_size=64))  # 540 = 8 x 64 + 28: uneven last batch
    if acc.is_main_process:
        np.save(out, np.concatenate([probs, np.full((len(probs), 1), acc.num_processes, np.float32)], 1))


def _debug_launch(num_processes, out, fn="_predict_digits"):
    """Run fn(out) (a function of this module) on `num_processes` CPU processes. accelerate's debug_launcher forks;
    run it in a fresh interpreter (forking a process whose OpenMP threads are running, like pytest's after other
    tests, can deadlock). Returns what _predict_digits saved."""
    code = (f"import sys; sys.path[:0] = [{REPO!r}, {os.path.join(REPO, 'tests')!r}]\n"
            f"from accelerate import debug_launcher\nfrom test_distributed import {fn}\n"
            f"debug_launcher({fn}, args=({str(out)!r},), num_processes={num_processes})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return np.load(out) if fn == "_predict_digits" else None


def test_two_process_prediction_equals_one_process(tmp_path):
    from accelerate.state import AcceleratorState
    two = _debug_launch(2, tmp_path / "two.npy")
    AcceleratorState._reset_state(True)  # one process: this one
    _predict_digits(tmp_path / "one.npy")
    AcceleratorState._reset_state(True)
    one = np.load(tmp_path / "one.npy")
    assert two[0, -1] == 2 and one[0, -1] == 1
    assert two.shape == one.shape == (540, 11)  # each test sample exactly once, in order
    assert np.allclose(two[:, :10], one[:, :10], atol=1e-6)


def test_accelerate_launch_two_processes_gives_the_same_evaluation(tmp_path, tiny):
    from lib.training.experiment import Experiment
    exp = Experiment(settings(tiny + ["--members", "2", "--output_dir", tmp_path / "run"], "Local DE"))
    exp.finetune(1), exp.finetune(2)
    one = exp.finish()
    before = [np.load(exp.run.probs(i)) for i in (1, 2)]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    r = subprocess.run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no",
                        os.path.join(REPO, "scripts", "evaluate.py"), str(tmp_path / "run"), "--from_weights"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on 2 processes" in r.stdout
    two = load_json(tmp_path / "run" / "metrics.json")
    for i in (1, 2):
        assert np.allclose(np.load(exp.run.probs(i)), before[i - 1], atol=1e-6)
    for key in ("member_accuracy", "ensemble_accuracy", "diversity"):
        assert np.allclose(two[key], one[key])
    assert abs(two["nll"] - one["nll"]) < 1e-5


def _launch2(script, *flags, env=None):
    full_env = dict(os.environ, ACCELERATE_USE_CPU="true", **(env or {}))
    r = subprocess.run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", os.path.join(REPO, "scripts", script),
                        *map(str, flags)], capture_output=True, text=True, env=full_env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_member_parallel_starsse_is_identical_to_sequential(tmp_path, fresh_cache):
    import torch
    from conftest import run_script

    from lib.infra.files import load_weights
    flags = ["--quiet", "--epochs", "2", "--cycle_epochs", "2", "--members", "4", "--data_pipeline", "device"]
    _launch2("starsse.py", *flags, "--member_parallel", "--cache_dir", fresh_cache("a"), "--output_dir", tmp_path / "par")
    r = run_script("starsse.py", "--cpu", *flags, "--cache_dir", fresh_cache("b"), "--output_dir", tmp_path / "seq",
                   env={"OMP_NUM_THREADS": "1"})  # the same thread count as each of the 2 processes
    assert r.returncode == 0, r.stderr
    owners = [load_json(tmp_path / "par" / f"member_{i}.json")["process"] for i in range(1, 5)]
    assert owners == [0, 0, 1, 0]  # phase I on process 0, then rays 2..4 dealt round-robin
    for i in range(1, 5):
        a, b = load_weights(tmp_path / "par" / f"member_{i}.safetensors"), load_weights(tmp_path / "seq" / f"member_{i}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), i
    m_par, m_seq = load_json(tmp_path / "par" / "metrics.json"), load_json(tmp_path / "seq" / "metrics.json")
    assert m_par["member_accuracy"] == m_seq["member_accuracy"] and m_par["diversity"] == m_seq["diversity"]


def test_member_parallel_is_refused_where_members_depend_on_earlier_ones(tmp_path, cache_dir):
    from conftest import run_script
    for script in ("sse.py", "starsse_ce.py", "starsse_wo.py", "sse_rtd.py"):
        r = run_script(script, "--cpu", "--member_parallel", "--cache_dir", cache_dir, "--output_dir", tmp_path / "o")
        assert r.returncode == 2 and "cannot be trained in parallel" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def sse_rtd_launches(cache_dir, tmp_path_factory):
    """SSE-RTD on 2 DDP processes, --rtd_overlap on then off (the second reuses the first's phase-I entry), the
    device pipeline and the learning rate tracked at every iteration: (folder, flags)."""
    root = tmp_path_factory.mktemp("ddp_sse_rtd")
    flags = ["--quiet", "--epochs", "3", "--cycle_epochs", "2", "--members", "2", "--lr_granularity", "iteration",
             "--with_tracking", "--data_pipeline", "device"]
    cache = copy_pretrained(cache_dir, root / "cache")
    for mode in ("on", "off"):
        _launch2("sse_rtd.py", *flags, "--cache_dir", cache, "--rtd_overlap", mode, "--output_dir", root / mode,
                 env={"OMP_NUM_THREADS": "1"})
    return root, flags


def test_ddp_learning_rate_at_every_iteration_equals_one_process(sse_rtd_launches, fresh_cache):
    from conftest import run_script
    root, flags = sse_rtd_launches
    r = run_script("sse_rtd.py", "--cpu", *flags, "--cache_dir", fresh_cache("b"), "--output_dir", root / "one")
    assert r.returncode == 0, r.stderr
    ddp, one = tb_lrs(str(root / "on")), tb_lrs(str(root / "one"))  # "on" trained phase I, "off" reused it
    assert len(one) == (3 + 2) * 3 and ddp == one  # 3 iterations per epoch in both: --batch_size is global
    cycle_lr = settings(flags, "SSE-RTD", "sse_rtd.py").cycle_lr
    assert one[9][1] == cycle_lr and one[8][1] < 0.001  # the cycle restarts at cycle_lr after phase I's last step


def test_ddp_sse_rtd_with_the_overlap_asked_trains_as_without_it(sse_rtd_launches):
    """Under DDP gradients are all-reduced in one backward, so --rtd_overlap on waits for the barcodes and runs one
    backward: the same members as --rtd_overlap off (a second, unsynchronised backward would let the processes'
    weights drift apart)."""
    import torch

    from lib.infra.files import load_weights
    root, _ = sse_rtd_launches
    a, b = load_weights(root / "on" / "member_2.safetensors"), load_weights(root / "off" / "member_2.safetensors")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert load_json(root / "on" / "metrics.json")["ensemble_accuracy"] == \
        load_json(root / "off" / "metrics.json")["ensemble_accuracy"]


def _fit_pipelined(out):
    """(On each of 2 processes, by _debug_launch.) --rtd_pipeline under DDP: 3 steps of CE + RTD on the AvgPool of
    each process's half batch; saves this process's parameters (BatchNorm statistics are per process on the CPU),
    how many backward passes reached the first layer's
    weight, and at which steps the RTD term read look-ahead barcodes."""
    import torch
    from test_similarity import _pipeline_case

    from lib.core.losses import FeatureSimilarity
    from lib.settings.schema import LoopSettings
    from lib.training.loop import Member, Schedule, fit, make_accelerator

    class Counting(FeatureSimilarity):
        used = ()

        def _take(self, step):
            ahead = super()._take(step)
            if step is not None:
                self.used += (ahead is not None,)
            return ahead

    acc = make_accelerator(cpu=True)
    model1, start, data = _pipeline_case(3, n=128)  # 3 global batches of 128: 64 points per process
    reg = Counting("rtd", 1.0, {"avgpool": 1.0}, rtd_variant="exact", rtd_normalize="quantile")
    reg.set_reference(model1, acc.device, pipeline=True)
    backwards = []
    start.conv1.weight.register_hook(lambda g: backwards.append(1))
    trained, _, iters = fit(acc, start, data, LoopSettings(batch_size=128, quiet=True), Schedule(np.full(3, 0.3), 1),
                            Member(f"{out}.resume.pt", loss_terms={"rtd": reg}, taps=("avgpool",)))
    torch.save({"weights": {k: v.detach() for k, v in trained.named_parameters()}, "backwards": len(backwards), "iters": iters, "used": reg.used},
               f"{out}.{acc.process_index}")


def test_ddp_pipelined_rtd_keeps_one_all_reduced_backward(tmp_path):
    """--rtd_pipeline under DDP: no deferred term, so every step runs one backward, whose gradients DDP all-reduces:
    both processes end with the same parameters; steps 2 and 3 read the barcodes their look-ahead started."""
    import torch
    _debug_launch(2, tmp_path / "p", fn="_fit_pipelined")
    a, b = (torch.load(tmp_path / f"p.{rank}", weights_only=True) for rank in (0, 1))
    assert a["iters"] == b["iters"] == 3 and a["backwards"] == b["backwards"] == 3
    assert a["used"] == b["used"] == (False, True, True)
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
