"""Data: the CIFAR-100 loader on a tiny data set in the real on-disk format; the digits splits."""
import os
import pickle

import numpy as np
import pytest
import torch

from lib.data import IMAGENET_MEAN, IMAGENET_STD, digits_arrays, digits_splits, load_cifar100_task, load_digits_task
from lib.errors import UserError


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
    write_tiny_cifar100(str(tmp_path))
    task = load_cifar100_task(str(tmp_path / "cifar-100-python"), "cifar", image_size=224)  # the folder itself works
    assert task.train[0][0].shape == (3, 32, 32) and task.test[0][0].shape == (3, 32, 32)


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
