"""An ensemble's predictions on new images, one row per image (scripts/predict.py): the class, its probability,
how uncertain the ensemble is and how its members voted.

    source = image_files(["photos/", "x.png"])                      # any depth, sorted; a file as given
    probs, bad = predict_images(acc, ens, ImageDataset(source, ens.transform), 64)
    rows, columns = prediction_rows(probs, ens.class_names, names, top_k=3)
    write_predictions("preds.csv", rows, columns)                   # or .jsonl

The ensemble probability p is the mean of the members' softmax probabilities; entropy and mutual information are
lib/evaluation/uncertainty.py's (ood_scores), in nats.
"""
import json
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lib.data import sources
from lib.evaluation import uncertainty
from lib.evaluation.predict import predict_many
from lib.infra.errors import UserError, check
from lib.infra.files import atomic_write, write_csv

FORMATS = (".csv", ".jsonl")
# the columns of a prediction file, in order, and what each holds (the model card and docs/using-ensembles.md show
# this table)
COLUMNS = {
    "image": "the image: its file path, or its index in the data set",
    "prediction": "the class with the highest ensemble probability p (the mean of the members' softmax)",
    "probability": "p of that class",
    "top<k>, top<k>_probability": "with --top_k K: the k-th most probable class and its p, k = 2..K",
    "entropy": "predictive entropy of p, H(p) = -sum_c p(c) log p(c), in nats (0: certain; log(classes): uniform)",
    "mutual_information": "H(p) - mean_m H(p_m) in nats: the part of the entropy that comes from the members "
                          "disagreeing (epistemic); empty for a single network (a soup)",
    "disagreement": "the fraction of members whose own top class is not the ensemble's (0: all agree); empty for a "
                    "single network",
    "member_<i>": "member i's top class",
    "label": "the true class, where the data set has labels",
}


# ----------------------------------------------------------------------------------------------------------------
# images

def image_files(paths):
    """A lib.data.sources.FileImages of the images named by `paths`: a folder gives every image file below it (any
    depth, sorted; lib.data.sources.all_images), a file is taken as it is, whatever its extension (a file that is no
    image is then reported as such)."""
    files = []
    for p in paths:
        check(os.path.exists(p), f"--images {p}: no such file or folder")
        files += sources.all_images(p, f"--images {p}").paths if os.path.isdir(p) else [p]
    check(files, "--images names no image")
    return sources.FileImages(files, np.zeros(len(files), dtype=np.int64), os.getcwd(), "--images")


class ImageDataset(Dataset):
    """The images of a lib.data.sources source through `transform`: (tensor, index, error) per image, error "" for an
    image that was read, else why it could not be (its tensor is then zeros of `shape`), so that one unreadable file
    does not stop a DataLoader."""

    def __init__(self, source, transform, shape, limit=None):
        self.source, self.transform, self.shape = source, transform, tuple(shape)
        self.n = len(source) if limit is None else min(limit, len(source))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        try:
            return self.transform(self.source.image(i)), i, ""
        except UserError as e:  # lib.data.sources: "<where> cannot be decoded (...)"
            return torch.zeros(self.shape), i, str(e)


def input_shape(spec):
    """(3, H, W) of the members' input under the transform `spec` (lib.ensemble.load.input_spec)."""
    return (3, *spec["fit"]) if spec.get("fit") else (3, spec["size"], spec["size"])


class _Batches:
    """A loader's batches as (x, y) with a progress bar, the errors of ImageDataset items collected on the way; keeps
    the loader's dataset (predict_many applies a device pipeline's transform_batch)."""

    def __init__(self, loader, desc):
        self.loader, self.dataset, self.desc, self.errors = loader, loader.dataset, desc, []

    def __iter__(self):
        for batch in tqdm(self.loader, desc=self.desc, unit="batch", disable=None):
            if len(batch) == 3:
                x, index, errors = batch
                self.errors += [(int(i), e) for i, e in zip(index, errors) if e]
                yield x, index
            else:
                yield batch


