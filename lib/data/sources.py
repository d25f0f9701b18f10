"""Images from outside the repository: Hugging Face data sets (a hub id from the local HF cache, a folder written by
`save_to_disk`, Parquet/Arrow files) and folders of images with one sub-folder per class.

An ImageSource is N images and their integer labels, read one at a time as RGB PIL images (the torchvision pipeline)
or decoded all at once into a uint8 (N, 3, H, W) tensor (the device pipeline) that is cached on disk under
`<cache_dir>/decoded/<fingerprint>-<H>x<W>.npy`, so a second run starts in seconds. The fingerprint identifies the
images: a Hugging Face split's own `_fingerprint` (with the image column), or, for a folder, a hash of every file's
path, size and modification time.

Every image is opened once up front (`scan`: its header, size and mode, and PIL's `verify`), so an image that cannot
be decoded is reported, by index or path, before anything is trained or written; scans are cached beside the tensors.
"""
import hashlib
import io
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from lib.infra.errors import UserError, check
from lib.infra.files import intact, save_array, seal

IMAGE_COLUMNS = ("image", "img")          # the image column when --image_column is not given
LABEL_COLUMNS = ("label", "fine_label")   # the label column when --label_column is not given (fine_label: CIFAR-100)
HF_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}  # --data_files extensions -> datasets' builders
CHUNK = 1024                              # rows read from a Hugging Face split at a time


