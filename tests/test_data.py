"""Data: the CIFAR-10 / CIFAR-100 loaders on tiny data sets in the real on-disk format; the digits splits; the
validation split of the built-in sets; the model (timm) transforms."""
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T

from lib.data.device import DeviceImages
from lib.data.tasks import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    augment_spec,
    digits_arrays,
    digits_splits,
    load_cifar100_task,
    load_cifar_task,
    load_digits_task,
    torchvision_transforms,
)
from lib.infra.errors import UserError

CIFAR100_STATS = (CIFAR100_MEAN, CIFAR100_STD)


def write_tiny_cifar100(root, n_train=12, n_test=6):
    """cifar-100-python/{train,test,meta}: latin1 pickles with uint8 rows of 3072 (R, G, B planes)."""
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    rng = np.random.RandomState(0)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.randint(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(i % 100) for i in range(n)]
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": data, "fine_labels": fine, "coarse_labels": [0] * n,
                         "filenames": [f"{i}.png" for i in range(n)], "batch_label": name}, f)
        out[name] = (data, fine)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": ["c"] * 20}, f)
    return out


def test_cifar100_reference_augmentation_reads_the_real_format(tmp_path):
    raw = write_tiny_cifar100(str(tmp_path))
    task = load_cifar100_task(str(tmp_path), "reference", image_size=64)
    assert task.num_classes == 100 and len(task.train) == 12 and len(task.test) == 6
    assert task.test_labels.tolist() == raw["test"][1]
    x, y = task.test[1]
    assert x.shape == (3, 64, 64) and y == 1  # Resize(73) + CenterCrop(64)
    xt, _ = task.train[0]
    assert xt.shape == (3, 64, 64)
    # an image of constant colour comes out as (c/255 - mean) / std for each channel after resize and crop
    task.test.data[2] = np.full_like(task.test.data[2], 51)
    x2, _ = task.test[2]
    for c in range(3):
        assert torch.allclose(x2[c], torch.full_like(x2[c], (0.2 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]), atol=1e-5)
    # the first test image's red plane is the first 1024 bytes of its row
    assert np.array_equal(task.test.data[0][:, :, 0].ravel(), raw["test"][0][0, :1024])


def test_cifar_style_augmentation_and_folder_forms(tmp_path):
    """--augment cifar on 32x32 images: training = a 32x32 window of the image zero-padded by 4 px, flipped or not,
    normalised with CIFAR-100's statistics; test = the image normalised. Each draw, on fixed seeds, is checked against
    all 9 x 9 x 2 candidates of that formula, and the draws cover both flips and several shifts."""
    write_tiny_cifar100(str(tmp_path))
    task = load_cifar100_task(str(tmp_path / "cifar-100-python"), "cifar", image_size=224)  # the folder itself works
    img = torch.from_numpy(task.train.data[0]).permute(2, 0, 1).float() / 255  # (3, 32, 32) in [0, 1]
    mean, std = (torch.tensor(v)[:, None, None] for v in CIFAR100_STATS)
    padded = F.pad(img, (4, 4, 4, 4))
    candidates = {(i, j, flip): (w.flip(-1) if flip else w) for i in range(9) for j in range(9) for flip in (0, 1)
                  for w in [padded[:, i:i + 32, j:j + 32]]}
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        x = task.train[0][0]
        assert x.shape == (3, 32, 32)
        match = [k for k, w in candidates.items() if torch.allclose(x, (w - mean) / std, atol=1e-5)]
        assert match, seed  # some shift and flip of the padded image, normalised
        seen.add(match[0])
    assert {k[2] for k in seen} == {0, 1} and len({k[:2] for k in seen}) >= 10, seen
    assert torch.allclose(task.test[0][0], (torch.from_numpy(task.test.data[0]).permute(2, 0, 1) / 255 - mean) / std,
                          atol=1e-5)


def test_cifar100_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="data directory not found"):
        load_cifar100_task(str(tmp_path / "nothing"), "reference", 224)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UserError, match="lacks train, test, meta"):
        load_cifar100_task(str(tmp_path / "empty"), "reference", 224)


