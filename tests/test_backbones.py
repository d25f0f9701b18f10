"""Any backbone (lib/models/backbones.py, lib/models/checkpoints.py): timm and torchvision models, their stages, their
weights.

Tiny models at 32 px: timm's test_vit (a ViT), test_convnext (LayerNorm CNN), test_efficientnet (BatchNormAct2d)
and torchvision's mobilenet_v3_small. Nothing is downloaded: timm's weights come from a Hugging Face cache the
tests build, torchvision's from a TORCH_HOME they fill (HF_HUB_OFFLINE=1 throughout).
"""
import argparse
import copy
import hashlib
import os
import re
import subprocess
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported (it reads it once)

import huggingface_hub  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from conftest import ACCELERATE, REPO, run_script  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from lib.core import freeze as freezing  # noqa: E402
from lib.infra.errors import UserError  # noqa: E402
from lib.infra.files import load_json, load_weights  # noqa: E402
from lib.models import backbones, checkpoints, stages  # noqa: E402
from lib.runs.rundir import open_run  # noqa: E402

SIZE = 32
OFFLINE = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # scripts: offline, one thread (tiny models)


@pytest.fixture(autouse=True)
def offline_one_thread(monkeypatch):
    """Offline, and one thread: these models are so small that a second OpenMP thread only adds waiting."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Each model's split, written out by hand from its architecture (the independent expectation of stage_map).
def vit_part(n):  # timm VisionTransformer: embeddings, blocks.0..5, final norms, head
    m = re.match(r"blocks\.(\d+)\.", n)
    return f"stage{int(m.group(1)) + 1}" if m else "pool" if n.startswith(("norm.", "fc_norm.")) else \
        "head" if n.startswith("head.") else "stage1"


def convnext_part(n):  # timm ConvNeXt: stem + stages.0, stages.1..3, head.norm, head.fc
    m = re.match(r"stages\.(\d+)\.", n)
    return f"stage{int(m.group(1)) + 1}" if m else "pool" if n.startswith("head.norm.") else \
        "head" if n.startswith("head.fc.") else "stage1"


def efficientnet_part(n):  # timm EfficientNet: conv_stem, bn1 + blocks.0, blocks.1..4, conv_head + bn2, classifier
    m = re.match(r"blocks\.(\d+)\.", n)
    return f"stage{int(m.group(1)) + 1}" if m else "pool" if n.startswith(("conv_head.", "bn2.")) else \
        "head" if n.startswith("classifier.") else "stage1"


MOBILENET_STAGES = {0: 1, 1: 2, 2: 3, 3: 3, 4: 4, 5: 4, 6: 4, 7: 4, 8: 4, 9: 5, 10: 5, 11: 5, 12: 5}  # by stride


def mobilenet_part(n):  # torchvision MobileNetV3-small: the stride-2 blocks are features.0, 1, 2, 4, 9
    m = re.match(r"features\.(\d+)\.", n)
    return f"stage{MOBILENET_STAGES[int(m.group(1))]}" if m else "head" if n.startswith("classifier.3.") else "pool"


FAMILIES = {"timm/test_vit": vit_part, "timm/test_convnext": convnext_part,
            "timm/test_efficientnet": efficientnet_part, "mobilenet_v3_small": mobilenet_part}


@pytest.fixture(scope="module")
def built():
    out = {}
    for arch in FAMILIES:
        torch.manual_seed(0)
        out[arch] = backbones.build_model(arch, 10, image_size=SIZE)
    return out


def test_stages_of_every_family_match_the_architecture(built):
    """Every parameter sits in the stage its architecture puts it in; the taps give timm's own intermediates
    (forward_intermediates) and pre-logits, and the prefixes of torchvision's features Sequential."""
    x = torch.randn(3, 3, SIZE, SIZE)
    for arch, part in FAMILIES.items():
        model = built[arch].eval()
        smap = backbones.stage_map(model)
        assert {n: smap.part_of(n) for n, _ in model.named_parameters()} == \
               {n: part(n) for n, _ in model.named_parameters()}, arch
        names = list(smap.order) + ["avgpool", "fc"]
        with torch.no_grad(), stages.taps(model, names) as feats:
            logits = model(x)
        assert torch.equal(feats["head"], logits) and torch.equal(feats["fc"], logits)
        assert feats["avgpool"] is feats["pool"]
        with torch.no_grad():
            if arch.startswith("timm/"):
                inter = model.forward_intermediates(x, intermediates_only=True)
                pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
                if arch == "timm/test_vit":  # tokens -> NCHW without the class token, as timm reshapes them
                    side = SIZE // 16
                    inter = [t.flatten(2).transpose(1, 2) for t in inter]
                    feats = {k: v[:, model.num_prefix_tokens:] if k.startswith("stage") else v for k, v in feats.items()}
                    assert side * side == inter[0].shape[1]
            else:
                ends = [max(i for i, s in MOBILENET_STAGES.items() if s == k) for k in range(1, 6)]
                inter = [model.features[:e + 1](x) for e in ends]
                pre_logits = model.classifier[:3](torch.flatten(model.avgpool(model.features(x)), 1))
        assert len(inter) == len(smap.stages)
        for k, expected in enumerate(inter):
            assert torch.allclose(feats[f"stage{k + 1}"], expected, atol=1e-5), (arch, k)
        assert torch.allclose(feats["pool"], pre_logits, atol=1e-5), arch
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_freeze_at_every_stage_of_every_family(built):
    """Each --freeze level: exactly the parameters (and BatchNorm statistics) of the earlier stages stay bit-identical
    through a training step in train mode; every other parameter gets a gradient and moves."""
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, SIZE, SIZE), torch.randint(0, 10, (4,))
    for arch, part in FAMILIES.items():
        smap = backbones.stage_map(built[arch])
        order = list(smap.order)
        assert smap.freeze_choices == ["none"] + order[1:-2] + ["pool", "head"]  # every one has final-norm params
        for stage in smap.freeze_choices[1:]:
            model = copy.deepcopy(built[arch])
            reference = copy.deepcopy(model).eval()
            frz = freezing.freeze(model, stage)
            frozen = {n for n, _ in model.named_parameters() if order.index(part(n)) < order.index(stage)}
            with torch.no_grad():  # eval-locked BatchNorm twins compute what the originals do (timm keeps its act)
                assert torch.allclose(model.eval()(x), reference(x), atol=1e-6)
            before = {k: v.clone() for k, v in model.state_dict().items()}
            opt = torch.optim.SGD(frz.params, lr=0.5)
            model.train()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            after = model.state_dict()
            for n, p in model.named_parameters():
                if n in frozen:
                    assert p.grad is None and torch.equal(after[n], before[n]), (arch, stage, n)
                else:
                    assert p.grad is not None and p.grad.abs().sum() > 0, (arch, stage, n)
            buffers = [k for k in after if k not in dict(model.named_parameters()) and "running" in k]
            assert all(torch.equal(after[k], before[k]) == (order.index(part(k)) < order.index(stage))
                       for k in buffers), (arch, stage)  # BatchNorm statistics: frozen fixed, trained moving
            moved = [n for n, _ in model.named_parameters() if n not in frozen and not torch.equal(after[n], before[n])]
            assert len(moved) >= 0.9 * (len(list(model.parameters())) - len(frozen)), (arch, stage)  # (layer scales
            # of 1e-6 can round a step away)
            assert frz.trainable == sum(p.numel() for n, p in model.named_parameters() if n not in frozen)
            frz.verify(model)