def to_rgb(image):
    """Grayscale, palette, RGBA, CMYK ... -> RGB (a palette with transparency through RGBA, as PIL advises)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


# ----------------------------------------------------------------------------------------------------------------
# sources

class ImageSource:
    """N images with integer labels (np.int64). Subclasses give `_raw(i)` (what identifies image i's bytes: a path or
    an encoded blob), `_raws()` (all of them in order), `_open(raw)` (a PIL image, not yet decoded) and `where(i)`."""

    def __init__(self, labels, fingerprint, name):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.fingerprint, self.name = fingerprint, name

    def __len__(self):
        return len(self.labels)

    def image(self, i):
        """Image i as an RGB PIL image; a UserError naming it when it cannot be decoded."""
        return to_rgb(self._decoded(self._raw(i), i))

    def _decoded(self, raw, i):
        image = None
        try:
            image = self._open(raw)
            image.load()
            return image
        except UserError:
            raise
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
            if image is not None:
                image.close()  # the broken file's handle now, not at garbage collection
            raise UserError(f"{self.where(i)} cannot be decoded ({type(e).__name__}: {e})") from None


class FileImages(ImageSource):
    """Image files (paths) with labels; the fingerprint hashes every path (relative to `root`), size and mtime."""

    def __init__(self, paths, labels, root, name):
        digest = hashlib.sha256()
        for p in paths:
            st = os.stat(p)
            digest.update(f"{os.path.relpath(p, root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        super().__init__(labels, "files-" + digest.hexdigest()[:20], name)
        self.paths = list(paths)

    def _raw(self, i):
        return self.paths[i]

    def _raws(self):
        yield from self.paths

    def _open(self, raw):
        return Image.open(raw)

    def where(self, i):
        return f"image {self.paths[i]}"


class HFImages(ImageSource):
    """One split of a Hugging Face data set: its image column read undecoded ({"bytes", "path"}) and decoded here, so
    that a broken image is named by its index and every column type of images works (Image, a plain Parquet struct
    of bytes and path, raw bytes, a path string)."""

    def __init__(self, ds, column, labels, name):
        import datasets
        super().__init__(labels, "hf-" + hashlib.sha256(f"{ds._fingerprint}/{column}".encode()).hexdigest()[:20], name)
        try:
            self.ds = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        except Exception:  # arrow refuses the cast: not bytes, paths or an Image struct
            raise UserError(f"{name}: column '{column}' does not hold images ({ds.features[column]}); "
                            f"pass --image_column") from None
        self.column = column

    def _raw(self, i):
        return self.ds[i][self.column]

    def _raws(self):
        for start in range(0, len(self.ds), CHUNK):
            yield from self.ds[start:start + CHUNK][self.column]

    def _open(self, raw):
        if raw is None or (raw.get("bytes") is None and raw.get("path") is None):
            raise ValueError("the image is missing (null)")
        if raw.get("bytes") is not None:
            return Image.open(io.BytesIO(raw["bytes"]))
        import datasets  # a path: local or remote, as the datasets library resolves it
        return datasets.Image().decode_example(raw)

    def where(self, i):
        return f"image {i} of {self.name}"


# ----------------------------------------------------------------------------------------------------------------
# scan and decode (cached)

@dataclass
class Scan:
    sizes: np.ndarray   # (N, 2) int: height, width of every image
    converted: int      # images that are not RGB (grayscale, palette, RGBA ...): converted when read


def _cache_path(cache_dir, source, suffix):
    return None if cache_dir is None else os.path.join(cache_dir, "decoded", f"{source.fingerprint}-{suffix}")


def scan(source, cache_dir=None):
    """Open and decode every image of `source` once: its size and mode, PIL's `verify` (for PNG: every chunk's CRC)
    and a full decode (a truncated JPEG passes verify and fails only when decoded), so that no image fails later in a
    DataLoader worker. A UserError names the first image that fails. Cached (with its digest: lib.infra.files.seal),
    so the decode happens once per data set."""
    check(len(source) > 0, f"{source.name} has no images")
    path = _cache_path(cache_dir, source, "scan.npy")
    if path is not None and intact(path):  # a damaged entry is made again
        rows = np.load(path)
        return Scan(rows[:, :2], int(rows[:, 2].sum()))
    rows = np.zeros((len(source), 3), dtype=np.int64)
    for i, raw in enumerate(source._raws()):
        try:
            with source._open(raw) as image:
                rows[i] = image.height, image.width, image.mode != "RGB"
                image.verify()  # PNG: every chunk's CRC
            with source._open(raw) as image:
                image.load()  # the whole decode: a truncated JPEG passes verify, not load
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{source.where(i)} cannot be decoded ({type(e).__name__}: {e})") from None
    if path is not None:
        save_array(path, rows)
        seal(path)
    return Scan(rows[:, :2], int(rows[:, 2].sum()))


def shared_size(*scans):
    """(height, width) when every image of every scan has that one size, else None."""
    sizes = np.unique(np.concatenate([s.sizes for s in scans]), axis=0)
    return tuple(int(v) for v in sizes[0]) if len(sizes) == 1 else None


def decode(source, size, cache_dir=None):
    """All images of `source` as one uint8 (N, 3, H, W) tensor at `size` = (H, W): images of another size are resized
    (bilinear, PIL's antialiased resampling; the aspect ratio is not kept). Cached in
    `<cache_dir>/decoded/<fingerprint>-<H>x<W>.npy` (written atomically) and read from there the next time."""
    height, width = size
    path = _cache_path(cache_dir, source, f"{height}x{width}.npy")
    if path is not None and intact(path):  # a damaged entry is decoded again
        images = np.load(path)
        if images.shape == (len(source), 3, height, width):
            return torch.from_numpy(images)
    images = np.empty((len(source), 3, height, width), dtype=np.uint8)
    for i, raw in enumerate(source._raws()):
        image = to_rgb(source._decoded(raw, i))
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        images[i] = np.asarray(image).transpose(2, 0, 1)
    if path is not None:
        save_array(path, images)
        seal(path)
    return torch.from_numpy(images)


# ----------------------------------------------------------------------------------------------------------------
# folders of images

def folder_classes(root, flag):
    """Sorted class folder names of `root` (torchvision's ImageFolder convention)."""
    from torchvision.datasets.folder import find_classes
    check(root is not None and os.path.isdir(root), f"{flag} {root}: folder not found")
    try:
        return find_classes(root)[0]
    except FileNotFoundError:
        raise UserError(f"{flag} {root} has no class folders (one sub-folder of images per class)") from None


def folder_images(root, classes, name):
    """FileImages of `root`/<class>/** for `classes` (label = index in `classes`), as torchvision's ImageFolder
    lists them: its image extensions, sorted paths."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
    samples = make_dataset(root, {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS, allow_empty=True)
    check(samples, f"{name} ({root}) has no images ({', '.join(IMG_EXTENSIONS)})")
    return FileImages([p for p, _ in samples], [y for _, y in samples], root, name)


def all_images(root, name):
    """FileImages of every image file under `root` (any depth, sorted), without labels (all 0)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
    check(os.path.isdir(root), f"{root}: folder not found")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root, followlinks=True) for f in files
                   if has_file_allowed_extension(f, IMG_EXTENSIONS))
    check(paths, f"{name} ({root}) has no images ({', '.join(IMG_EXTENSIONS)})")
    return FileImages(paths, np.zeros(len(paths), dtype=np.int64), root, name)


@dataclass
class TaskSources:
    """The images of a task: training and test sources, an optional validation source (an existing split), the
    number of classes and their names."""
    train: ImageSource
    test: ImageSource
    val: ImageSource
    num_classes: int
    class_names: list


