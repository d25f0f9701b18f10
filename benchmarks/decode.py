"""Decoding a Hugging Face image data set into the device pipeline's uint8 tensor (lib/data/sources.py), the first time
and from the cache, on 50,000 32x32 PNG images in a save_to_disk folder that the benchmark makes in a temporary folder.

    python benchmarks/decode.py            # --n 50000 --size 32
The first time every image is opened and checked (header, size, mode, PIL's verify: the scan) and decoded into one
(N, 3, 32, 32) uint8 tensor, which is written to <cache_dir>/decoded/; the next run reads the scan and the tensor back.
For reference, the datasets library's own decode of the same column to numpy (no checks, nothing cached).
"""
import argparse
import io
import os
import shutil
import tempfile
import time
from multiprocessing import Pool

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _timing import timed  # noqa: E402  (puts the repository on sys.path)
from PIL import Image  # noqa: E402

from lib.data import sources  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, default=50000, help="images")
p.add_argument("--size", type=int, default=32, help="image side (pixels)")
args = p.parse_args()


def pngs(start, n, size=args.size):
    """CIFAR-like images (smooth colour fields plus noise, about CIFAR's 2-3 KB a PNG), PNG-encoded."""
    g = torch.Generator().manual_seed(start)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 255
    x = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    x = (x + torch.randn(x.shape, generator=g) * 12).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for a in x:
        b = io.BytesIO()
        Image.fromarray(a).save(b, format="PNG")
        out.append(b.getvalue())
    return out


def make(folder):
    import datasets
    datasets.disable_progress_bars()
    chunks = [(s, min(5000, args.n - s)) for s in range(0, args.n, 5000)]
    with Pool(os.cpu_count()) as pool:
        blobs = [b for part in pool.starmap(pngs, chunks) for b in part]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=100)})
    split = lambda b: datasets.Dataset.from_dict({"image": [{"bytes": x, "path": None} for x in b],
                                                  "label": [i % 100 for i in range(len(b))]}, features=features)
    datasets.DatasetDict(train=split(blobs), test=split(blobs[:100])).save_to_disk(folder)
    return np.mean([len(b) for b in blobs])


tmp = tempfile.mkdtemp(prefix="decode-bench-")
try:
    t0 = time.perf_counter()
    kb = make(os.path.join(tmp, "data")) / 1024
    print(f"{args.n} PNG images {args.size}x{args.size} (mean {kb:.1f} KB) written to a save_to_disk folder in "
          f"{time.perf_counter() - t0:.0f} s")
    srcs = sources.hf_task(os.path.join(tmp, "data"), None, None, None, "train", "test", None)
    size = (args.size, args.size)
    runs = iter(range(100))

    def first():  # a fresh cache each time it is timed
        cache = os.path.join(tmp, f"cache{next(runs)}")
        sources.scan(srcs.train, cache)
        return sources.decode(srcs.train, size, cache)

    def cached():
        sources.scan(srcs.train, os.path.join(tmp, "cache0"))
        return sources.decode(srcs.train, size, os.path.join(tmp, "cache0"))

    t_first, f_first = timed(first)
    scan_s, _ = timed(lambda: sources.scan(srcs.train, None), max_foreign=1.0)
    t_cached, f_cached = timed(cached)
    assert torch.equal(cached(), first()) and cached().shape == (args.n, 3, args.size, args.size)
    t_hf, f_hf = timed(lambda: srcs.train.ds.cast_column("image", __import__("datasets").Image())
                       .with_format("numpy")[:]["image"])
    print(f"first run (every image checked, decoded, tensor cached): {t_first:6.2f} s   "
          f"({args.n / t_first:,.0f} images/s; the check alone {scan_s:.2f} s; foreign load <= {100 * f_first:.0f} %)")
    print(f"cached (scan and tensor read back):                      {t_cached:6.3f} s   "
          f"(x{t_first / t_cached:.0f} faster; foreign load <= {100 * f_cached:.0f} %)")
    print(f"reference: datasets' own decode to numpy (no checks, no cache): {t_hf:.2f} s "
          f"(foreign load <= {100 * f_hf:.0f} %)")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
