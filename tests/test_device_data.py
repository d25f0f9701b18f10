"""The device-side pipeline: crop boxes distributed as torchvision's RandomResizedCrop; transforms match torchvision."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from scipy.stats import ks_2samp

from lib.data.device import DeviceImages, DeviceLoader, crop_resize, crop_resize_separable, random_resized_crop_boxes


@pytest.mark.parametrize("height,width", [(32, 32), (12, 90)])  # (12, 90): the central fallback is frequent
def test_crop_boxes_follow_torchvision_distribution(height, width):
    n = 20000
    torch.manual_seed(0)
    ours = random_resized_crop_boxes(n, height, width, generator=torch.Generator().manual_seed(1)).numpy()
    img = torch.zeros(1, height, width)
    theirs = np.array([T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], float)
    for k, name in enumerate(["top", "left", "height", "width"]):
        assert ks_2samp(ours[:, k], theirs[:, k]).pvalue > 1e-3, name
        assert abs(ours[:, k].mean() - theirs[:, k].mean()) < 0.05 * max(height, width), name
    assert (ours[:, 2] <= height).all() and (ours[:, 3] <= width).all() and (ours[:, :2] >= 0).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()


def test_crop_resize_matches_torchvision_resized_crop_and_flip():
    torch.manual_seed(0)
    img = torch.rand(3, 3, 32, 32)
    boxes = torch.tensor([[3.0, 5.0, 20.0, 14.0], [0.0, 0.0, 32.0, 32.0], [0.0, 16.0, 16.0, 16.0]])
    flips = torch.tensor([True, False, True])
    ours = crop_resize(img, boxes, 64, flips)
    for k in range(3):
        i, j, h, w = boxes[k].int().tolist()
        ref = TF.resized_crop(img[k], i, j, h, w, [64, 64], antialias=False)
        ref = TF.hflip(ref) if flips[k] else ref
        # identical but for the box's outermost half pixel where it lies inside the image (true neighbours are read)
        assert torch.allclose(ours[k][:, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=1e-5)
    whole = crop_resize(img[1:2], boxes[1:2], 64)[0]
    assert torch.allclose(whole, TF.resize(img[1], [64, 64], antialias=False), atol=1e-5)
    # the separable (matrix-product) resampler gives the same values, also with zero padding outside the image
    assert torch.allclose(crop_resize_separable(img, boxes, 64, flips), ours, atol=1e-5)
    shifted = torch.tensor([[-4.0, 3.0, 32.0, 32.0]] * 3)
    assert torch.allclose(crop_resize_separable(img, shifted, 32, flips, padding="zeros"),
                          crop_resize(img, shifted, 32, flips, padding="zeros"), atol=1e-5)


def test_test_transform_is_resize_256_centercrop_224():
    torch.manual_seed(0)
    u8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    ds = DeviceImages(u8, [0, 1], "test_reference", 224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    ours = ds.transform_batch(u8)
    x = u8.float() / 255
    ref = F.interpolate(x, size=256, mode="bilinear", align_corners=False)[:, :, 16:240, 16:240]
    assert torch.allclose(ours, (ref - 0.5) / 0.25, atol=1e-4)


def test_cifar_mode_is_padded_random_crop():
    u8 = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    ds = DeviceImages(u8, [0], "cifar", 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    boxes = torch.tensor([[-4.0, 3.0, 32.0, 32.0]])  # 4 rows of padding on top, shifted 3 columns left
    out = ds.transform_batch(u8, (boxes, torch.tensor([True]), None))
    padded = F.pad(u8.float() / 255, (4, 4, 4, 4))
    ref = padded[:, :, 0:32, 7:39].flip(-1)
    assert torch.allclose(out, ref, atol=1e-6)


def test_loader_batches_are_the_same_whatever_the_sharding():
    u8 = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    ds = DeviceImages(u8, list(range(10)), "reference", 32, (0.5,) * 3, (0.25,) * 3)
    one = DeviceLoader(ds, 4, 1, 0, seed=3, device="cpu")
    one.sampler.set_epoch(2)
    seen = {int(y): x for xb, yb in one for x, y in zip(xb, yb)}
    for rank in (0, 1):
        two = DeviceLoader(ds, 2, 2, rank, seed=3, device="cpu")
        two.sampler.set_epoch(2)
        for xb, yb in two:
            for x, y in zip(xb, yb):
                assert torch.equal(x, seen[int(y)])  # sample k gets the same crop in 1 or 2 processes
    assert len(one) == 3 and len(seen) == 10
    one.sampler.set_epoch(3)
    other = {int(y): x for xb, yb in one for x, y in zip(xb, yb)}
    assert not all(torch.equal(other[k], seen[k]) for k in seen)  # a new epoch, new crops


@pytest.mark.parametrize("mode", ["reference", "cifar"])
def test_loader_reuses_buffers_only_when_no_one_holds_the_batch(mode):
    """CPU batches are written into reused buffers: a batch still held (a list, the loop variable, an autograd
    graph) is never overwritten, and batches no one holds recycle their buffer."""
    u8 = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    ds = DeviceImages(u8, list(range(40)), mode, 24, (0.5,) * 3, (0.25,) * 3)
    loader = DeviceLoader(ds, 4, 1, 0, seed=1, device="cpu")
    copies = [x.clone() for x, _ in loader]  # every batch copied the moment it is made
    held = [x for x, _ in loader]  # the same epoch again, every batch held
    assert len(held) == 10 and all(torch.equal(a, b) for a, b in zip(held, copies))
    assert len({x.data_ptr() for x in held}) == 10
    del held
    bases = [x._base for x, _ in loader]  # batches dropped at once (their buffers kept): a ring, not one per batch
    assert all(b is not None for b in bases) and len({id(b) for b in bases}) <= 3
    # an autograd graph that saved a batch keeps it intact while later batches are made
    conv = torch.nn.Conv2d(3, 2, 3)
    batches = iter(loader)
    x, _ = next(batches)
    expected = x.clone()
    out = conv(x).square().sum()
    del x
    rest = [y.clone() for y, _ in batches]
    out.backward()
    ref = torch.nn.Conv2d(3, 2, 3)
    ref.load_state_dict(conv.state_dict())
    ref(expected).square().sum().backward()
    assert torch.equal(conv.weight.grad, ref.weight.grad)
    assert all(torch.equal(a, b) for a, b in zip(rest, copies[1:]))
