"""SSE-RTD / SSE-MSE / StarSSE variants: the regulariser is active in cycles 2..M only, against a frozen model 1."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, run_script, run_scripts, settings

from lib.core.losses import FeatureSimilarity, parse_layers
from lib.infra.errors import UserError
from lib.infra.files import load_json, load_weights
from lib.models.backbones import build_model
from lib.models.stages import taps
from lib.training.loop import Step


def _sse_rtd(flags, similarity, alpha, star=False, layers=("avgpool",)):
    run = subprocess.run([sys.executable, f"{REPO}/scripts/sse_rtd.py", *map(str, flags), "--similarity", similarity,
                          "--alpha", str(alpha), "--layers", *layers] + (["--star"] if star else []),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return run


def test_parse_layers():
    assert parse_layers(["stage5:0.5", "avgpool"]) == {"stage5": 0.5, "avgpool": 1.0}
    with pytest.raises(UserError, match="unknown layer 'fc'"):
        parse_layers(["fc"])
    with pytest.raises(UserError, match="layer weight"):
        parse_layers(["stage2:-1"])


def test_mse_term_by_hand():
    torch.manual_seed(0)
    cur, ref = build_model("resnet_mini", 10).train(), build_model("resnet_mini", 10)
    reg = FeatureSimilarity("mse", 2.0, {"stage4": 1.0, "avgpool": 0.5}).set_reference(ref, "cpu")
    x = torch.randn(6, 3, 16, 16)
    with taps(cur, ["stage4", "avgpool"]) as feats:
        logits = cur(x)
    value = reg(Step(x, None, logits, feats, cur))
    ref.eval()
    with torch.no_grad(), taps(ref, ["stage4", "avgpool"]) as rf:
        ref(x)
    expected = 2.0 * (F.mse_loss(feats["stage4"], rf["stage4"]) + 0.5 * F.mse_loss(feats["avgpool"], rf["avgpool"]))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert cur.conv1.weight.grad.abs().sum() > 0  # gradients reach the current model ...
    assert all(p.grad is None for p in reg.reference.parameters())  # ... and never the frozen copy
    assert not reg.reference.training


@pytest.mark.slow
def test_sse_rtd_regularises_only_cycles_and_keeps_model_1(tmp_path, tiny):
    base = tiny + ["--batch_size", "40"]  # the whole 40-image training set in one batch: RTD on 40 points
    out = {}
    for name, sim, alpha in [("zero", "rtd", 0.0), ("rtd", "rtd", 1.0), ("mse", "mse", 20.0)]:
        _sse_rtd(base + ["--output_dir", tmp_path / name], sim, alpha, layers=("stage5:0.5", "avgpool"))
        out[name] = [load_weights(tmp_path / name / f"member_{i}.safetensors") for i in (1, 2, 3)]
    r = run_script("sse.py", *base, "--output_dir", tmp_path / "sse")
    assert r.returncode == 0, r.stderr
    sse = [load_weights(tmp_path / "sse" / f"member_{i}.safetensors") for i in (1, 2, 3)]
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)
    assert same(out["rtd"][0], sse[0]) and same(out["mse"][0], sse[0])  # phase I untouched (and shared)
    assert same(out["zero"][1], sse[1]) and same(out["zero"][2], sse[2])  # alpha 0 is SSE
    assert not same(out["rtd"][1], sse[1]) and not same(out["mse"][1], sse[1])
    hist = load_json(tmp_path / "rtd" / "member_2.json")["history"]
    assert all(h["rtd"] > 0 for h in hist)  # logged separately, every epoch
    assert "rtd" not in load_json(tmp_path / "rtd" / "member_1.json")["history"][0]
    assert load_json(tmp_path / "mse" / "metrics.json")["method"] == "SSE-MSE"


@pytest.mark.slow
def test_star_variant_starts_every_cycle_from_model_1(tmp_path, tiny):
    flags = tiny + ["--output_dir", tmp_path / "star"]
    _sse_rtd(flags, "mse", 0.0, star=True)
    r = run_script("starsse.py", *tiny, "--output_dir", tmp_path / "plain")
    assert r.returncode == 0, r.stderr
    for i in (2, 3):
        a = load_weights(tmp_path / "star" / f"member_{i}.safetensors")
        b = load_weights(tmp_path / "plain" / f"member_{i}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_json(tmp_path / "star" / "metrics.json")["method"] == "StarSSE-MSE"


def test_bad_regulariser_input(tmp_path, cache_dir):
    cases = [(["--layers", "stage9"], "unknown layer 'stage9'"), (["--alpha", "-1"], "--alpha must be"),
             (["--alpha", "nan"], "--alpha must be"), (["--rtd_card", "0"], "--rtd_card must be positive")]
    results = run_scripts([("sse_rtd.py", "--cpu", "--cache_dir", cache_dir, "--output_dir", tmp_path / f"o{i}", *flags)
                           for i, (flags, _) in enumerate(cases)])
    for i, ((_, msg), r) in enumerate(zip(cases, results)):
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {r.stderr.strip()[7:]}"]
        assert msg in r.stderr and not (tmp_path / f"o{i}").exists()


def test_reference_pretrained_regularises_towards_the_checkpoint(tmp_path, tiny, cache_dir):
    """--reference pretrained: the frozen reference of cycles 2..M holds the pre-trained checkpoint's backbone (thesis
    section 4's alternative), not model 1's."""
    from lib.models.checkpoints import read_checkpoint
    from lib.training.experiment import Experiment
    flags = [*map(str, tiny), "--members", "2", "--output_dir", str(tmp_path / "r")]
    exp = Experiment(settings(flags, "SSE-MSE", "sse_rtd.py"))
    w1 = exp.finetune(1)
    ref = exp.pretrained_model().state_dict()
    ckpt = read_checkpoint(exp.checkpoints[0])
    assert all(torch.equal(ref[k], v) for k, v in ckpt.items())
    assert not torch.equal(ref["layer4.0.conv1.weight"], w1["layer4.0.conv1.weight"])
    r = run_script("sse_rtd.py", *tiny, "--similarity", "mse", "--reference", "pretrained", "--members", "2",
                   "--output_dir", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert load_json(tmp_path / "s" / "config.json")["reference"] == "pretrained"
    m = run_script("sse_rtd.py", *tiny, "--similarity", "mse", "--members", "2", "--output_dir", tmp_path / "m")
    assert m.returncode == 0, m.stderr
    a, b = (load_weights(tmp_path / d / "member_2.safetensors") for d in ("s", "m"))
    assert not torch.equal(a["fc.weight"], b["fc.weight"])  # a different regulariser, a different cycle


def test_overlapped_rtd_step_equals_the_sequential_one(tmp_path):
    """--rtd_overlap: the barcodes are computed in worker processes while the CE backward runs, and the RTD term's
    backward is added after; the step gives the same loss and the same weights as the sequential one (exact RTD)."""
    import copy

    import numpy as np
    from torch.utils.data import TensorDataset

    from lib.settings.schema import LoopSettings
    from lib.training.loop import Member, Schedule, fit, make_accelerator
    torch.manual_seed(0)
    model = build_model("resnet_mini", 10)
    data = TensorDataset(torch.randn(96, 3, 16, 16), torch.randint(0, 10, (96,)))  # 96 points: the workers' path
    acc, loop, layers = make_accelerator(cpu=True), LoopSettings(batch_size=96, quiet=True), {"stage4": 0.5, "avgpool": 1.0}
    current = copy.deepcopy(model)
    with torch.no_grad():  # the current model: model 1 moved a little, as in a cycle
        for p in current.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
    results = {}
    for overlap in (False, True):
        reg = FeatureSimilarity("rtd", 0.7, layers, rtd_variant="exact", rtd_normalize="quantile")
        reg.set_reference(model, "cpu", overlap=overlap)
        m = copy.deepcopy(current)
        trained, history, _ = fit(acc, m, data, loop, Schedule(np.array([0.1]), 1),  # one step: the same barcodes
                                  Member(str(tmp_path / f"{overlap}.pt"), loss_terms={"rtd": reg}, taps=list(layers)))
        results[overlap] = (history, trained.state_dict())
    (h0, w0), (h1, w1) = results[False], results[True]
    assert [h["rtd"] for h in h0] == pytest.approx([h["rtd"] for h in h1], rel=1e-5) and h0[0]["rtd"] > 0
    assert [h["loss"] for h in h0] == pytest.approx([h["loss"] for h in h1], rel=1e-5)
    for k in w0:  # gradients summed in two backward passes instead of one: float32 rounding (~1e-5 of a gradient)
        assert torch.allclose(w0[k].float(), w1[k].float(), atol=1e-5), k
    assert not torch.equal(w0["conv1.weight"], current.state_dict()["conv1.weight"])


def test_reference_pretrained_phase1_regularises_phase_1_in_a_cache_entry_of_its_own(tmp_path, tiny):
    """--reference pretrained_phase1 (the thesis code's "pretrain" mode): the term towards the pre-trained checkpoint
    acts in phase I too, so model 1 differs from the plain phase I and is cached under a key holding the term's
    settings: never the plain entry, never another alpha's; the same settings find their entry again."""
    flags = [*tiny, "--members", "2", "--similarity", "mse"]
    runs = {"plain": ["--reference", "pretrained"], "a20": ["--reference", "pretrained_phase1", "--alpha", "20"],
            "a10": ["--reference", "pretrained_phase1", "--alpha", "10"]}
    results = run_scripts([("sse_rtd.py", *flags, *extra, "--output_dir", tmp_path / name)
                           for name, extra in runs.items()])
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    again = run_script("sse_rtd.py", *flags, *runs["a20"], "--output_dir", tmp_path / "a20_again")
    assert again.returncode == 0, again.stderr
    record = {name: load_json(tmp_path / name / "member_1.json") for name in [*runs, "a20_again"]}
    cached = {name: r["cached"] for name, r in record.items()}
    assert len({cached["plain"], cached["a20"], cached["a10"]}) == 3 and cached["a20_again"] == cached["a20"]
    assert "mse" not in record["plain"]["history"][0]  # plain phase I: no term ...
    assert all(h["mse"] > 0 for h in record["a20"]["history"])  # ... the regularised one: the term every epoch
    w1 = {name: load_weights(tmp_path / name / "member_1.safetensors") for name in record}
    assert not torch.equal(w1["plain"]["fc.weight"], w1["a20"]["fc.weight"])
    assert all(torch.equal(w1["a20"][k], w1["a20_again"][k]) for k in w1["a20"])
    assert load_json(tmp_path / "a20" / "config.json")["reference"] == "pretrained_phase1"


# ----------------------------------------------------------------------------------------------------------------
# --rtd_pipeline: the bars of step t come from the barcodes of its batch under step t-1's weights

PIPE_LAYERS = {"stage4": 0.5, "avgpool": 1.0}


def _pipeline_case(batches, n=96):
    """Model 1, a current model near it (as in a cycle) and `batches` batches of n random images (n >= 32: the
    barcodes go to the worker processes)."""
    import copy
    torch.manual_seed(0)
    model = build_model("resnet_mini", 10)
    current = copy.deepcopy(model)
    with torch.no_grad():
        for p in current.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
    data = torch.utils.data.TensorDataset(torch.randn(batches * n, 3, 16, 16), torch.randint(0, 10, (batches * n,)))
    return model, current, data


def _fit_rtd(model1, start, data, steps, epochs, resume_path, pipeline, lr=0.3, n=96):
    """lib.training.loop.fit of `start` with CE + exact RTD on PIPE_LAYERS against model 1 (lr constant)."""
    import copy

    import numpy as np

    from lib.settings.schema import LoopSettings
    from lib.training.loop import Member, Schedule, fit, make_accelerator
    reg = FeatureSimilarity("rtd", 1.0, PIPE_LAYERS, rtd_variant="exact", rtd_normalize="quantile")
    reg.set_reference(model1, "cpu", pipeline=pipeline)
    trained, history, _ = fit(make_accelerator(cpu=True), copy.deepcopy(start), data,
                              LoopSettings(batch_size=n, quiet=True), Schedule(np.full(steps, lr), epochs),
                              Member(str(resume_path), loss_terms={"rtd": reg}, taps=tuple(PIPE_LAYERS)))
    return trained.state_dict(), history


@pytest.mark.slow
def test_pipelined_rtd_is_the_one_step_delayed_computation(tmp_path):
    """--rtd_pipeline equals, bit for bit, the sequential code run with the bars delayed by hand: the loss of step t
    reads step t's distance matrices at the edges of the barcodes of batch t under the weights before step t-1's
    update; the first step of each epoch uses its own barcodes (the sequential step). The delay matters: the stale
    bars differ from the fresh ones, and the pipelined member from the sequential one."""
    import copy

    from lib.core.rtd import distance_matrix, rtd_barcodes, rtd_loss
    from lib.data.tasks import train_loader
    model1, start, data = _pipeline_case(2)
    piped, history = _fit_rtd(model1, start, data, 4, 2, tmp_path / "p.pt", pipeline=True)

    model, ref = copy.deepcopy(start).train(), copy.deepcopy(model1).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=0.0)
    loader = train_loader(data, 96, 1, 0, seed=0)

    def distances(net, x):  # {layer: (model 1's distances, the net's distances)} of batch x (quantile-normalised)
        with torch.no_grad(), taps(ref, list(PIPE_LAYERS)) as r:
            ref(x)
        with taps(net, list(PIPE_LAYERS)) as cur:
            out = net(x)
        return out, {k: (distance_matrix(r[k].flatten(1), "quantile"), distance_matrix(cur[k].flatten(1), "quantile"))
                     for k in PIPE_LAYERS}

    stale_differs, rtd_values = [], []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches, ahead = list(loader), None
        for i, (x, y) in enumerate(batches):
            logits, d = distances(model, x)
            fresh = {k: rtd_barcodes(*d[k]) for k in PIPE_LAYERS}
            if ahead is not None:
                stale_differs.append(any(not np.array_equal(a, b) for k in PIPE_LAYERS  # edges, bars, both ways
                                         for direction in (0, 1) for a, b in zip(ahead[k][direction], fresh[k][direction])))
            bars = fresh if ahead is None else ahead  # the epoch's first step: its own barcodes
            term = 1.0 * sum(w * rtd_loss(*d[k], card=50, variant="exact", barcodes=bars[k])
                             for k, w in PIPE_LAYERS.items())
            rtd_values.append(term.item())
            loss = F.cross_entropy(logits, y) + term
            ahead = None
            if i + 1 < len(batches):  # the next batch's barcodes, under the weights before this step's update
                with torch.no_grad():
                    _, d_next = distances(copy.deepcopy(model), batches[i + 1][0])  # a copy: BatchNorm stats kept
                ahead = {k: rtd_barcodes(*d_next[k]) for k in PIPE_LAYERS}
            opt.zero_grad()
            loss.backward()
            opt.step()
    hand = model.state_dict()
    assert all(torch.equal(piped[k], hand[k]) for k in hand)
    assert [h["rtd"] for h in history] == pytest.approx([np.mean(rtd_values[:2]), np.mean(rtd_values[2:])], rel=1e-6)
    assert stale_differs == [True, True]  # one delayed step per epoch, and its bars are not the fresh ones
    sequential, _ = _fit_rtd(model1, start, data, 4, 2, tmp_path / "s.pt", pipeline=False)
    assert not all(torch.equal(piped[k], sequential[k]) for k in hand)
    # a member's first step has no previous step: the sequential step, exactly
    one = torch.utils.data.TensorDataset(*data[:96])
    first = [_fit_rtd(model1, start, one, 1, 1, tmp_path / f"{p}.pt", pipeline=p)[0] for p in (True, False)]
    assert all(torch.equal(first[0][k], first[1][k]) for k in hand)