@pytest.mark.slow
def test_list_stages_numbers(tmp_path):
    """--list_stages: ResNet-50's thesis fractions (and timm's ResNet-50, the same parameters); Swin-T's stage
    outputs at 224 px (NHWC: 56x56x96 ... 7x7x768) and parameter shares summed from timm's own modules."""
    r50 = backbones.describe_stages("resnet50", 224, 100)
    for line, cells in [("stage4", ["layer3", "1024x14x14", "93.91 %"]), ("stage5", ["layer4", "2048x7x7", "63.97 %"]),
                        ("fc", ["fc", "100", "0.86 %"]), ("stage1", ["conv1 bn1 relu maxpool", "64x56x56"])]:
        row = next(r for r in r50.splitlines() if r.startswith(line + " "))
        assert all(c in row for c in cells), row
    t50 = backbones.describe_stages("timm/resnet50", 224, 100)
    assert all(f in t50 for f in ("93.91 %", "63.97 %", "0.86 %"))
    r = run_script("starsse.py", "--arch", "timm/swin_tiny_patch4_window7_224", "--image_size", "224", "--dataset",
                   "cifar100", "--list_stages", "--output_dir", tmp_path / "o", "--cache_dir", tmp_path / "c",
                   env=OFFLINE)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()
    with torch.device("meta"):
        swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=100)
    total = sum(p.numel() for p in swin.parameters())
    share = lambda prefix: 100 * sum(p.numel() for n, p in swin.named_parameters() if n.startswith(prefix)) / total
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[2:8]}
    assert list(rows) == ["stage1", "stage2", "stage3", "stage4", "pool", "head"]
    for k, (hw, c) in enumerate([(56, 96), (28, 192), (14, 384), (7, 768)]):
        assert f" layers.{k} " in rows[f"stage{k + 1}"] and f"{hw}x{hw}x{c}" in rows[f"stage{k + 1}"]
        assert f"({share(f'layers.{k}.') + (share('patch_embed.') if k == 0 else 0):.2f} %)" in rows[f"stage{k + 1}"]
    assert "norm" in rows["pool"] and " 768 " in rows["pool"] and "head.fc" in rows["head"]
    assert "--freeze: none, stage2, stage3, stage4, pool, head" in r.stdout


