"""Frozen-stage fine-tuning (thesis section 5): what is frozen, that it stays frozen, and the PEFT scripts."""
import pytest
import torch
import torchvision
from conftest import run_script, settings

from lib.core.freeze import freeze
from lib.infra.errors import UserError
from lib.infra.files import load_json, load_weights
from lib.models.backbones import build_model
from lib.models.checkpoints import read_checkpoint
from lib.models.stages import taps
from lib.training.experiment import Experiment


def test_resnet50_trainable_fractions_match_the_thesis():
    fractions = {}
    for stage in ("stage4", "stage5", "head"):
        fractions[stage] = freeze(build_model("resnet50", 100), stage).trainable_fraction
    assert fractions["stage4"] == pytest.approx(0.94, abs=0.005)
    assert fractions["stage5"] == pytest.approx(0.64, abs=0.005)
    assert fractions["head"] < 0.01


def test_frozen_means_no_grad_no_graph_and_fixed_batchnorm():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    params = freeze(model, "stage4").params
    assert {id(p) for p in params} == {id(p) for n, p in model.named_parameters()
                                       if n.startswith(("layer3.", "layer4.", "fc."))}
    model.train()
    assert not model.bn1.training and not model.layer2[0].bn1.training and model.layer3[0].bn1.training
    before = model.layer1[0].bn1.running_mean.clone()
    with taps(model, ["stage3", "stage4"]) as feats:
        model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert not feats["stage3"].requires_grad and feats["stage3"].grad_fn is None  # no autograd graph in the prefix
    assert feats["stage4"].requires_grad
    assert torch.equal(model.layer1[0].bn1.running_mean, before)
    assert model.conv1.weight.grad is None and model.layer3[0].conv1.weight.grad is not None
    # frozen_bn="train": the reference behaviour, running statistics keep moving (and are not checked)
    other = torchvision.models.resnet18(num_classes=10)
    keys = freeze(other, "stage4", bn="train").frozen
    other.train()
    assert other.layer1[0].bn1.training
    assert "layer1.0.conv1.weight" in keys and "layer1.0.bn1.running_mean" not in keys
    assert "layer1.0.bn1.running_mean" in freeze(torchvision.models.resnet18(num_classes=10), "stage4").frozen


def test_a_freeze_survives_a_plain_training_loop():
    """freeze(model, "stage5") then anyone's loop with model.train() / model.eval(): the frozen stages' weights AND
    BatchNorm statistics stay bit-identical (a BatchNorm left in train mode would move its running statistics)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    frz = freeze(model, "stage5")
    opt = torch.optim.SGD(frz.params, lr=0.1, momentum=0.9)
    for step in range(3):
        model.train()  # the user's loop: plain train(), no knowledge of the freeze
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.randint(0, 10, (4,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
    state = model.state_dict()
    moved = [k for k, v in frz.frozen.items() if not torch.equal(state[k], v)]
    assert moved == [] and len(frz.frozen) == 90  # weights and BN buffers of the stem and layer1..layer3
    assert not torch.equal(state["layer4.0.bn1.running_mean"], torch.zeros(128))  # the trained stage's BN moved
    frz.verify(model)  # and the loop's own check agrees


def test_bad_freeze_names():
    with pytest.raises(UserError, match="unknown --freeze 'stage6'"):
        freeze(build_model("resnet_mini", 10), "stage6")
    model = build_model("resnet_mini", 10)
    model.fc.requires_grad_(False)
    with pytest.raises(UserError, match="leaves nothing to train"):
        freeze(model, "head")


def test_frozen_starsse_keeps_model_1s_frozen_tensors(tmp_path, tiny):
    r = run_script("starsse.py", *tiny, "--freeze", "stage4", "--output_dir", tmp_path / "f")
    assert r.returncode == 0, r.stderr
    w = {i: load_weights(tmp_path / "f" / f"member_{i}.safetensors") for i in (1, 2, 3)}
    for i in (2, 3):
        for k in w[1]:
            frozen = k.startswith(("conv1.", "bn1.", "layer1.", "layer2."))
            assert torch.equal(w[i][k], w[1][k]) == frozen or k.endswith("num_batches_tracked"), (i, k)
    recs = [load_json(tmp_path / "f" / f"member_{i}.json") for i in (1, 2)]
    assert recs[0]["trainable_fraction"] == 1.0 and recs[0]["freeze"] == "none"  # model 1 fully fine-tuned
    assert recs[1]["freeze"] == "stage4" and 0.5 < recs[1]["trainable_fraction"] < 1.0
    assert load_json(tmp_path / "f" / "metrics.json")["method"] == "StarSSE (freeze stage4)"
    r = run_script("starsse.py", *tiny, "--freeze", "stage4", "--frozen_bn", "train", "--output_dir", tmp_path / "t")
    assert r.returncode == 0, r.stderr
    t2 = load_weights(tmp_path / "t" / "member_2.safetensors")
    assert torch.equal(t2["layer1.0.conv1.weight"], w[1]["layer1.0.conv1.weight"])
    assert not torch.equal(t2["layer1.0.bn1.running_mean"], w[1]["layer1.0.bn1.running_mean"])


def test_a_moving_frozen_tensor_fails_loudly(tmp_path, tiny):
    exp = Experiment(settings(tiny + ["--output_dir", tmp_path / "x"], "StarSSE"))
    w1 = exp.finetune(1)

    def vandal(step):  # a bug that writes into a frozen weight
        with torch.no_grad():
            getattr(step.model, "module", step.model).conv1.weight.add_(1.0)
        return step.logits.sum() * 0
    with pytest.raises(RuntimeError, match="frozen tensors changed"):
        exp.cycle(2, init=w1, loss_terms={"vandal": vandal}, freeze="stage4")
    assert not exp.run.done(2)  # nothing saved for the member


def test_peft_freeze_from_the_start(tmp_path, tiny, cache_dir):
    r = run_script("peft_freeze.py", *tiny, "--members", "2", "--freeze", "stage5", "--output_dir", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    pre = read_checkpoint(f"{cache_dir}/pretrained/digits-byol-seed0.safetensors")
    for i in (1, 2):
        w = load_weights(tmp_path / "p" / f"member_{i}.safetensors")
        assert all(torch.equal(w[k], pre[k]) for k in pre if not k.startswith(("layer4.", "fc.")))
        assert not torch.equal(w["layer4.0.conv1.weight"], pre["layer4.0.conv1.weight"])
    assert load_json(tmp_path / "p" / "metrics.json")["method"] == "Local DE (freeze stage5)"
    r = run_script("peft_freeze.py", *tiny, "--freeze", "fc7", "--output_dir", tmp_path / "q")
    assert r.returncode == 2 and r.stderr.strip() == "error: unknown --freeze 'fc7' (choose from none, stage2, stage3, " \
                                                     "stage4, stage5, head)"
    assert not (tmp_path / "q").exists()


def test_cycle_lr_mult(tiny):
    assert settings(tiny + ["--lr", "0.05", "--cycle_lr_mult", "4"]).cycle_lr == pytest.approx(0.2)
