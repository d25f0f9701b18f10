"""Predict with a trained ensemble on new images: one row per image with the ensemble's class and probability, its
uncertainty (predictive entropy, mutual information, member disagreement) and each member's class.

    python scripts/predict.py runs/starsse/digits-seed0 --images photos/ extra.png --out preds.csv
    python scripts/predict.py runs/starsse/digits-seed0 --data test --limit 5 --top_k 3 --out preds.jsonl
    python scripts/predict.py runs/starsse/digits-seed0 --images photos/ --soup uniform --out soup.csv
    python scripts/predict.py exported/ --data hf:some/dataset --out preds.csv       # a folder scripts/export.py wrote
    accelerate launch scripts/predict.py RUN --images photos/ --out preds.csv        # on the GPU

RUN_DIR is a run folder (every finished member, each checked against its record's digests first) or an exported
folder. --images: image files, and folders searched at any depth for image files. --data: a data set instead:
`test` or `val` (the run's own test set or validation split, with their labels), imagefolder:DIR, hf:NAME_OR_PATH
(its test split), or any other evaluation set scripts/evaluate.py takes (cifar10:DIR, svhn:DIR, cifar-c:DIR,
noise, permuted, flipped; these and test/val need the run's data). Images go through the run's own test transform.
--soup uniform|greedy predicts with the run's soup instead (one network: its BatchNorm statistics re-estimated on the
run's training data as scripts/soup.py does; greedy: the members scripts/soup.py --mode greedy kept).

The output (--out, .csv or .jsonl) is written once every image is predicted; columns: see lib/ensemble/predict.py
(COLUMNS) or docs/using-ensembles.md. A file that is not a readable image stops the run with one line naming it (exit
2, nothing written), unless --skip_bad, which leaves it out and lists it at the end.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.infra.errors import UserError, check, cli_main, interrupt_quietly  # noqa: E402

interrupt_quietly()  # Ctrl-C while the libraries below load: one line, not a traceback
import numpy as np  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from lib.cli.parser import Parser  # noqa: E402
from lib.data import sources  # noqa: E402
from lib.data.tasks import EVAL_FORMS, load_eval_set, load_task  # noqa: E402
from lib.ensemble.load import load_ensemble  # noqa: E402
from lib.ensemble.predict import (  # noqa: E402
    ImageDataset,
    check_output,
    image_files,
    input_shape,
    predict_images,
    prediction_rows,
    write_predictions,
)
from lib.ensemble.soup import MODES  # noqa: E402
from lib.evaluation import metrics  # noqa: E402
from lib.evaluation.predict import memory_format  # noqa: E402
from lib.settings.schema import LoopSettings, Settings, saved_defaults  # noqa: E402
from lib.training.loop import make_accelerator  # noqa: E402

BATCH_SIZE = 64     # images per batch (--batch_size): small enough for 224 px ViTs of several members on one GPU
SHOWN_BAD = 20      # unreadable files listed by name at the end (--skip_bad); the rest are counted


def build_parser():
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder, or a folder scripts/export.py wrote")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", nargs="+", metavar="PATH", help="image files, and folders of images (any depth)")
    what.add_argument("--data", metavar="SPEC", help=f"a data set: test, val, or {EVAL_FORMS}")
    p.add_argument("--out", default="preds.csv", help="the predictions: a .csv or .jsonl file (default preds.csv)")
    p.add_argument("--top_k", type=int, default=1, help="also write the 2nd..k-th most probable classes")
    p.add_argument("--soup", choices=MODES, default=None, help="predict with the run's soup instead of its members")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images (of each part)")
    p.add_argument("--skip_bad", action="store_true",
                   help="leave out files that are not readable images (listed at the end) instead of stopping")
    p.add_argument("--batch_size", type=int, default=BATCH_SIZE, help=f"images per batch (default {BATCH_SIZE})")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader workers that read and transform images")
    p.add_argument("--cpu", action="store_true", help="use the CPU even if a GPU is present")
    return p


def parts_to_predict(a, ens, cfg):
    """[(dataset, names of its items, labels or None)] of what --images / --data name. Image files and Hugging Face
    images are checked to be readable first unless --skip_bad (one line naming the first unreadable image)."""
    if a.images or a.data.startswith(("imagefolder:", "hf:")):
        if a.images:
            source = image_files(a.images)
        elif a.data.startswith("imagefolder:"):
            source = sources.all_images(a.data.partition(":")[2], a.data)
        else:
            source, _names = sources.hf_test_set(a.data.partition(":")[2], labelled=False)
        if not a.skip_bad:
            try:
                sources.scan(source)  # every header and PIL's verify, before any prediction
            except UserError as e:
                raise UserError(f"{e}; nothing was written (--skip_bad leaves such files out)") from None
        dataset = ImageDataset(source, ens.transform, input_shape(ens.spec), a.limit)
        names = source.paths if isinstance(source, sources.FileImages) else list(range(len(source)))
        return [(dataset, names, None)]
    if a.data in ("test", "val"):
        task = load_task(cfg)
        dataset, labels = (task.test, task.test_labels) if a.data == "test" else (task.val, task.val_labels)
        check(dataset is not None, "--data val: the run has no validation split (trained without --val_split)")
        return [(first(dataset, a.limit), list(range(len(dataset))), labels)]
    es = load_eval_set(a.data, cfg, labelled=False)
    many = len(es.parts) > 1  # CIFAR-C: one part per corruption and severity
    return [(first(p.dataset, a.limit), [f"{p.name}/{i}" if many else i for i in range(len(p.dataset))], None)
            for p in es.parts]


def first(dataset, limit):
    """The first `limit` items of a data set (a device-pipeline set stays one, with its batch transform)."""
    if limit is None or limit >= len(dataset):
        return dataset
    if hasattr(dataset, "like"):  # lib.data.device.DeviceImages: transformed in batches by predict_many
        return dataset.like(dataset.images[:limit], dataset.labels[:limit])
    return Subset(dataset, range(limit))


@cli_main
def main(argv=None):
    a = build_parser().parse_args(argv)
    check(a.top_k >= 1, f"--top_k must be >= 1, got {a.top_k}")
    check(a.limit is None or a.limit >= 1, f"--limit must be >= 1, got {a.limit}")
    check(a.batch_size >= 1, f"--batch_size must be >= 1, got {a.batch_size}")
    check_output(a.out)
    ens = load_ensemble(a.run_dir, soup=a.soup)  # the members' digests are checked here
    check(a.top_k <= len(ens.class_names), f"--top_k {a.top_k}: the ensemble has {len(ens.class_names)} classes")
    cfg = Settings({**saved_defaults(), **ens.info["settings"]})  # the run's settings (an export keeps them)
    parts = parts_to_predict(a, ens, cfg)

    acc = make_accelerator(a.cpu or cfg.cpu, cfg.mixed_precision)
    ens.to(acc.device)
    fmt = memory_format(LoopSettings.from_settings(cfg), acc)
    probs, names, labels, bad = [], [], [], []
    for dataset, part_names, part_labels in parts:
        p, read, errors = predict_images(acc, ens, dataset, a.batch_size, a.num_workers, fmt)
        probs.append(p)
        names += [part_names[i] for i in read]
        labels.append(None if part_labels is None else part_labels[read])
        bad += [error for _i, error in errors]
    if bad and not a.skip_bad:
        raise UserError(f"{bad[0]}; nothing was written (--skip_bad leaves such files out)")
    probs = np.concatenate(probs, axis=1)
    check(probs.shape[1] > 0, "no image could be read: nothing was written")
    labels = None if any(y is None for y in labels) else np.concatenate(labels)
    if not acc.is_main_process:
        return
    rows, columns = prediction_rows(probs, ens.class_names, names, a.top_k, labels)
    write_predictions(a.out, rows, columns)
    what = f"the {a.soup} soup of {ens.info['method']}" if a.soup else \
        f"{ens.info['method']} ({len(ens.members)} members)"
    print(f"{len(rows)} predictions of {what} written to {a.out}")
    if labels is not None:
        print(f"accuracy on these {len(rows)} labelled images: {metrics.ensemble_accuracy(probs, labels):.2f} %")
    if bad:
        print(f"skipped {len(bad)} file(s) that are not readable images:")
        for error in bad[:SHOWN_BAD]:
            print(f"  {error}")
        if len(bad) > SHOWN_BAD:
            print(f"  ... and {len(bad) - SHOWN_BAD} more")


if __name__ == "__main__":
    main()