def test_digits_splits_are_disjoint_fixed_and_few_shot():
    x, y = digits_arrays()
    assert x.shape == (1797, 3, 16, 16) and 0 <= x.min() and x.max() <= 1
    ft, test, pool = digits_splits(y, 4)
    assert len(ft) == 40 and np.bincount(y[ft]).tolist() == [4] * 10
    assert len(test) == 540 and len(ft) + len(test) + len(pool) == 1797
    assert not (set(ft) & set(test)) and not (set(ft) & set(pool)) and not (set(test) & set(pool))
    assert np.array_equal(digits_splits(y, 4)[1], test)  # fixed across calls
    assert np.array_equal(digits_splits(y, 8)[1], test)  # and across label budgets
    task = load_digits_task(4)
    assert len(task.train) == 40 and task.train[0][0].shape == (3, 16, 16)
    with pytest.raises(UserError, match="labels_per_class"):
        digits_splits(y, 0)


# ----------------------------------------------------------------------------------------------------------------
# issue 13: CIFAR-10, digits at --image_size, the validation split on the built-in sets, model / timm transforms

def write_tiny_cifar10(root, per_class_train=4, per_class_test=2):
    """cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: the training images spread over 5 batches."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.RandomState(1)
    train = rng.randint(0, 256, size=(10 * per_class_train, 3072), dtype=np.uint8)
    train_y = [i % 10 for i in range(len(train))]
    for b in range(5):
        with open(os.path.join(folder, f"data_batch_{b + 1}"), "wb") as f:
            pickle.dump({"data": train[b::5], "labels": train_y[b::5], "batch_label": f"b{b}",
                         "filenames": [f"{i}.png" for i in range(len(train[b::5]))]}, f)
    test = rng.randint(0, 256, size=(10 * per_class_test, 3072), dtype=np.uint8)
    test_y = [i % 10 for i in range(len(test))]
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({"data": test, "labels": test_y, "batch_label": "test", "filenames": []}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": 8, "num_vis": 3072}, f)
    order = np.concatenate([np.arange(b, len(train), 5) for b in range(5)])  # torchvision reads batch after batch
    return train[order], np.asarray(train_y)[order], test, np.asarray(test_y)


def test_cifar10_reads_the_five_batches_in_both_pipelines(tmp_path):
    train, train_y, test, test_y = write_tiny_cifar10(str(tmp_path))
    task = load_cifar_task("cifar10", str(tmp_path), "cifar", 224)
    assert task.num_classes == 10 and task.class_names == CIFAR10_CLASSES and task.test_size == (32, 32)
    assert len(task.train) == 40 and task.test_labels.tolist() == test_y.tolist() and task.train_key is None
    assert np.array_equal(task.train.data.reshape(40, -1, 3).transpose(0, 2, 1).reshape(40, -1), train)
    x, _ = task.test[0]  # ToTensor + the CIFAR-10 statistics
    mean, std = torch.tensor(CIFAR10_MEAN)[:, None, None], torch.tensor(CIFAR10_STD)[:, None, None]
    ref = (torch.tensor(test[0].reshape(3, 32, 32), dtype=torch.float32) / 255 - mean) / std
    assert torch.allclose(x, ref, atol=1e-6)
    dev = load_cifar_task("cifar10", str(tmp_path), "reference", 48, pipeline="device")
    assert dev.train.mode == "reference" and dev.test.mode == "test_reference" and dev.test.resize == 55
    assert torch.equal(dev.test.images.reshape(20, -1), torch.from_numpy(test)) and dev.test_size is None


def test_digits_honour_image_size_and_keep_16_px_by_default():
    from sklearn.datasets import load_digits
    raw = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16
    x16, _ = digits_arrays()
    assert torch.equal(x16[:, :1], F.interpolate(raw, size=16, mode="bilinear", align_corners=False).clamp(0, 1))
    for pipeline in ("torchvision", "device"):
        task = load_digits_task(4, pipeline, image_size=32)
        assert task.test_size == (32, 32) and task.class_names == [str(c) for c in range(10)]
        if pipeline == "device":
            assert task.test.images.shape[1:] == (3, 32, 32) and task.train.size == 32
        else:
            assert task.train[0][0].shape == (3, 32, 32) and task.test[0][0].shape == (3, 32, 32)


def test_digits_validation_split_is_stratified_and_leaves_the_default_untouched():
    x, y = digits_arrays()
    plain = load_digits_task(4)
    assert plain.val is None and plain.val_labels is None
    ft, _, _ = digits_splits(y, 4)
    assert torch.equal(plain.train.images, x[ft])  # no --val_split: the 40 labelled images, as before
    task = load_digits_task(4, val_split=0.25)
    assert np.bincount(task.val_labels).tolist() == [1] * 10  # ceil(0.25 * 40) = 10 held out: one per class
    assert len(task.train) == 30 and np.bincount(task.train.labels.numpy()).tolist() == [3] * 10
    both = torch.cat([task.train.images, task.val.images])  # disjoint, and together the 40 labelled images
    assert len({tuple(v.flatten().tolist()) for v in both}) == 40
    assert {tuple(v.flatten().tolist()) for v in both} == {tuple(v.flatten().tolist()) for v in x[ft]}
    assert torch.allclose(task.val[0][0], (task.val.images[0] - 0.3053) / 0.3189)  # the test transform
    dev = load_digits_task(4, "device", val_split=0.25)
    assert np.array_equal(dev.val_labels, task.val_labels) and dev.val.mode == "test"
    with pytest.raises(UserError, match="holds out 4 of the 40 images .* fewer than its 10 classes"):
        load_digits_task(4, val_split=0.1)


def test_cifar_validation_split_in_both_pipelines(tmp_path):
    train, train_y, _, _ = write_tiny_cifar10(str(tmp_path))
    tv = load_cifar_task("cifar10", str(tmp_path), "reference", 32, val_split=0.25)
    dev = load_cifar_task("cifar10", str(tmp_path), "reference", 32, pipeline="device", val_split=0.25)
    assert np.bincount(tv.val_labels).tolist() == [1] * 10 and np.array_equal(dev.val_labels, tv.val_labels)
    assert np.array_equal(tv.val.data, dev.val.images.permute(0, 2, 3, 1).numpy())
    assert len(tv.train) == 30 and not set(map(bytes, tv.train.data)) & set(map(bytes, tv.val.data))
    assert isinstance(tv.val.transform.transforms[0], T.Resize)  # the test transform
    write_tiny_cifar100(str(tmp_path / "c100"))  # 12 images of 12 classes: one each
    with pytest.raises(UserError, match="has 1 image .* needs 2 or more"):
        load_cifar_task("cifar100", str(tmp_path / "c100"), "cifar", 32, val_split=0.3)


def test_model_data_config_transforms_match_timm():
    from PIL import Image
    from timm.data import create_transform
    config = {"input_size": (3, 24, 24), "interpolation": "bicubic", "crop_pct": 0.9, "mean": (0.5, 0.4, 0.3),
              "std": (0.2, 0.25, 0.3)}
    aug = augment_spec("model", 224, data_config=config)
    assert (aug.size, aug.resize, aug.interpolation) == (24, 26, "bicubic")  # floor(24 / 0.9)
    train, test = torchvision_transforms(aug)
    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (30, 60, 3), dtype=np.uint8))
    ref = create_transform(config["input_size"], is_training=False, interpolation="bicubic", crop_pct=0.9,
                           mean=config["mean"], std=config["std"])
    assert torch.allclose(test(img), ref(img), atol=1e-6)
    assert train(img).shape == (3, 24, 24) and train.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    # the device pipeline: Resize(26) of the short side (30x60 -> 26x52) + CenterCrop(24), in batches
    u8 = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]
    dev = DeviceImages(u8, [0], "test_reference", aug.size, aug.mean, aug.std, aug.resize)
    x = F.interpolate(u8.float() / 255, size=(26, 52), mode="bilinear", align_corners=False)[:, :, 1:25, 14:38]
    mean, std = torch.tensor(aug.mean)[:, None, None], torch.tensor(aug.std)[:, None, None]
    assert torch.allclose(dev.transform_batch(u8), (x - mean) / std, atol=1e-4)


def test_auto_augment_and_random_erasing_come_from_timm():
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing
    aug = augment_spec("reference", 32)
    train, test = torchvision_transforms(aug, "rand-m9-mstd0.5-inc1", 0.25)
    kinds = [type(t) for c in train.transforms for t in getattr(c, "transforms", [c])]
    assert T.RandomResizedCrop in kinds and RandAugment in kinds and RandomErasing in kinds
    assert [type(t) for t in test.transforms] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    cifar_train, _ = torchvision_transforms(augment_spec("cifar", 32), None, 0.5)
    assert isinstance(cifar_train.transforms[0], T.RandomCrop) and RandomErasing in \
        [type(t) for c in cifar_train.transforms for t in getattr(c, "transforms", [c])]


def test_test_resize_gives_the_reference_swin_test_transform(tmp_path):
    """--test_resize: the reference code's Swin test transform, Resize(256) + CenterCrop(224), instead of the model's
    crop_pct (timm's Swin-T: 0.9 -> Resize(248)); here at a small size (Resize 28 + CenterCrop 24), against the
    torchvision composition the reference code wrote."""
    from PIL import Image
    config = {"input_size": (3, 24, 24), "interpolation": "bicubic", "crop_pct": 0.9, "mean": (0.5, 0.4, 0.3),
              "std": (0.2, 0.25, 0.3)}
    assert augment_spec("model", 224, data_config=dict(config, input_size=(3, 224, 224))).resize == 248  # timm's
    assert augment_spec("model", 224, data_config=dict(config, input_size=(3, 224, 224)), test_resize=256).resize == 256
    aug = augment_spec("model", 24, data_config=config, test_resize=28)
    _, test = torchvision_transforms(aug)
    img = Image.fromarray(np.random.RandomState(1).randint(0, 256, (30, 60, 3), dtype=np.uint8))
    ref = T.Compose([T.Resize(28, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(24), T.ToTensor(),
                     T.Normalize(config["mean"], config["std"])])
    assert torch.allclose(test(img), ref(img), atol=1e-6)
    assert augment_spec("reference", 64, test_resize=80).resize == 80 and augment_spec("reference", 64).resize == 73
    # through the task: both pipelines resize the test images to 80 before the 64-pixel crop
    write_tiny_cifar100(str(tmp_path))
    tv = load_cifar_task("cifar100", str(tmp_path), "reference", 64, test_resize=80)
    dev = load_cifar_task("cifar100", str(tmp_path), "reference", 64, pipeline="device", test_resize=80)
    assert tv.test.transform.transforms[0].size == 80 and dev.test.resize == 80 and tv.test[0][0].shape == (3, 64, 64)
    with pytest.raises(UserError, match="--test_resize is for --augment reference or model"):
        load_cifar_task("cifar100", str(tmp_path), "cifar", 32, test_resize=36)
    with pytest.raises(UserError, match="must be at least --image_size"):
        augment_spec("reference", 64, test_resize=60)


@pytest.mark.parametrize("pipeline", ["torchvision", "device"])
def test_drop_last_loader_and_iteration_count_agree(pipeline):
    """--drop_last (the reference code's Swin loader): each process's last short batch is left out; the loader's
    length, the batches it yields and iterations_per_epoch (what Experiment builds its schedule from) agree, with
    and without it, in one and two processes."""
    from lib.data.tasks import iterations_per_epoch, train_loader
    u8 = torch.randint(0, 256, (23, 3, 8, 8), dtype=torch.uint8)
    if pipeline == "device":
        ds = DeviceImages(u8, list(range(23)), "reference", 8, (0.5,) * 3, (0.25,) * 3)
    else:
        ds = torch.utils.data.TensorDataset(u8.float(), torch.arange(23))
    # by hand: (processes, global batch) -> (iterations without, with drop_last); a process's shard is 23 or 12
    # samples in batches of batch / processes: 23 / 4 -> 6 or 5; 23 / 8 -> 3 or 2; 12 / 2 -> 6; 12 / 4 -> 3; 12 / 5
    # -> 3 or 2
    by_hand = {(1, 4): (6, 5), (1, 8): (3, 2), (2, 4): (6, 6), (2, 8): (3, 3), (2, 10): (3, 2)}
    for (processes, batch), counts in by_hand.items():
        for drop_last, expected in zip((False, True), counts):
            n = iterations_per_epoch(23, batch, processes, drop_last)
            assert n == expected, (processes, batch, drop_last)
            loader = train_loader(ds, batch, processes, processes - 1, seed=0, drop_last=drop_last)
            loader.sampler.set_epoch(0)
            sizes = [len(y) for _x, y in loader]
            assert len(loader) == len(sizes) == n
            assert not drop_last or set(sizes) == {batch // processes}  # only full batches
            assert drop_last or sum(sizes) == -(-23 // processes)  # every sample of the shard
    assert len(train_loader(ds, 4, 1, 0, seed=0, drop_last=True)) == 5 and len(train_loader(ds, 4, 1, 0, seed=0)) == 6
    with pytest.raises(UserError, match="leaves no batch"):
        train_loader(ds, 32, 1, 0, seed=0, drop_last=True)