def predict_images(accelerator, ens, dataset, batch_size, num_workers=0, memory_format=torch.contiguous_format,
                   desc="predicting"):
    """(the members' probabilities (members, images, classes) float32 of every image of `dataset` that could be read,
    in order, the indices read, [(index, error)] of those that could not), in one pass (lib.evaluation.predict
    .predict_many: each member's softmax as the run's own test predictions are made), this process alone."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available())
    batches = _Batches(loader, desc)
    probs = predict_many(accelerator, list(ens.members), batches, local=True, memory_format=memory_format)
    bad = {i for i, _e in batches.errors}
    read = np.array([i for i in range(len(dataset)) if i not in bad], dtype=np.int64)
    return probs[:, read], read, sorted(batches.errors)


# ----------------------------------------------------------------------------------------------------------------
# rows

def prediction_rows(probs, class_names, names, top_k=1, labels=None):
    """(rows (dicts), columns) of a prediction file from the members' probabilities (members, images, classes):
    COLUMNS, with `names` (paths or indices) in `image` and `labels` (label numbers, or None) in `label`."""
    p = np.asarray(probs, dtype=np.float64)
    m, n, c = p.shape
    check(1 <= top_k <= c, f"--top_k must be between 1 and the {c} classes, got {top_k}")
    mean = p.mean(axis=0)
    scores = uncertainty.ood_scores(probs=p)  # entropy of the mean; mutual information for two or more members
    entropy = scores["entropy"][0]
    mi = scores["mutual_information"][0] if m > 1 else None
    order = np.argsort(-mean, axis=1, kind="stable")[:, :top_k]
    member_top = p.argmax(axis=-1)  # (members, images)
    disagreement = (member_top != order[None, :, 0]).mean(axis=0) if m > 1 else None
    columns = ["image", "prediction", "probability"]
    columns += [c for k in range(2, top_k + 1) for c in (f"top{k}", f"top{k}_probability")]
    columns += ["entropy", "mutual_information", "disagreement"] + ([f"member_{i}" for i in range(1, m + 1)]
                                                                   if m > 1 else [])
    columns += ["label"] if labels is not None else []
    rows = []
    for j in range(n):
        row = {"image": names[j], "prediction": class_names[order[j, 0]], "probability": float(mean[j, order[j, 0]])}
        for k in range(1, top_k):
            row[f"top{k + 1}"] = class_names[order[j, k]]
            row[f"top{k + 1}_probability"] = float(mean[j, order[j, k]])
        row.update(entropy=float(entropy[j]), mutual_information=None if mi is None else float(mi[j]),
                   disagreement=None if disagreement is None else float(disagreement[j]))
        if m > 1:
            row.update({f"member_{i + 1}": class_names[member_top[i, j]] for i in range(m)})
        if labels is not None:
            row["label"] = class_names[int(labels[j])]
        rows.append(row)
    return rows, columns


def check_output(path):
    """Refuse an --out that cannot be written as a prediction file, before anything is predicted."""
    check(os.path.splitext(path)[1].lower() in FORMATS, f"--out {path}: the file must end in .csv or .jsonl")
    check(not os.path.isdir(path), f"--out {path} is a folder; name a file (preds.csv)")
    folder = os.path.dirname(os.path.abspath(path))
    check(not os.path.exists(folder) or os.path.isdir(folder), f"--out {path}: {folder} is not a folder")


def write_predictions(path, rows, columns):
    """A CSV (probabilities with 6 decimals; an empty cell where a value does not exist) or JSON Lines (one object
    per image, null where a value does not exist) file, atomically."""
    if os.path.splitext(path)[1].lower() == ".jsonl":
        def write(tmp):
            with open(tmp, "w") as f:
                for row in rows:
                    f.write(json.dumps({k: row.get(k) for k in columns}) + "\n")
        atomic_write(path, write)
        return
    fmt = lambda v: f"{v:.6f}" if isinstance(v, float) else ("" if v is None else v)
    write_csv(path, [{k: fmt(v) for k, v in row.items()} for row in rows], columns)
