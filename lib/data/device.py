"""The device-side data pipeline: the training set held in memory as a uint8 tensor, augmented in batches on the
training device (one affine_grid + grid_sample call per batch instead of per-sample PIL transforms in workers).

RandomResizedCrop boxes follow torchvision's algorithm exactly (10 attempts of area in `scale` x the image area and
log-uniform aspect ratio in `ratio`, the first that fits; else the central fallback), drawn for all samples at once.
Each sample's random parameters for epoch e are drawn from a stream seeded by (seed, e) for the WHOLE data set,
so a sample is augmented the same way whatever process reads it (1 or N processes give the same batches).
"""
import math

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler

from lib.infra.seeding import seed_for


def random_resized_crop_boxes(n, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None):
    """(n, 4) float tensor of boxes (top i, left j, h, w), distributed as torchvision's RandomResizedCrop.get_params."""
    area = height * width
    log_r = torch.log(torch.tensor(ratio, dtype=torch.float64))
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, 10, generator=generator, dtype=torch.float64))
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand(n, 10, generator=generator, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, as Python's round
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1)  # the first attempt that fits
    w = w.gather(1, first[:, None])[:, 0]
    h = h.gather(1, first[:, None])[:, 0]
    found = ok.any(dim=1)
    # torchvision's fallback: a central crop of the whole image clamped to the ratio range
    in_ratio = width / height
    fw = width if in_ratio <= max(ratio) else int(round(height * max(ratio)))
    fh = height if in_ratio >= min(ratio) else int(round(width / min(ratio)))
    w, h = torch.where(found, w, torch.full_like(w, fw)), torch.where(found, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    i = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), torch.full_like(h, (height - fh) // 2))
    j = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), torch.full_like(w, (width - fw) // 2))
    return torch.stack([i, j, h, w], dim=1).float()


def crop_resize(images, boxes, size, flip=None, angle=None, padding="border"):
    """Crop each image to its box (i, j, h, w) in pixels, optionally rotate by `angle` (radians) and mirror, and
    resize to size x size with bilinear interpolation; images: (B, C, H, W) float in [0, 1] on any device.

    One resampling of the whole image: inside the box this equals torchvision's crop-then-resize; on the box's
    outermost half pixel the interpolation reads the true neighbours instead of repeating the crop's edge.
    padding: "border" repeats the image edge (as a crop-then-resize at the image edge), "zeros" pads with black."""
    b, _c, height, width = images.shape
    i, j, h, w = boxes.unbind(1)
    sx, sy = w / width, h / height  # half-extent of the box in normalised coordinates
    cx, cy = (2 * j + w) / width - 1, (2 * i + h) / height - 1
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    cos = torch.cos(angle) if angle is not None else torch.ones_like(sx)
    sin = torch.sin(angle) if angle is not None else torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx * cos, -sy * sin, cx], 1), torch.stack([sx * sin, sy * cos, cy], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _interp_matrix(start, length, n_in, size, clamp):
    """(B, size, n_in) bilinear weights of a 1-D resize of [start, start + length) to `size` samples (half-pixel
    centres, as align_corners=False). clamp: repeat the edge pixel; else weight outside the input is dropped (zeros)."""
    o = torch.arange(size, dtype=torch.float32, device=start.device)
    src = start[:, None] + (o[None] + 0.5) * (length[:, None] / size) - 0.5
    if clamp:
        src = src.clamp(0, n_in - 1)
    lo = src.floor()
    w_hi = src - lo
    lo = lo.long()
    m = torch.zeros(len(start), size, n_in + 2, device=start.device)  # columns 0 and n_in + 1 catch outside weight
    m.scatter_add_(2, (lo.clamp(-1, n_in) + 1)[..., None], (1 - w_hi)[..., None])
    m.scatter_add_(2, ((lo + 1).clamp(-1, n_in) + 1)[..., None], w_hi[..., None])
    return m[:, :, 1:-1]


def crop_resize_separable(images, boxes, size, flip=None, padding="border", out=None):
    """crop_resize without rotation as two batched matrix products (rows, then columns): on a CPU about 2.7x
    faster than grid_sample for 32 -> 224 px, the same values. out: a (B, C, size, size) tensor to write into."""
    i, j, h, w = boxes.float().unbind(1)
    rows = _interp_matrix(i, h, images.shape[2], size, padding == "border")
    cols = _interp_matrix(j, w, images.shape[3], size, padding == "border")
    if flip is not None:
        cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    return torch.matmul(torch.matmul(rows[:, None], images), cols.transpose(1, 2)[:, None], out=out)


class DeviceImages(Dataset):
    """Images as a (N, C, H, W) uint8 tensor with a batched augmentation applied on the training device.

    mode: "reference" (RandomResizedCrop(size, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip),
    "cifar" (random crop with 4-pixel zero padding + flip), "digits" (RandomResizedCrop(size, scale (0.6, 1)) +
    rotation in +-10 degrees), "test_reference" (Resize(resize) of the short side + CenterCrop(size); resize
    defaults to round(size * 256 / 224), a model's data config gives floor(size / crop_pct)), "test" (as is).
    Indexing returns the raw uint8 image (for test loaders); `transform_batch` does the work.
    """

    def __init__(self, images, labels, mode, size, mean, std, resize=None):
        self.images = torch.as_tensor(images)
        assert self.images.dtype == torch.uint8 and self.images.dim() == 4
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.mode, self.size = mode, size
        self.resize = resize if resize is not None else round(size * 256 / 224)
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        self._cache = {}

    def like(self, images, labels):
        """Other images with this set's transform (a validation or evaluation set in the test transform)."""
        return DeviceImages(images, labels, self.mode, self.size, self.mean.flatten().tolist(),
                            self.std.flatten().tolist(), self.resize)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, k):
        return self.images[k], self.labels[k]

    def on(self, device):
        """The images and labels on `device` (moved once, then kept)."""
        if device not in self._cache:
            self._cache = {device: (self.images.to(device), self.labels.to(device))}
        return self._cache[device]

    def epoch_params(self, generator):
        """Random parameters of every sample for one epoch: (n, 4) boxes, (n,) flips, (n,) angles."""
        n, _, height, width = self.images.shape
        if self.mode == "reference":
            boxes = random_resized_crop_boxes(n, height, width, generator=generator)
        elif self.mode == "digits":
            boxes = random_resized_crop_boxes(n, height, width, scale=(0.6, 1.0), generator=generator)
        elif self.mode == "cifar":
            offsets = torch.randint(0, 9, (n, 2), generator=generator).float() - 4  # RandomCrop(32, padding=4)
            boxes = torch.cat([offsets, torch.full((n, 2), float(height))], 1)
        else:
            return None
        flips = torch.rand(n, generator=generator) < 0.5
        angles = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
        return boxes, flips if self.mode != "digits" else None, angles if self.mode == "digits" else None

    def transform_batch(self, x, params=None, out=None):
        """uint8 (B, C, H, W) on the device -> augmented, normalised float batch (written into `out` when given and
        the mode allows it)."""
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        x = x.float().div_(255)
        _, _, height, width = x.shape
        if params is None:  # deterministic test transforms
            if self.mode == "test_reference":
                side = self.size * min(height, width) / self.resize  # the centre crop, in input pixels
                box = torch.tensor([(height - side) / 2, (width - side) / 2, side, side], device=x.device)
                x = crop_resize_separable((x - mean) / std, box.expand(len(x), 4), self.size)
                return x  # edge-repeating bilinear weights sum to 1: normalising first is the same, and cheaper
            return (x - mean) / std
        boxes, flips, angles = params
        if self.mode == "cifar":  # zero padding, as RandomCrop(32, padding=4), before normalisation
            return crop_resize_separable(x, boxes, height, flips, padding="zeros", out=out).sub_(mean).div_(std)
        if angles is not None:  # rotations (digits) need the general resampler
            return (crop_resize(x, boxes, self.size, flips, angles) - mean) / std
        return crop_resize_separable((x - mean) / std, boxes, self.size, flips, out=out)

    def batch_shape(self, n):
        """Shape of a transformed training batch of n images, for the modes whose transform_batch writes into
        `out` (None for the others)."""
        if self.mode not in ("reference", "cifar"):
            return None
        _, c, height, _ = self.images.shape
        side = height if self.mode == "cifar" else self.size
        return (n, c, side, side)