def test_pipelined_rtd_member_resumed_mid_epoch_is_identical(tmp_path, monkeypatch):
    """A stop in the middle of a pipelined epoch keeps the look-ahead's barcodes (and model 1's distances) in the
    resume point; the resumed member equals the uninterrupted one bit for bit. Without them the resumed step would
    compute its own barcodes and the member would differ."""
    import shutil

    from lib.infra import preemption
    from lib.infra.errors import Preempted
    model1, start, data = _pipeline_case(3)
    whole, _ = _fit_rtd(model1, start, data, 3, 1, tmp_path / "whole.pt", pipeline=True)
    calls = []
    monkeypatch.setattr(preemption, "requested", lambda: "SIGTERM" if calls.append(1) or len(calls) >= 2 else None)
    with pytest.raises(Preempted, match="step 2/3"):
        _fit_rtd(model1, start, data, 3, 1, tmp_path / "stop.pt", pipeline=True)
    monkeypatch.undo()
    state = torch.load(tmp_path / "stop.pt", weights_only=True)
    assert state["step"] == 2 and state["terms"][0]["rtd"]["step"] == 2  # the barcodes of step 3 (index 2)
    assert set(state["terms"][0]["rtd"]["layers"]) == set(PIPE_LAYERS)
    state["terms"] = None
    torch.save(state, tmp_path / "forgot.pt")
    shutil.copy(tmp_path / "stop.pt", tmp_path / "kept.pt")
    resumed, _ = _fit_rtd(model1, start, data, 3, 1, tmp_path / "kept.pt", pipeline=True)  # a new term object
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    forgot, _ = _fit_rtd(model1, start, data, 3, 1, tmp_path / "forgot.pt", pipeline=True)
    assert not all(torch.equal(forgot[k], whole[k]) for k in whole)


def test_look_ahead_forward_changes_nothing():
    """lib.models.stages.features_only (the pipeline's look-ahead): the features a training-mode forward gives
    (BatchNorm on the batch's statistics), without gradients, with running statistics, batch counts and the random
    streams (dropout) left as they were."""
    import copy

    from lib.models.stages import features_only
    torch.manual_seed(0)
    model, x = build_model("resnet_mini", 10).train(), torch.randn(8, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feats = features_only(model, x, ["stage4", "avgpool"])
    twin = copy.deepcopy(model)
    with taps(twin, ["stage4", "avgpool"]) as f:
        twin(x)
    assert all(torch.equal(feats[k], f[k]) and not feats[k].requires_grad for k in f)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not torch.equal(twin.state_dict()["bn1.running_mean"], before["bn1.running_mean"])  # a forward moves them
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5)).train()
    z = torch.randn(6, 4)
    rng = torch.get_rng_state()
    features_only(net, z, [])
    assert torch.equal(torch.get_rng_state(), rng) and net[1].num_batches_tracked.item() == 0
    net(z)
    assert not torch.equal(torch.get_rng_state(), rng) and net[1].num_batches_tracked.item() == 1