def folder_task(train_dir, test_dir):
    """--dataset imagefolder: class order = sorted folder names, which must be the same in both folders."""
    train_classes = folder_classes(train_dir, "--train_dir")
    test_classes = folder_classes(test_dir, "--test_dir")
    only_train = sorted(set(train_classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(train_classes))
    check(not only_train and not only_test,
          f"--train_dir and --test_dir have different class folders: only in --train_dir: {_few(only_train)}; "
          f"only in --test_dir: {_few(only_test)}")
    train = folder_images(train_dir, train_classes, "--train_dir")
    test = folder_images(test_dir, train_classes, "--test_dir")
    _check_every_class_trained(train.labels, train_classes, f"--train_dir {train_dir}")
    return TaskSources(train, test, None, len(train_classes), list(train_classes))


def _few(items, k=8):
    items = list(items)
    if not items:
        return "none"
    return ", ".join(map(str, items[:k])) + (f" ... ({len(items)} in all)" if len(items) > k else "")


def _check_every_class_trained(labels, class_names, where, after=""):
    missing = np.setdiff1d(np.arange(len(class_names)), labels)
    check(not len(missing), f"class {_few(repr(class_names[c]) for c in missing)} has no training image in "
                            f"{where}{after}")


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face data sets

def parse_data_files(entries):
    """--data_files entries: `PATH` (the train split) or `SPLIT=PATH` -> ({split: [paths]}, builder)."""
    files = {}
    for entry in entries:
        split, sep, path = entry.partition("=")
        split, path = (split, path) if sep and not os.path.exists(entry) else ("train", entry)
        check(os.path.isfile(path), f"--data_files {path}: file not found")
        files.setdefault(split, []).append(path)
    exts = {os.path.splitext(p)[1].lower() for paths in files.values() for p in paths}
    check(len(exts) == 1 and exts <= set(HF_FILE_BUILDERS),
          f"--data_files takes Parquet or Arrow files (.parquet, .arrow) of one kind, got {', '.join(sorted(exts))}")
    return files, HF_FILE_BUILDERS[exts.pop()]


def hf_splits(name=None, data_files=None):
    """{split: datasets.Dataset}: a folder written by save_to_disk (load_from_disk), Parquet/Arrow files
    (`data_files`), or a hub id / local folder through load_dataset (offline: the local HF cache only)."""
    import datasets
    datasets.disable_progress_bars()
    if data_files:
        files, builder = parse_data_files(data_files)
        empty = {split: [] for split, paths in files.items() if builder == "parquet" and not sum(
            pq_rows(p) for p in paths)}  # the datasets library cannot load a split without rows
        try:
            loaded = dict(datasets.load_dataset(builder, data_files={k: v for k, v in files.items() if k not in empty}))
        except Exception as e:
            raise UserError(f"--data_files could not be read ({type(e).__name__}: {_first_line(e)})") from None
        return {**loaded, **empty}
    if os.path.isdir(name) and any(os.path.exists(os.path.join(name, f))
                                   for f in ("dataset_dict.json", "state.json")):
        try:
            if not os.path.exists(os.path.join(name, "dataset_dict.json")):
                return {"train": datasets.load_from_disk(name)}  # one Dataset: its only split is the training one
            with open(os.path.join(name, "dataset_dict.json")) as f:
                splits = json.load(f)["splits"]
            # split by split: load_from_disk fails on a split saved without rows, which is reported as empty
            return {split: datasets.load_from_disk(os.path.join(name, split))
                    if _saved_rows(os.path.join(name, split)) else [] for split in splits}
        except Exception as e:
            raise UserError(f"{name}: the save_to_disk folder could not be read ({type(e).__name__}: "
                            f"{_first_line(e)})") from None
    check(not name.startswith(("/", ".", "~")) or os.path.exists(name), f"{name}: folder not found")
    try:
        return dict(datasets.load_dataset(name))
    except Exception as e:
        if datasets.config.HF_HUB_OFFLINE and not os.path.exists(name):
            raise UserError(f"data set '{name}' is not in the local Hugging Face cache and HF_DATASETS_OFFLINE / "
                            f"HF_HUB_OFFLINE forbid downloading it: load it once with network access (or unset "
                            f"HF_DATASETS_OFFLINE), or pass a folder written by save_to_disk") from None
        raise UserError(f"data set '{name}' could not be loaded ({type(e).__name__}: {_first_line(e)})") from None


def pq_rows(path):
    import pyarrow.parquet as pq
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as e:
        raise UserError(f"--data_files {path}: not a Parquet file ({type(e).__name__}: {_first_line(e)})") from None


def _saved_rows(folder):
    """Whether a split folder written by save_to_disk holds data files."""
    with open(os.path.join(folder, "state.json")) as f:
        return bool(json.load(f).get("_data_files"))


def _first_line(e):
    return (str(e).strip().splitlines() or [""])[0]


def hf_split(splits, split, name, flag):
    check(split in splits, f"{name} has no split '{split}' ({flag}; its splits: {', '.join(splits)})")
    ds = splits[split]
    check(len(ds) > 0, f"split '{split}' of {name} is empty")
    return ds


def hf_column(ds, given, candidates, flag, name):
    """The column named `given`, else the first of `candidates` present."""
    columns = ds.column_names
    if given is not None:
        check(given in columns, f"{name} has no column '{given}' ({flag}; its columns: {', '.join(columns)})")
        return given
    found = [c for c in candidates if c in columns]
    check(found, f"{name} has none of the columns {', '.join(candidates)}: pass {flag} "
                 f"(its columns: {', '.join(columns)})")
    return found[0]


def hf_labels(ds, column, name):
    """(labels as np.int64, class names of a ClassLabel feature or None); integer or ClassLabel columns only."""
    import datasets
    feature = ds.features[column]
    integer = isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
    check(isinstance(feature, datasets.ClassLabel) or integer,
          f"{name}: label column '{column}' holds {feature}, not integers or a ClassLabel (encode it first, e.g. "
          f"Dataset.class_encode_column)")
    values = ds.with_format("arrow")[column]
    check(values.null_count == 0, f"{name}: label column '{column}' has {values.null_count} missing labels")
    labels = np.array(values.to_numpy(zero_copy_only=False), dtype=np.int64)  # a writable copy of arrow's buffer
    check(labels.min() >= 0, f"{name}: label column '{column}' holds negative labels ({int((labels < 0).sum())} "
                             f"rows, e.g. -1: a split without labels)")
    return labels, (list(feature.names) if isinstance(feature, datasets.ClassLabel) else None)


def hf_task(name, data_files, image_column, label_column, train_split, test_split, val_split_name):
    """--dataset hf: the train / test (/ validation) splits with one set of classes. Classes come from the training
    split's ClassLabel feature (the other splits must carry the same names), else from the labels seen in training
    (names: the label values; every other split's labels must be among them)."""
    what = name if name is not None else " ".join(data_files)
    splits = hf_splits(name, data_files)
    train_ds = hf_split(splits, train_split, what, "--train_split")
    test_ds = hf_split(splits, test_split, what, "--test_split")
    val_ds = hf_split(splits, val_split_name, what, "--val_split_name") if val_split_name else None
    image_col = hf_column(train_ds, image_column, IMAGE_COLUMNS, "--image_column", what)
    label_col = hf_column(train_ds, label_column, LABEL_COLUMNS, "--label_column", what)
    train_y, names = hf_labels(train_ds, label_col, f"split '{train_split}' of {what}")
    seen = None
    if names is None:  # classes from the labels seen in training
        seen = np.unique(train_y)
        names = [str(v) for v in seen]
        train_y = np.searchsorted(seen, train_y)
    parts = {}
    for split, ds in ((test_split, test_ds), (val_split_name, val_ds)):
        if ds is None:
            continue
        where = f"split '{split}' of {what}"
        for col, flag in ((image_col, "--image_column"), (label_col, "--label_column")):
            check(col in ds.column_names, f"{where} has no column '{col}' ({flag}; its columns: "
                                          f"{', '.join(ds.column_names)})")
        y, split_names = hf_labels(ds, label_col, where)
        if split_names is not None and seen is None:
            check(split_names == names, f"{where} has other classes than split '{train_split}': "
                                        f"{_few(split_names)} against {_few(names)}")
        if seen is not None:
            unknown = np.setdiff1d(y, seen)
            check(not len(unknown), f"{where} has labels that split '{train_split}' has not: {_few(unknown)}")
            y = np.searchsorted(seen, y)
        check(y.max() < len(names), f"{where} has labels up to {y.max()}, but there are {len(names)} classes")
        parts[split] = HFImages(ds, image_col, y, where)
    _check_every_class_trained(train_y, names, f"split '{train_split}' of {what}")
    train = HFImages(train_ds, image_col, train_y, f"split '{train_split}' of {what}")
    return TaskSources(train, parts[test_split], parts.get(val_split_name), len(names), names)


def hf_test_set(name, labelled):
    """An evaluation set from a Hugging Face data set: its 'test' split (image and label columns detected)."""
    splits = hf_splits(name)
    ds = hf_split(splits, "test", name, "evaluation sets use the test split")
    what = f"split 'test' of {name}"
    column = hf_column(ds, None, IMAGE_COLUMNS, "an image column", what)
    labels, names = (hf_labels(ds, hf_column(ds, None, LABEL_COLUMNS, "a label column", what), what)
                     if labelled else (np.zeros(len(ds), dtype=np.int64), None))
    return HFImages(ds, column, labels, what), names

