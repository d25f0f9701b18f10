"""Checkpoint layouts, head replacement, stage taps (state dicts from a real torchvision ResNet-50)."""
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from lib.infra.errors import UserError
from lib.models.backbones import build_model
from lib.models.checkpoints import load_pretrained
from lib.models.stages import STAGES, stage_module, taps


@pytest.fixture(scope="module")
def r50_state():
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).state_dict()


def _backbone(state):
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


LAYOUTS = {
    "plain torchvision keys (with its 1000-class fc)": lambda s: s,
    "plain, without fc": lambda s: _backbone(s),
    "state_dict with module. prefixes": lambda s: {"state_dict": {"module." + k: v for k, v in s.items()}, "epoch": 3},
    "model_state (our format)": lambda s: {"model_state": s, "optimizer": {}},
    "BYOL backbone.": lambda s: {"backbone." + k: v for k, v in _backbone(s).items()},
    "encoder.": lambda s: {"state_dict": {"encoder." + k: v for k, v in _backbone(s).items()}},
    "BYOL online_network.encoder. with projector, predictor and target network": lambda s: {
        **{"online_network.encoder." + k: v for k, v in _backbone(s).items()},
        "online_network.projector.net.0.weight": torch.zeros(4096, 2048),
        "predictor.net.0.weight": torch.zeros(4096, 256),
        **{"target_network.encoder." + k: torch.zeros_like(v) for k, v in list(_backbone(s).items())[:5]}},
    "module.backbone.": lambda s: {"module.backbone." + k: v for k, v in _backbone(s).items()},
    "without num_batches_tracked": lambda s: {k: v for k, v in s.items() if "num_batches_tracked" not in k},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_checkpoint_layouts_load_exact_weights(tmp_path, r50_state, layout, suffix):
    path = tmp_path / f"ckpt{suffix}"
    torch.save(LAYOUTS[layout](r50_state), path)
    model = load_pretrained(str(path), arch="resnet50", num_classes=100)
    got = model.state_dict()
    for k, v in _backbone(r50_state).items():
        if "num_batches_tracked" not in k:
            assert torch.equal(got[k], v), k
    assert model.fc.out_features == 100 and model.fc.in_features == 2048


def test_safetensors_checkpoint(tmp_path, r50_state):
    path = tmp_path / "byol.safetensors"
    save_file({"backbone." + k: v.contiguous() for k, v in _backbone(r50_state).items()}, str(path))
    model = load_pretrained(str(path), "resnet50", 10)
    assert torch.equal(model.layer4[2].conv3.weight, r50_state["layer4.2.conv3.weight"])


def test_head_is_fresh_and_sized_for_the_task(tmp_path, r50_state):
    path = tmp_path / "c.pt"
    torch.save(r50_state, path)
    torch.manual_seed(1)
    a = load_pretrained(str(path), "resnet50", 100)
    torch.manual_seed(2)
    b = load_pretrained(str(path), "resnet50", 100)
    assert a.fc.weight.shape == (100, 2048)
    assert not torch.equal(a.fc.weight, b.fc.weight)  # the head never comes from the checkpoint
    assert torch.equal(a.conv1.weight, b.conv1.weight)


def test_layout_mismatch_lists_missing_and_unexpected_keys(tmp_path, r50_state):
    state = _backbone(r50_state)
    state.pop("layer2.0.conv1.weight")
    state["layer9.0.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(UserError) as e:
        load_pretrained(str(path), "resnet50", 10)
    assert "missing ['layer2.0.conv1.weight']" in str(e.value) and "unexpected ['layer9.0.weight']" in str(e.value)


def test_wrong_arch_and_unknown_layout(tmp_path, r50_state):
    path = tmp_path / "r50.pt"
    torch.save(r50_state, path)
    with pytest.raises(UserError, match="missing|shapes"):
        load_pretrained(str(path), "resnet18", 10)
    other = tmp_path / "other.pt"
    torch.save({"weights": {"a.b": torch.zeros(2)}}, other)
    with pytest.raises(UserError, match="no key matches|no state dict"):
        load_pretrained(str(other), "resnet50", 10)


def test_missing_corrupted_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_pretrained(str(tmp_path / "nope.pt"), "resnet50", 10)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(UserError, match="could not be read"):
        load_pretrained(str(broken), "resnet50", 10)
    txt = tmp_path / "weights.txt"
    txt.write_text("x")
    with pytest.raises(UserError, match="unknown file type"):
        load_pretrained(str(txt), "resnet50", 10)


def test_unknown_arch_and_stage():
    with pytest.raises(UserError, match="unknown arch"):
        build_model("resnet51", 10)
    with pytest.raises(UserError, match="unknown stage"):
        stage_module(build_model("resnet_mini", 10), "stage6")


def test_stage_taps_shapes_and_no_side_effects():
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        with taps(model, STAGES) as feats:
            tapped = model(x)
    shapes = {k: tuple(v.shape) for k, v in feats.items()}
    assert shapes == {"stage1": (2, 64, 16, 16), "stage2": (2, 256, 16, 16), "stage3": (2, 512, 8, 8),
                      "stage4": (2, 1024, 4, 4), "stage5": (2, 2048, 2, 2), "avgpool": (2, 2048, 1, 1),
                      "fc": (2, 1000)}
    assert torch.equal(plain, tapped) and torch.equal(feats["fc"], tapped)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())  # hooks are removed after the block


def test_mini_resnet_has_the_same_stage_structure():
    mini, r50 = build_model("resnet_mini", 10), torchvision.models.resnet50()
    top = lambda m: [n for n, _ in m.named_children()]
    assert top(mini) == top(r50)
    x = torch.randn(2, 3, 16, 16)
    with taps(mini, STAGES) as feats:
        mini(x)
    assert [feats[s].shape[1] for s in ["stage2", "stage3", "stage4", "stage5"]] == [16, 32, 64, 128]
    assert feats["stage5"].shape[-1] == 2 and feats["avgpool"].shape[-1] == 1