def test_timm_save_pretrained_folder_and_torchvision_state_dict(tmp_path):
    """Weights saved by timm's save_for_hf (model.safetensors in a folder) and a torchvision state dict load
    exactly; the head is always new, sized for the task."""
    from timm.models._hub import save_for_hf
    torch.manual_seed(0)
    src = timm.create_model("test_convnext", num_classes=1000)
    save_for_hf(src, tmp_path / "hf", safe_serialization=True)
    assert (tmp_path / "hf" / "model.safetensors").exists()
    tv = torchvision.models.mobilenet_v3_small()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    for spec, arch, source in [(tmp_path / "hf", "timm/test_convnext", src),
                               (tmp_path / "tv.pth", "mobilenet_v3_small", tv)]:
        checkpoints.check_pretrained(str(spec), arch)
        model = checkpoints.load_pretrained(str(spec), arch, 7, image_size=SIZE)
        head = backbones.stage_map(model).head_module
        got = model.state_dict()
        for k, v in source.state_dict().items():
            if not k.startswith(head + "."):
                assert torch.equal(got[k], v), (arch, k)
        assert model.get_submodule(head).out_features == 7
    assert checkpoints.pretrained_id(str(tmp_path / "hf")) == \
        hashlib.sha256((tmp_path / "hf" / "model.safetensors").read_bytes()).hexdigest()