def _storage_users(tensor):
    """How many tensors share `tensor`'s storage (None if this torch cannot tell). PyTorch has no public API for
    it; this is the one place that calls the private counter, which torch's own tests use for the same question."""
    counter = getattr(torch._C, "_storage_Use_Count", None)
    return None if counter is None else counter(tensor.untyped_storage()._cdata)


class DeviceLoader:
    """Batches of a DeviceImages training set, augmented on `device`; the same interface as the DataLoader it
    replaces (len, iteration, sampler.set_epoch). Each process reads its DistributedSampler shard."""

    def __init__(self, dataset, batch_size, num_replicas, rank, seed, device, drop_last=False):
        self.dataset, self.batch_size, self.seed, self.device = dataset, batch_size, seed, device
        self.drop_last = drop_last  # leave out the epoch's last short batch
        self.sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                                          drop_last=False)
        # CPU only: batches are written into a few reused buffers. A fresh 150 MiB tensor per batch (256 x 3 x 224^2)
        # is mmap-ed and page-faulted anew, which costs twice the augmentation itself; a CUDA allocator caches.
        self._buffers = {}

    def _out(self, n):
        """An output buffer for n images that no caller or autograd graph still uses (None: allocate as usual).

        A batch is yielded as a view of its buffer, so the buffer's storage counts one more user for as long as
        anyone (the loop variable, a list, a saved tensor of the graph) holds that batch."""
        if torch.device(self.device).type != "cpu" or _storage_users(torch.empty(0)) is None:
            return None
        shape = self.dataset.batch_shape(n)
        if shape is None:
            return None
        ring = self._buffers.setdefault(shape, [])
        for buf in ring:
            if _storage_users(buf) <= 2:  # buf itself + the wrapper made in _storage_users
                return buf
        buf = torch.empty(shape)
        if len(ring) < 3:  # the batch in use, the one being built, one spare; more stays with the allocator
            ring.append(buf)
        return buf

    def __len__(self):
        n = len(self.sampler) / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def __iter__(self):
        g = torch.Generator().manual_seed(seed_for(self.seed, self.sampler.epoch, 0xA06))
        boxes, flips, angles = self.dataset.epoch_params(g)  # the same for every process
        images, labels = self.dataset.on(self.device)
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            params = (boxes[idx].to(self.device), None if flips is None else flips[idx].to(self.device),
                      None if angles is None else angles[idx].to(self.device))
            dev_idx = idx.to(self.device)
            out = self._out(len(idx))
            x = self.dataset.transform_batch(images[dev_idx], params, out)
            yield (x[:] if out is not None else x), labels[dev_idx]  # a view: holding it keeps the buffer busy
