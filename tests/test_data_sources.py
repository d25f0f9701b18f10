"""Bring your own data (issue 13): Hugging Face data sets (save_to_disk, Parquet, a hub id offline), image folders,
the decode cache, the validation split, bad input, evaluation sets, and StarSSE end to end on each source.

Every data set is made here: PNG images whose pixels are known, in RGB, grayscale, RGBA and palette modes and two
sizes; Hugging Face's Image and ClassLabel features; CIFAR-10-C and SVHN files in their published layouts."""
import io
import json
import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the hub (set before the datasets library is imported)
os.environ["HF_DATASETS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import run_script, settings  # noqa: E402
from PIL import Image  # noqa: E402
from test_data import write_tiny_cifar10, write_tiny_cifar100  # noqa: E402

from lib.data import sources  # noqa: E402
from lib.data import tasks as data  # noqa: E402
from lib.data.device import DeviceImages  # noqa: E402
from lib.infra.errors import UserError  # noqa: E402

CLASSES = ["cat", "dog", "emu"]
MODES = ["RGB", "L", "RGBA", "P"]  # image k of a class folder is saved in MODES[k % 4]
SIZES = [(12, 12), (16, 10)]      # (width, height) of image k: SIZES[k % 2]


def pixels(c, k, size):
    """The RGB pixels (H, W, 3) of image k of class c: a class-dependent mean plus fixed noise."""
    w, h = size
    rng = np.random.RandomState(100 * c + k)
    return np.clip(rng.normal(50 + 70 * c, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)


def write_folder(root, per_class, classes=CLASSES, sizes=SIZES):
    for c, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(per_class):
            image = Image.fromarray(pixels(c, k, sizes[k % len(sizes)]))
            (image if MODES[k % 4] == "RGB" else image.convert(MODES[k % 4])).save(os.path.join(root, name, f"{k}.png"))


def png(array):
    b = io.BytesIO()
    Image.fromarray(array).save(b, format="PNG")
    return b.getvalue()


def hf_split(per_class, names=CLASSES, offset=0, label_feature=None):
    """A datasets.Dataset of 12x12 PNGs (Image feature) with a ClassLabel (or `label_feature`) column."""
    import datasets
    rows = [(c, k) for c in range(len(names)) for k in range(offset, offset + per_class)]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": label_feature or datasets.ClassLabel(names=list(names))})
    labels = [c for c, _ in rows] if label_feature is None or label_feature.dtype != "string" \
        else [names[c] for c, _ in rows]
    return datasets.Dataset.from_dict({"image": [{"bytes": png(pixels(c, k, (12, 12))), "path": None}
                                                 for c, k in rows], "label": labels}, features=features)


def hf_pixels(per_class, offset=0):
    return np.stack([pixels(c, k, (12, 12)) for c in range(3) for k in range(offset, offset + per_class)])


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Every data set of the tests, made once: an image folder, save_to_disk folders, Parquet files, broken ones."""
    import datasets
    base = tmp_path_factory.mktemp("sources")
    mp = pytest.MonkeyPatch()
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(base / "hf_cache"))  # load_dataset's Arrow copies
    r = {k: str(base / k) for k in ("train", "test", "saved", "saved3", "bad_images", "strings", "empty_test",
                                    "other_names", "extra_test", "empty_class", "broken_png", "nested")}
    write_folder(r["train"], 8)
    write_folder(r["test"], 4)
    dd = datasets.DatasetDict(train=hf_split(8), test=hf_split(4, offset=8))
    dd.save_to_disk(r["saved"])
    r["train.parquet"], r["test.parquet"] = str(base / "train.parquet"), str(base / "test.parquet")
    dd["train"].to_parquet(r["train.parquet"])
    dd["test"].to_parquet(r["test.parquet"])
    import pyarrow.parquet as pq  # a plain Parquet file without the datasets library's metadata: int labels
    r["plain.parquet"] = str(base / "plain.parquet")
    pq.write_table(pq.read_table(r["train.parquet"]).replace_schema_metadata(None), r["plain.parquet"])
    three = datasets.DatasetDict(train=hf_split(8), valid=hf_split(2, offset=20), test=hf_split(4, offset=8))
    three.save_to_disk(r["saved3"])
    broken = hf_split(2)  # image 5 (class 2, second image) truncated
    blobs = [{"bytes": b["bytes"][:40] if i == 5 else b["bytes"], "path": None}
             for i, b in enumerate(broken.cast_column("image", datasets.Image(decode=False))["image"])]
    bad = datasets.Dataset.from_dict({"image": blobs, "label": broken["label"]}, features=broken.features)
    datasets.DatasetDict(train=bad, test=hf_split(1)).save_to_disk(r["bad_images"])
    datasets.DatasetDict(train=hf_split(2, label_feature=datasets.Value("string")),
                         test=hf_split(1, label_feature=datasets.Value("string"))).save_to_disk(r["strings"])
    datasets.DatasetDict(train=hf_split(2), test=hf_split(2).select([])).save_to_disk(r["empty_test"])
    other = datasets.DatasetDict(train=hf_split(2), test=hf_split(1, names=["cat", "dog", "fox"]))
    other.save_to_disk(r["other_names"])
    write_folder(r["extra_test"], 1, CLASSES + ["fox"])
    write_folder(r["empty_class"], 2, CLASSES[:2])
    os.makedirs(os.path.join(r["empty_class"], "emu"))
    write_folder(r["broken_png"], 2)
    with open(os.path.join(r["broken_png"], "dog", "9.png"), "wb") as f:
        f.write(b"not a png")
    write_folder(os.path.join(r["nested"], "a", "b"), 1, ["x"], [(20, 20)])  # 20x20 RGB + the folder's mixed set
    write_folder(os.path.join(r["nested"], "c"), 2, ["y"], [(8, 8)])
    yield r
    mp.undo()


def cfg_of(flags, cache, method="StarSSE"):
    return settings(["--arch", "resnet_mini", "--pretrained", "scratch", "--image_size", "16", "--cache_dir", cache,
                     "--cpu", *flags], method)


def task_of(flags, cache, **kw):
    return data.load_task(cfg_of(flags, cache, **kw))


def folder_flags(r, pipeline):
    return ["--dataset", "imagefolder", "--train_dir", r["train"], "--test_dir", r["test"], "--data_pipeline", pipeline]


# ----------------------------------------------------------------------------------------------------------------
# sources

def test_image_folder_reads_classes_modes_and_sizes(roots, tmp_path):
    tv = task_of(folder_flags(roots, "torchvision"), str(tmp_path))
    assert tv.class_names == CLASSES and tv.num_classes == 3 and len(tv.train) == 24 and tv.test_size is None
    assert tv.test_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert tv.train[1][0].shape == (3, 16, 16) and tv.test[5][0].shape == (3, 16, 16) and tv.train[9][1] == 1
    src = tv.train.source
    for k in range(4):  # class 1 ("dog"), image k: paths sorted per class folder
        image, expected = src.image(8 + k), pixels(1, k, SIZES[k % 2])
        got = np.asarray(image)
        assert image.mode == "RGB" and got.shape == expected.shape
        if MODES[k] in ("RGB", "RGBA"):  # RGBA from RGB: alpha 255, colours kept
            assert np.array_equal(got, expected)
        elif MODES[k] == "L":  # ITU-R 601-2 luma, replicated to 3 channels
            luma = expected.astype(float) @ [0.299, 0.587, 0.114]
            assert np.abs(got - luma[..., None]).max() <= 1 and (got[..., 0] == got[..., 2]).all()
        else:  # palette: every pixel is its palette entry
            p = Image.open(os.path.join(roots["train"], "dog", f"{k}.png"))
            palette = np.array(p.getpalette()).reshape(-1, 3)
            assert np.array_equal(got, palette[np.asarray(p)])
    # the device pipeline: mixed sizes -> decoded once at --image_size (PIL's bilinear resize), RGB
    dev = task_of(folder_flags(roots, "device"), str(tmp_path))
    assert isinstance(dev.train, DeviceImages) and dev.train.images.shape == (24, 3, 16, 16)
    for i in (0, 9, 19):
        ref = np.asarray(src.image(i).resize((16, 16), Image.BILINEAR)).transpose(2, 0, 1)
        assert np.array_equal(dev.train.images[i].numpy(), ref)
    assert dev.train.mode == "reference" and dev.test.mode == "test_reference"
    assert np.array_equal(dev.test_labels, tv.test_labels) and dev.train_key == tv.train_key is not None


def test_decode_cache_is_reused_and_follows_the_files(roots, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    src = sources.folder_images(roots["test"], CLASSES, "test")
    first = sources.decode(src, (12, 12), cache)
    path = os.path.join(cache, "decoded", f"{src.fingerprint}-12x12.npy")
    assert os.path.isfile(path) and first.shape == (12, 3, 12, 12) and first.dtype == torch.uint8
    scan = sources.scan(src, cache)
    assert sorted(map(tuple, scan.sizes)) == sorted([(12, 12)] * 6 + [(10, 16)] * 6) and scan.converted == 9

    def fail(_self, _raw):
        raise AssertionError("decoded again")
    monkeypatch.setattr(sources.FileImages, "_open", fail)
    assert torch.equal(sources.decode(src, (12, 12), cache), first)  # from the cache: no image is opened
    assert sources.scan(src, cache).converted == 9
    monkeypatch.undo()
    copy = str(tmp_path / "copy")
    shutil.copytree(roots["test"], copy)
    touched = os.path.join(copy, "cat", "0.png")
    before = sources.folder_images(copy, CLASSES, "copy").fingerprint
    os.utime(touched, ns=(1, 1))
    assert sources.folder_images(copy, CLASSES, "copy").fingerprint != before  # a changed file: a new cache entry


@pytest.mark.parametrize("pipeline", ["device", "torchvision"])
def test_save_to_disk_and_parquet_give_the_same_task(roots, tmp_path, pipeline):
    forms = [["--dataset_name", roots["saved"]],
             ["--data_files", f"train={roots['train.parquet']}", f"test={roots['test.parquet']}"]]
    tasks = [task_of(["--dataset", "hf", "--data_pipeline", pipeline, *f], str(tmp_path)) for f in forms]
    for t in tasks:
        assert t.class_names == CLASSES and t.num_classes == 3 and t.test_size is None
        assert t.test_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and t.train_key is not None
        if pipeline == "device":  # native 12x12 kept: every image shares it
            assert np.array_equal(t.train.images.permute(0, 2, 3, 1).numpy(), hf_pixels(8))
            assert np.array_equal(t.test.images.permute(0, 2, 3, 1).numpy(), hf_pixels(4, offset=8))
        else:
            assert np.array_equal(np.asarray(t.train.source.image(3)), hf_pixels(8)[3])
            assert t.train[3][0].shape == (3, 16, 16)
    # a plain Parquet file (no datasets metadata: an image struct, int labels): classes from the labels seen
    plain = data.load_task(cfg_of(["--dataset", "hf", "--data_files", f"train={roots['plain.parquet']}",
                                   f"test={roots['plain.parquet']}", "--data_pipeline", pipeline], str(tmp_path)))
    assert plain.class_names == ["0", "1", "2"] and plain.test_labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8


def test_validation_split_is_stratified_disjoint_and_the_same_for_every_method_and_seed(roots, tmp_path):
    cache = str(tmp_path)
    runs = [task_of(["--dataset", "hf", "--dataset_name", roots["saved"], "--val_split", "0.25", "--seed", seed,
                     "--data_pipeline", pipeline], cache, method=method)
            for seed, method, pipeline in [("0", "StarSSE", "device"), ("3", "Local DE", "device"),
                                           ("1", "SSE", "torchvision")]]
    ref = runs[0]
    assert np.bincount(ref.val_labels).tolist() == [2] * 3  # ceil(0.25 * 24) = 6 held out: 2 of each class
    assert np.bincount(ref.train.labels.numpy()).tolist() == [6] * 3
    all_images = {png(a) for a in hf_pixels(8)}
    train = {png(a) for a in ref.train.images.permute(0, 2, 3, 1).numpy()}
    val = {png(a) for a in ref.val.images.permute(0, 2, 3, 1).numpy()}
    assert not train & val and train | val == all_images and len(val) == 6
    assert isinstance(ref.val, DeviceImages) and ref.val.mode == ref.test.mode == "test_reference"
    for other in runs[1:]:  # other seeds, methods and pipelines: the same held-out images
        assert np.array_equal(other.val_labels, ref.val_labels)
    held = runs[2].val.indices
    assert {png(np.asarray(runs[2].train.source.image(int(i)))) for i in held} == val
    assert runs[0].train_key == runs[1].train_key != task_of(["--dataset", "hf", "--dataset_name", roots["saved"]],
                                                             cache).train_key
    # --val_split_name: a split the data set has
    named = task_of(["--dataset", "hf", "--dataset_name", roots["saved3"], "--val_split_name", "valid"], cache)
    assert len(named.train) == 24 and named.val_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(named.val.images.permute(0, 2, 3, 1).numpy(), hf_pixels(2, offset=20))


# ----------------------------------------------------------------------------------------------------------------
# bad input: one clear error before anything is built or written

BAD = [
    (lambda r: ["--dataset", "hf", "--dataset_name", r["saved"], "--image_column", "pic"],
     r"has no column 'pic' \(--image_column; its columns: image, label\)"),
    (lambda r: ["--dataset", "hf", "--dataset_name", r["saved"], "--label_column", "fine"],
     r"has no column 'fine' .*its columns: image, label"),
    (lambda r: ["--dataset", "hf", "--dataset_name", r["strings"]],
     r"label column 'label' holds .*string.*not integers or a ClassLabel"),
    (lambda r: ["--dataset", "hf", "--dataset_name", r["empty_test"]], r"split 'test' of .* is empty"),
    (lambda r: ["--dataset", "hf", "--dataset_name", r["saved"], "--val_split_name", "valid"],
     r"has no split 'valid' \(--val_split_name; its splits: train, test\)"),
    (lambda r: ["--dataset", "hf", "--data_files", r["train.parquet"]], r"has no split 'test' .*its splits: train"),
    (lambda r: ["--dataset", "hf", "--dataset_name", r["other_names"]], r"split 'test' .* has other classes"),
    (lambda r: ["--dataset", "hf", "--dataset_name", r["bad_images"], "--data_pipeline", "torchvision"],
     r"image 5 of split 'train' of .* cannot be decoded"),
    (lambda r: ["--dataset", "hf", "--dataset_name", r["bad_images"]],
     r"image 5 of split 'train' .* cannot be decoded"),
    (lambda r: ["--dataset", "imagefolder", "--train_dir", r["broken_png"], "--test_dir", r["test"]],
     r"image .*dog/9\.png cannot be decoded"),
    (lambda r: ["--dataset", "imagefolder", "--train_dir", r["train"], "--test_dir", r["extra_test"]],
     r"different class folders: only in --train_dir: none; only in --test_dir: fox"),
    (lambda r: ["--dataset", "imagefolder", "--train_dir", r["empty_class"], "--test_dir", r["test"]],
     r"class 'emu' has no training image"),
    (lambda r: ["--dataset", "hf", "--dataset_name", r["other_names"], "--val_split", "0.3"],
     r"split 'test' .* has other classes"),
    (lambda r: ["--dataset", "imagefolder", "--train_dir", r["test"], "--test_dir", r["test"], "--val_split", "0.1"],
     r"holds out 2 of the 12 images .* fewer than its 3 classes"),
    (lambda r: ["--dataset", "imagefolder", "--train_dir", r["nested"], "--test_dir", r["nested"], "--val_split",
                "0.4"], r"class 'a' has 1 image in --train_dir; a stratified split needs 2 or more"),
    (lambda r: ["--val_split", "0.5"], r"--val_split must be in \(0, 0.5\), got 0.5"),
    (lambda r: ["--val_split", "0"], r"--val_split must be in \(0, 0.5\)"),
    (lambda r: ["--dataset", "hf", "--dataset_name", r["saved"], "--val_split", "0.2", "--val_split_name", "test"],
     r"exclude each other"),
    (lambda r: ["--val_split_name", "valid"], r"--val_split_name is for --dataset hf"),
    (lambda r: ["--dataset", "hf"], r"needs --dataset_name NAME_OR_PATH .* or --data_files"),
    (lambda r: ["--dataset", "hf", "--data_files", r["train"] + "/nothing.parquet"], r"file not found"),
    (lambda r: ["--dataset", "imagefolder", "--train_dir", r["train"]], r"needs --train_dir and --test_dir"),
    (lambda r: ["--dataset", "hf", "--dataset_name", r["saved"], "--auto_augment", "rand-m9"],
     r"apply to the torchvision pipeline only"),
    (lambda r: ["--dataset", "hf", "--dataset_name", r["saved"], "--data_pipeline", "torchvision", "--auto_augment",
                "nonsense"], r"--auto_augment nonsense: not a timm policy"),
    (lambda r: ["--reprob", "0.2"], r"--reprob: not for --dataset digits"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_is_one_clear_error(roots, tmp_path, flags, message):
    with pytest.raises(UserError, match=message) as e:
        task_of(flags(roots), str(tmp_path))
    assert "\n" not in str(e.value)


def test_unknown_dataset_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        cfg_of(["--dataset", "mnist"], "runs/cache")
    assert e.value.code == 2 and "error: unknown --dataset 'mnist' (choose from digits, cifar10, cifar100, hf, " \
        "imagefolder)" in capsys.readouterr().err


@pytest.mark.slow
def test_offline_hub_id_is_one_line_and_nothing_is_written(tmp_path):
    out = tmp_path / "run"
    r = run_script("starsse.py", "--dataset", "hf", "--dataset_name", "some/id", "--arch", "resnet_mini",
                   "--pretrained", "scratch", "--cpu", "--quiet", "--output_dir", out, "--cache_dir", tmp_path / "c",
                   env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'some/id'" in lines[0]
    assert "HF_DATASETS_OFFLINE" in lines[0] and not out.exists()


# ----------------------------------------------------------------------------------------------------------------
# StarSSE end to end

TINY = ["--arch", "resnet_mini", "--pretrained", "scratch", "--epochs", "1", "--cycle_epochs", "1", "--members", "2",
        "--batch_size", "8", "--image_size", "16", "--num_workers", "0", "--cpu", "--quiet"]


@pytest.mark.slow
def test_starsse_on_an_image_folder_with_a_validation_split(roots, tmp_path):
    out = tmp_path / "run"
    r = run_script("starsse.py", "--dataset", "imagefolder", "--train_dir", roots["train"], "--test_dir",
                   roots["test"], "--data_pipeline", "torchvision", "--val_split", "0.25", *TINY, "--output_dir", out,
                   "--cache_dir", tmp_path / "cache", env={"HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["members"] == 2 and metrics["dataset"] == "imagefolder"
    assert np.load(out / "labels.npy").tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert np.bincount(np.load(out / "val_labels.npy")).tolist() == [2, 2, 2]  # 6 of the 24 training images
    assert np.load(out / "member_2_probs.npy").shape == (12, 3)


@pytest.mark.slow
def test_starsse_on_save_to_disk_and_parquet_gives_the_same_members(roots, tmp_path):
    """The same images through a save_to_disk folder and Parquet files (device pipeline, separate caches): the same
    decoded tensors, hence bit-identical members."""
    probs = []
    for k, form in enumerate([["--dataset_name", roots["saved"]],
                              ["--data_files", f"train={roots['train.parquet']}", f"test={roots['test.parquet']}"]]):
        out = tmp_path / f"run{k}"
        r = run_script("starsse.py", "--dataset", "hf", *form, "--data_pipeline", "device", *TINY, "--output_dir",
                       out, "--cache_dir", tmp_path / f"cache{k}", env={"HF_HOME": str(tmp_path / "hf")})
        assert r.returncode == 0, r.stderr
        assert json.loads((out / "metrics.json").read_text())["members"] == 2
        probs.append([np.load(out / f"member_{i}_probs.npy") for i in (1, 2)])
        decoded = sorted(os.listdir(tmp_path / f"cache{k}" / "decoded"))
        assert len(decoded) == 8  # train and test: scan + 12x12 tensor, each with its digest (.sha256)
        assert [f for f in decoded if f.endswith(".npy")] == [f[:-len(".sha256")] for f in decoded if
                                                              f.endswith(".sha256")]
    assert all(np.array_equal(a, b) for a, b in zip(*probs))


# ----------------------------------------------------------------------------------------------------------------
# evaluation sets

def write_svhn(root, n=6):
    from scipy.io import savemat
    rng = np.random.RandomState(2)
    x = rng.randint(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [4], [5]], dtype=np.uint8)[:n]
    os.makedirs(root)
    savemat(os.path.join(root, "test_32x32.mat"), {"X": x, "y": y})
    return x.transpose(3, 2, 0, 1), np.where(y[:, 0] == 10, 0, y[:, 0])


def write_cifar_c(root, n=3, corruptions=("fog", "zoom_blur"), classes=10):
    os.makedirs(root)
    rng = np.random.RandomState(3)
    arrays = {c: rng.randint(0, 256, size=(5 * n, 32, 32, 3), dtype=np.uint8) for c in corruptions}
    for c, a in arrays.items():
        np.save(os.path.join(root, f"{c}.npy"), a)
    labels = np.tile(np.arange(n) % classes, 5)  # the published file repeats the test labels for each severity
    np.save(os.path.join(root, "labels.npy"), labels.astype(np.uint8))
    return arrays, labels


def first_batch(dataset):
    x, y = next(iter(data.test_loader(dataset, 64)))
    return (dataset.transform_batch(x) if isinstance(dataset, DeviceImages) else x), y


@pytest.mark.parametrize("pipeline", ["torchvision", "device"])
def test_eval_sets_on_the_digits_run(tmp_path, pipeline):
    cfg = cfg_of(["--data_pipeline", pipeline], str(tmp_path))
    task = data.load_task(cfg)
    test_x, _ = first_batch(task.test)
    raw, labels = write_svhn(str(tmp_path / "svhn"))
    es = data.load_eval_set(f"svhn:{tmp_path / 'svhn'}", cfg, labelled=True, task=task)
    (part,) = es.parts
    assert es.name == "svhn" and part.name == "all" and es.note == "resized 32x32 -> 16x16"
    assert part.labels.tolist() == labels.tolist()  # SVHN's 10 is the digit 0
    x, _ = first_batch(part.dataset)
    assert x.shape[1:] == test_x.shape[1:]
    small = F.interpolate(torch.from_numpy(raw).float(), size=16, mode="bilinear", antialias=True,
                          align_corners=False).round() / 255
    assert torch.allclose(x, (small - 0.3053) / 0.3189, atol=1e-5)  # resized, then the digits normalisation
    # synthetic sets from the run's own test images
    noise = data.load_eval_set("noise", cfg, False, task).parts[0]
    perm = data.load_eval_set("permuted", cfg, False, task).parts[0]
    flip = data.load_eval_set("flipped", cfg, True, task).parts[0]
    raw_test = data.raw_test_images(task)
    assert noise.dataset.images.shape == raw_test.shape and noise.labels is None  # TensorImages / DeviceImages
    scale = 255 if raw_test.dtype == torch.uint8 else 1
    assert noise.dataset.images.float().std() > 0.25 * scale  # uniform noise: std 0.29 of the range
    p = perm.dataset.images
    assert torch.equal(p.flatten(2).sort(-1).values, raw_test.flatten(2).sort(-1).values)  # pixels kept per image
    assert not torch.equal(p, raw_test)
    assert torch.equal(data.load_eval_set("permuted", cfg, False, task).parts[0].dataset.images, p)  # fixed
    # one permutation of pixel positions for every image and channel: read it off an image of distinct values
    codes = torch.arange(3 * 64, dtype=torch.float32).reshape(1, 3, 8, 8) / 192
    probe = data.TaskData(None, data.TensorImages(torch.cat([codes, codes.flip(-1) * 0.5]), [0, 1]), 2, None)
    out = data.load_eval_set("permuted", cfg, False, probe).parts[0].dataset.images.flatten(2)
    sigma = torch.round(out[0, 0] * 192).long()  # image 0 holds its own positions: the permutation itself
    assert sorted(sigma.tolist()) == list(range(64)) and sigma.tolist() != list(range(64))
    assert torch.equal(out[0, 1], codes.flatten(2)[0, 1][sigma])
    assert torch.equal(out[1], probe.test.images[1].flatten(1)[:, sigma])
    assert torch.equal(flip.dataset.images, raw_test.flip(2)) and np.array_equal(flip.labels, task.test_labels)
    with pytest.raises(UserError, match="'noise' has no labels"):
        data.load_eval_set("noise", cfg, True, task)
    with pytest.raises(UserError, match="unknown evaluation set 'mnist:/x'"):
        data.load_eval_set("mnist:/x", cfg, False, task)


def test_eval_sets_from_folders_hf_and_the_pickles(roots, tmp_path):
    cache = str(tmp_path)
    hf = task_of(["--dataset", "hf", "--dataset_name", roots["saved"]], cache)
    es = data.load_eval_set(f"hf:{roots['saved']}", cfg_of(["--dataset", "hf", "--dataset_name", roots["saved"]],
                                                             cache), True, hf)
    assert es.name == "saved" and np.array_equal(es.parts[0].labels, hf.test_labels) and es.note is None
    assert torch.equal(es.parts[0].dataset.images, hf.test.images)
    # every image under a folder, any depth, without labels: mixed sizes and modes -> RGB at --image_size
    folder_cfg = cfg_of(folder_flags(roots, "device"), cache)
    folder_task = data.load_task(folder_cfg)
    ood = data.load_eval_set(f"imagefolder:{roots['nested']}", folder_cfg, False, folder_task)
    assert ood.name == "nested" and len(ood.parts[0].dataset) == 3 and ood.parts[0].labels is None
    assert ood.note == "converted 1 images to RGB; resized images of mixed sizes to 16x16"
    assert ood.parts[0].dataset.images.shape == (3, 3, 16, 16)
    shifted = data.load_eval_set(f"imagefolder:{roots['test']}", folder_cfg, True, folder_task)
    assert np.array_equal(shifted.parts[0].labels, folder_task.test_labels)
    with pytest.raises(UserError, match="other classes than the task"):
        data.load_eval_set(f"imagefolder:{roots['extra_test']}", folder_cfg, True, folder_task)
    with pytest.raises(UserError, match="has no images"):
        os.makedirs(tmp_path / "none" / "a")
        data.load_eval_set(f"imagefolder:{tmp_path / 'none'}", folder_cfg, False, folder_task)
    # CIFAR-10 pickles and CIFAR-10-C against a CIFAR-10 run; CIFAR-10 against a CIFAR-100 run
    write_tiny_cifar10(str(tmp_path / "c10"))
    c10_cfg = cfg_of(["--dataset", "cifar10", "--data_dir", tmp_path / "c10", "--augment", "cifar"], cache)
    c10 = data.load_task(c10_cfg)
    arrays, labels = write_cifar_c(str(tmp_path / "c10c"), n=10)
    cc = data.load_eval_set(f"cifar-c:{tmp_path / 'c10c'}", c10_cfg, True, c10)
    assert [p.name for p in cc.parts] == [f"{c}/{s}" for c in ("fog", "zoom_blur") for s in range(1, 6)]
    assert np.array_equal(cc.parts[7].dataset.images.permute(0, 2, 3, 1).numpy(), arrays["zoom_blur"][20:30])
    assert cc.parts[7].labels.tolist() == labels[20:30].tolist() and cc.name == "c10c" and cc.note is None
    same = data.load_eval_set(f"cifar10:{tmp_path / 'c10'}", c10_cfg, True, c10)
    assert np.array_equal(same.parts[0].labels, c10.test_labels)
    write_tiny_cifar100(str(tmp_path / "c100"))
    c100_cfg = cfg_of(["--dataset", "cifar100", "--data_dir", tmp_path / "c100"], cache)
    c100 = data.load_task(c100_cfg)
    with pytest.raises(UserError, match="other classes than the task"):
        data.load_eval_set(f"cifar10:{tmp_path / 'c10'}", c100_cfg, True, c100)
    with pytest.raises(UserError, match="has 10 classes, the task 100"):
        data.load_eval_set(f"cifar-c:{tmp_path / 'c10c'}", c100_cfg, True, c100)
    ood = data.load_eval_set(f"cifar10:{tmp_path / 'c10'}", c100_cfg, False, c100)  # OOD: classes do not matter
    x, y = first_batch(ood.parts[0].dataset)
    assert x.shape[1:] == first_batch(c100.test)[0].shape[1:] and (y == -1).all()