def test_resnet50_checkpoints_load_into_timm_and_torchvision_layouts(tmp_path):
    """A torchvision ResNet-50 checkpoint loads into timm/resnet50 and a timm one (safetensors) into resnet50: the
    same keys, and the two models then compute the same pooled features."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet50()
    tm = timm.create_model("resnet50", num_classes=1000)
    torch.save({"state_dict": tv.state_dict()}, tmp_path / "tv.pth")
    save_file(tm.state_dict(), str(tmp_path / "timm.safetensors"))
    a = checkpoints.load_pretrained(str(tmp_path / "tv.pth"), "timm/resnet50", 10).eval()
    b = checkpoints.load_pretrained(str(tmp_path / "timm.safetensors"), "resnet50", 10).eval()
    assert all(torch.equal(a.state_dict()[k], v) for k, v in tv.state_dict().items() if not k.startswith("fc."))
    assert all(torch.equal(b.state_dict()[k], v) for k, v in tm.state_dict().items() if not k.startswith("fc."))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), stages.taps(a, ["pool"]) as fa, stages.taps(tv.eval(), ["pool"]) as fb:
        a(x), tv(x)
    assert torch.allclose(fa["pool"], fb["pool"].flatten(1), atol=1e-5)


def test_swin_reference_checkpoints_and_drop_path(tmp_path):
    """The paper's swin_{1..5}.pth: {"model": state dict of the original Swin code (patch merging at the end of a
    stage, head.weight, relative_position_index and attn_mask buffers), "config": a yacs object} load into
    timm/swin_tiny_patch4_window7_224 (timm's checkpoint filter), even without yacs installed; --drop_path reaches
    timm's drop_path_rate (linear over the blocks up to its value)."""
    torch.manual_seed(0)
    src = timm.create_model("swin_tiny_patch4_window7_224", num_classes=1000)
    original = {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
                .replace("head.fc.", "head."): v for k, v in src.state_dict().items()}
    for name, module in src.named_modules():
        if hasattr(module, "relative_position_index"):
            original[f"{name}.relative_position_index"] = module.relative_position_index
    original["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    yacs = types.ModuleType("fake_yacs")  # a class of a package the loading machine does not have
    yacs.CfgNode = type("CfgNode", (dict,), {"__module__": "fake_yacs"})
    sys.modules["fake_yacs"] = yacs
    try:
        torch.save({"model": original, "config": yacs.CfgNode(MODEL="swin"), "epoch": 299}, tmp_path / "swin_1.pth")
    finally:
        del sys.modules["fake_yacs"]
    arch = "timm/swin_tiny_patch4_window7_224"
    checkpoints.check_pretrained(str(tmp_path / "swin_1.pth"), arch, 224)
    model = checkpoints.load_pretrained(str(tmp_path / "swin_1.pth"), arch, 100, image_size=224, drop_path=0.1)
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in src.state_dict().items() if not k.startswith("head.fc."))
    assert model.head.fc.weight.shape == (100, 768)
    probs = [b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0
             for stage in model.layers for b in stage.blocks]
    assert probs[0] == 0.0 and probs[-1] == pytest.approx(0.1) and probs == sorted(probs)


def _fake_hf_cache(root, repo, state):
    """A Hugging Face hub cache holding `repo`'s model.safetensors, as hf_hub_download leaves it."""
    folder = root / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    save_file(state, str(folder / "snapshots" / commit / "model.safetensors"))
    return folder / "snapshots" / commit / "model.safetensors"


@pytest.mark.slow
def test_pretrained_timm_from_the_local_cache_and_the_offline_error(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src = timm.create_model("test_vit", num_classes=1000)
    file = _fake_hf_cache(tmp_path / "hub", "timm/test_vit.r160_in1k", src.state_dict())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = checkpoints.load_pretrained("timm", "timm/test_vit", 10)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items() if not k.startswith("head."))
    assert model.head.out_features == 10
    assert checkpoints.pretrained_id("timm", "timm/test_vit") == "timm:" + hashlib.sha256(file.read_bytes()).hexdigest()
    small = checkpoints.load_pretrained("timm", "timm/test_vit", 10, image_size=SIZE)  # position embedding resampled
    expected = timm.layers.resample_abs_pos_embed(src.pos_embed, (SIZE // 16, SIZE // 16), num_prefix_tokens=1)
    assert small.pos_embed.shape == (1, 5, 64) and torch.allclose(small.pos_embed, expected, atol=1e-6)
    assert torch.equal(small.blocks[3].mlp.fc2.weight, src.blocks[3].mlp.fc2.weight)
    empty = tmp_path / "empty"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(empty))
    with pytest.raises(UserError) as e:
        checkpoints.check_pretrained("timm", "timm/test_vit")
    msg = str(e.value)
    assert str(empty / "models--timm--test_vit.r160_in1k") in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg
    r = run_script("starsse.py", "--arch", "timm/test_vit", "--pretrained", "timm", "--cpu", "--output_dir",
                   tmp_path / "o", "--cache_dir", tmp_path / "c", env=dict(OFFLINE, HF_HUB_CACHE=str(empty)))
    assert r.returncode == 2 and r.stderr.strip() == f"error: {msg}"
    assert not (tmp_path / "o").exists()


def test_torchvision_weights_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    src = torchvision.models.mobilenet_v3_small()
    torch.save(src.state_dict(), folder / os.path.basename(weights.url))
    for spec in ("torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1", "torchvision:DEFAULT"):
        model = checkpoints.load_pretrained(spec, "mobilenet_v3_small", 10)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items()
                   if not k.startswith("classifier.3."))
    assert checkpoints.pretrained_id("torchvision:DEFAULT", "mobilenet_v3_small") == \
        "torchvision:" + hashlib.sha256((folder / os.path.basename(weights.url)).read_bytes()).hexdigest()
    # torchvision's published preprocessing of these weights: resize 256, crop 224, bilinear, ImageNet statistics
    assert backbones.data_config("mobilenet_v3_small", "torchvision:DEFAULT") == {
        "input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 224 / 256,
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    cfg = timm.models.get_pretrained_cfg("test_vit")
    assert backbones.data_config("timm/test_vit", "timm") == {"input_size": cfg.input_size, "crop_pct": cfg.crop_pct,
                                                         "interpolation": cfg.interpolation, "mean": cfg.mean,
                                                         "std": cfg.std}
    with pytest.raises(UserError, match=r"resnet18-f37072fd.pth is not in .*checkpoints and HF_HUB_OFFLINE is set"):
        checkpoints.check_pretrained("torchvision:ResNet18_Weights.IMAGENET1K_V1", "resnet18")
    small = "torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1"  # weights of another architecture:
    with pytest.raises(UserError, match="no key matches timm/test_vit .*another architecture"):
        checkpoints.load_pretrained(small, "timm/test_vit", 10)
    with pytest.raises(UserError, match=r"for mobilenet_v3_large: key layout does not match .*missing .*unexpected"):
        checkpoints.check_pretrained(small, "mobilenet_v3_large")


def test_bad_input_names_the_choices(built):
    with pytest.raises(UserError, match=r"unknown arch 'resnet51' .*did you mean .*resnet50"):
        backbones.build_model("resnet51", 10)
    with pytest.raises(UserError, match=r"unknown arch 'timm/vit_tinyy_patch16_224'.*timm/vit_tiny_patch16_224"):
        backbones.build_model("timm/vit_tinyy_patch16_224", 10)
    vit = built["timm/test_vit"]
    with pytest.raises(UserError, match=r"unknown stage 'stage9' \(choose from stage1, stage2, stage3, stage4, "
                                        r"stage5, stage6, pool, head for timm/test_vit"):
        with stages.taps(vit, ["stage9"]):
            pass
    with pytest.raises(UserError, match=r"unknown --freeze 'stage9' \(choose from none, stage2, stage3, stage4, "
                                        r"stage5, stage6, pool, head\)"):
        freezing.freeze(copy.deepcopy(vit), "stage9")
    args = lambda **kw: argparse.Namespace(**{**dict(arch="timm/swin_tiny_patch4_window7_224", image_size=224,
                                                     drop_path=0.0, pretrained=["scratch"], dataset="cifar100"), **kw})
    checkpoints.check_settings(args(freeze="pool", layers=["stage3:0.5", "avgpool"]))
    for kw, msg in [(dict(freeze="stage5"), "unknown --freeze 'stage5' (choose from none, stage2, stage3, stage4, "
                                            "pool, head)"),
                    (dict(layers=["stage5"]), "unknown layer 'stage5' (choose from stage2, stage3, stage4, pool for "
                                              "timm/swin_tiny_patch4_window7_224)"),
                    (dict(arch="resnet18", pretrained=["timm"]), "--pretrained timm loads a timm model's own weights"),
                    (dict(arch="resnet_mini", pretrained=None, dataset="digits", drop_path=0.1), "--drop_path: "
                                                                                                 "resnet_mini has no"),
                    (dict(arch="timm/test_vit", pretrained=None, dataset="digits"), "--arch timm/test_vit: the "
                                                                                    "embedded pre-trained checkpoint")]:
        with pytest.raises(UserError) as e:
            checkpoints.check_settings(args(**kw))
        assert str(e.value).startswith(msg), str(e.value)


def test_sync_batchnorm_keeps_timm_norm_act(built):
    model = copy.deepcopy(built["timm/test_efficientnet"]).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        plain = model(x)
    classes = {n: type(m) for n, m in model.named_modules()}
    freezing.to_sync_batchnorm(model)
    synced = [type(m).__name__ for m in model.modules()]
    assert "SyncBatchNormAct" in synced and "BatchNormAct2d" not in synced
    assert all(hasattr(m, "act") for m in model.modules() if type(m).__name__ == "SyncBatchNormAct")
    freezing.from_sync_batchnorm(model)
    assert {n: type(m) for n, m in model.named_modules()} == classes
    with torch.no_grad():
        assert torch.equal(model(x), plain)


@pytest.mark.slow
def test_frozen_convnext_starsse_member_parallel_on_the_device_pipeline(tmp_path):
    """StarSSE end to end on a timm ConvNeXt: 2 processes training different rays, the device data pipeline, cycles
    with stage1..stage2 frozen; then the representation analysis of the run (every stage of the model)."""
    env = dict(os.environ, ACCELERATE_USE_CPU="true", **OFFLINE)
    out = tmp_path / "convnext"
    r = subprocess.run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", os.path.join(REPO, "scripts", "starsse.py"),
                        "--arch", "timm/test_convnext", "--image_size", str(SIZE), "--pretrained", "scratch",
                        "--member_parallel", "--data_pipeline", "device", "--freeze", "stage3", "--cpu", "--quiet",
                        "--epochs", "1", "--cycle_epochs", "1", "--members", "3", "--cache_dir", tmp_path / "cache",
                        "--output_dir", out], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    w = {i: load_weights(out / f"member_{i}.safetensors") for i in (1, 2, 3)}
    params = dict(timm.create_model("test_convnext", num_classes=10).named_parameters())
    frozen = lambda k: convnext_part(k) in ("stage1", "stage2")
    for i in (2, 3):
        rec = load_json(out / f"member_{i}.json")
        assert rec["process"] == i - 2  # rays dealt round-robin over the two processes
        assert rec["trainable_fraction"] == pytest.approx(
            sum(p.numel() for k, p in params.items() if not frozen(k)) / sum(p.numel() for p in params.values()))
        for k in w[1]:
            assert torch.equal(w[i][k], w[1][k]) == frozen(k), (i, k)
    from lib.analysis.representations import member_representations, test_images
    run = open_run(out)
    res = member_representations(run, n_points=24, device="cpu", log=lambda *a: None)
    assert list(res[2]["features"]) == ["stage2", "stage3", "stage4", "pool"]
    assert res[2]["weights"]["stage2"] == 0.0 and res[2]["weights"]["stage3"] > 0  # stage2 was frozen
    images = test_images(run.config, 24)
    pooled = []
    for i in (1, 2):  # the pooled features by timm's own pre-logits path
        model = timm.create_model("test_convnext", num_classes=10).eval()
        model.load_state_dict(w[i])
        with torch.no_grad():
            pooled.append(model.forward_head(model.forward_features(images), pre_logits=True))
    assert res[2]["features"]["pool"]["mse"] == pytest.approx(((pooled[0] - pooled[1]) ** 2).mean().item(), rel=1e-4)


@pytest.mark.slow
def test_frozen_vit_starsse(tmp_path):
    """StarSSE end to end on a timm ViT at 32 px, cycles with the embeddings and blocks 0-2 frozen."""
    r = run_script("starsse.py", "--arch", "timm/test_vit", "--image_size", str(SIZE), "--pretrained", "scratch",
                   "--freeze", "stage4", "--cpu", "--quiet", "--epochs", "1", "--cycle_epochs", "1", "--members", "2",
                   "--cache_dir", tmp_path / "cache", "--output_dir", tmp_path / "vit", env=OFFLINE)
    assert r.returncode == 0, r.stderr
    w1, w2 = (load_weights(tmp_path / "vit" / f"member_{i}.safetensors") for i in (1, 2))
    frozen = lambda k: vit_part(k) in ("stage1", "stage2", "stage3")
    assert all(torch.equal(w2[k], w1[k]) == frozen(k) for k in w1)
    assert load_json(tmp_path / "vit" / "metrics.json")["method"] == "StarSSE (freeze stage4)"


@pytest.mark.slow
def test_sse_rtd_on_a_torchvision_model_taps_pool_and_a_middle_stage(tmp_path):
    """SSE-RTD end to end on torchvision's MobileNetV3 (device data pipeline), the term on pool and stage3; then
    the representation analysis of the run."""
    r = run_script("sse_rtd.py", "--arch", "mobilenet_v3_small", "--pretrained", "scratch", "--cpu", "--quiet",
                   "--epochs", "1", "--cycle_epochs", "1", "--members", "2", "--batch_size", "40", "--similarity",
                   "rtd", "--alpha", "1", "--layers", "pool", "stage3:0.5", "--data_pipeline", "device",
                   "--cache_dir", tmp_path / "cache", "--output_dir", tmp_path / "rtd", env=OFFLINE)
    assert r.returncode == 0, r.stderr
    assert load_json(tmp_path / "rtd" / "member_2.json")["history"][0]["rtd"] > 0
    assert "rtd" not in load_json(tmp_path / "rtd" / "member_1.json")["history"][0]
    from lib.analysis.representations import member_representations
    res = member_representations(open_run(tmp_path / "rtd"), n_points=16, device="cpu", log=lambda *a: None)
    assert list(res[2]["features"]) == ["stage2", "stage3", "stage4", "stage5", "pool"]
    assert res[1]["features"]["pool"]["mse"] == 0 and res[2]["features"]["pool"]["mse"] > 0
    assert res[2]["weights"]["pool"] > 0 and 0 < res[2]["cosine"] < 1
