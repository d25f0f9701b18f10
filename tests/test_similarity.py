"""SSE-RTD / SSE-MSE / StarSSE variants: the regulariser is active in cycles 2..M only, against a frozen model 1."""
import subprocess
import sys

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
