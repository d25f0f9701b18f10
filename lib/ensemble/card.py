"""The model card: README.md in Hugging Face's model-card layout (YAML front matter with a model-index, then prose),
written into every finished run (Experiment.finish, and again by scripts/soup.py once soups are scored) and into
every export (scripts/export.py). It says what the ensemble is (method and settings), what it was trained and tested
on, its metrics with their definitions, how to load it and predict with it, and its limits.

    write_run_card(run, class_names)          # <run>/classes.json and <run>/README.md
    text = model_card(info, class_names, spec, where, ...)

Metric names, units and definitions come from lib/evaluation/registry.py, where every metric is written once.
"""
import os

import numpy as np
import yaml

from lib.ensemble.load import CLASSES, input_spec
from lib.ensemble.predict import COLUMNS
from lib.evaluation import registry
from lib.evaluation.evaluate import run_settings
from lib.infra.files import atomic_write, load_json, save_json
from lib.settings import methods

CARD = "README.md"
# the metrics.json keys the card shows (with their registry labels, units and definitions), when the run has them
CARD_KEYS = ("ensemble_accuracy", "avg_member_accuracy", "diversity", "nll", "ece", "brier", "cal/aece", "sel/aurc",
             "soup/uniform/acc", "soup/greedy/acc")
# and the ensemble's out-of-distribution AUROC by predictive entropy, per OOD set the run was scored on
OOD_AUROC = registry.get("ood/{set}/{score}/auroc")
UNIFORM_SOUP = registry.get("soup/{mode}/acc").of(mode="uniform")
DEMO_GLOBAL_DE = "the demo's Global DE runs: uniform soup 10.19 % on 10 digit classes, i.e. chance (README.md)"


def _fmt(value, unit):
    if value is None:
        return "-"
    return f"{value:.2f}" if unit == "%" else f"{value:.4f}"


def metric_rows(m):
    """[(key, name, value, unit, definition)] of the metrics `m` (metrics.json) holds, as lib/evaluation/registry.py
    names and defines them."""
    keys = [k for k in CARD_KEYS if m.get(k) is not None]
    keys += [k for k in sorted(m) if m[k] is not None and (OOD_AUROC.match(k) or {}).get("score") == "entropy"]
    return [(k, registry.header(k), m[k], registry.lookup(k).unit, registry.lookup(k).definition) for k in keys]


def _front_matter(info, rows, dataset_label):
    """Hugging Face's card metadata: tags, metrics and a model-index of the test-set results."""
    results = [{"type": k.replace("/", "_"), "name": name, "value": round(float(v), 6)} for k, name, v, _u, _d in rows]
    meta = {"library_name": "pytorch", "pipeline_tag": "image-classification",
            "tags": ["image-classification", "ensemble", "ens-transfer", methods.directory(info["method"]),
                     info["arch"].replace("/", "-")],
            "model-index": [{"name": f"{info['method']} ensemble ({info['arch']})", "results": [{
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"name": dataset_label, "type": info["settings"].get("dataset"), "split": "test"},
                "metrics": results}]}]}
    name = info["settings"].get("dataset_name")
    if info["settings"].get("dataset") == "hf" and name and not os.path.isabs(name):
        meta["datasets"] = [name]  # a hub id (a local save_to_disk folder is no hub data set)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, default_flow_style=False) + "---\n"


def _dataset_label(s):
    d = s.get("dataset")
    if d == "digits":
        return f"digits (scikit-learn), {s.get('labels_per_class')} labelled images per class"
    if d == "hf":
        return f"Hugging Face data set {s.get('dataset_name') or ' '.join(s.get('data_files') or [])}"
    if d == "imagefolder":
        return f"image folders {s.get('train_dir')} (train) and {s.get('test_dir')} (test)"
    return d


def _data_text(s, info, class_names):
    d = s.get("dataset")
    lines = [f"- Task: {_dataset_label(s)}; {len(class_names)} classes ({_few(class_names)})."]
    if d == "digits":
        lines.append("- The embedded default (lib/data/tasks.py): scikit-learn's 8x8 handwritten digits upsampled to "
                     f"{s.get('image_size')} px, white strokes on black; a fixed stratified test set, "
                     f"{s.get('labels_per_class')} labelled images per class to fine-tune on, the rest (without labels) "
                     "for the self-supervised pre-training.")
    if info.get("test_samples"):
        lines.append(f"- Test set: {info['test_samples']} images (every metric below is on it).")
    if s.get("val_split") or s.get("val_split_name"):
        lines.append(f"- Validation split: {s.get('val_split') or s.get('val_split_name')} (held out of training, "
                     "used for temperature scaling and the greedy soup).")
    pre = s.get("pretrained") or []
    lines.append(f"- Pre-trained checkpoint(s): {', '.join(map(str, pre)) or '-'}.")
    return "\n".join(lines)


def _few(items, k=10):
    items = list(items)
    return ", ".join(items[:k]) + (f", ... ({len(items)} in all)" if len(items) > k else "")


SETTINGS_SHOWN = ("arch", "pretrained", "members", "epochs", "lr", "cycle_epochs", "cycle_lr", "batch_size",
                  "optimizer", "weight_decay", "freeze", "image_size", "augment", "seed")  # the rest: config.json


def _limits(info, m):
    s = info["settings"]
    lines = ["- A model soup (the members' weights averaged into one network) is only sound for members in one basin "
             "(SSE, StarSSE, Local DE fine-tuned from one checkpoint). Members from different starting points (Global "
             f"DE, from-scratch ensembles) average into a broken network: {DEMO_GLOBAL_DE}."]
    pre = [p for p in (s.get("pretrained") or []) if p is not None]
    if len(set(pre)) > 1:
        lines.append(f"- This ensemble's members come from {len(set(pre))} different checkpoints: do not use its soup"
                     + (f" (measured: uniform soup {m[UNIFORM_SOUP]:.2f} % against the ensemble's "
                        f"{m['ensemble_accuracy']:.2f} %)." if m.get(UNIFORM_SOUP) is not None else "."))
    if info.get("soup"):
        lines.append(f"- This is the {info['soup']} soup of members {info.get('soup_members')}: one network; mutual "
                     "information and member disagreement do not exist for it.")
    lines += ["- Inputs must look like the training images: ens.transform resizes and normalises, but it does "
              "not invert colours or centre objects. The classes are the task's only: an image of something else "
              "still gets one of them (use the entropy and mutual information to flag it).",
              "- The metrics are on one test set; with few test images (hundreds) differences of a point or two "
              "between ensembles are within noise."]
    if s.get("dataset") == "digits":
        lines.append("- The embedded default is a CPU-sized demonstration (a 0.18 M-parameter ResNet on 16 px digits), "
                     "not a model to deploy.")
    return "\n".join(lines)


def model_card(info, class_names, spec, where, exported=False, onnx=None):
    """The card's text. info: Ensemble.info (arch, method, members, soup, settings, metrics, test_samples); spec: the
    input transform (lib.ensemble.load.input_spec); where: the folder the card goes into (a run, or an export:
    exported=True); onnx: the ONNX check of an export ({"file", "checked_on", "max_abs_diff"}) or None. It is long
    because it is the card's text, section by section, in the order the card reads."""
    s, m = info["settings"], info.get("metrics") or {}
    method = methods.get(info["method"])
    rows = metric_rows(m)
    what = f"the {info['soup']} soup of" if info.get("soup") else "an ensemble of"
    title = f"{info['method']}: {what} {info['members']} {info['arch']} members"
    show = lambda v: ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    settings = "\n".join(f"| {k} | {show(s.get(k))} |" for k in SETTINGS_SHOWN if k in s)
    cell = lambda text: str(text).replace("|", "\\|")  # |B| in a definition is no column break
    table = "\n".join(f"| {name} | {_fmt(v, unit)} | {unit or '-'} | {cell(d)} |" for _k, name, v, unit, d in rows)
    transform = (f"resize to {spec['fit'][1]}x{spec['fit'][0]}" if spec.get("fit") else
                 f"resize the short side to {spec['resize']} ({spec['interpolation']}), centre crop {spec['size']}")
    columns = "\n".join(f"| {c} | {d} |" for c, d in COLUMNS.items())
    name = os.path.normpath(where)
    family = f" (family {method.family})" if method else ""
    text = f"""{_front_matter(info, rows, _dataset_label(s))}
# {title}

{what.capitalize()} {info['members']} `{info['arch']}` networks for {len(class_names)} classes, trained with
ens-transfer by **{info['method']}**{family}: {'one network, the members averaged in weight space' if info.get('soup')
else "the prediction is the mean of the members' softmax probabilities"}.

## Method and settings

| setting | value |
|---|---|
{settings}

Every setting is in {'`info.settings` of `config.json` here' if exported else "the run's `config.json`"};
the run's `config.yaml` repeats the run (`--config config.yaml`).

## Data

{_data_text(s, info, class_names)}

## Metrics (test set)

| metric | value | unit | definition |
|---|---|---|---|
{table}

Member accuracies: {', '.join(f'{a:.2f}' for a in m.get('member_accuracy', [])) or '-'} %.

## How to use

Input: an RGB image; {transform}, then to a tensor normalised with mean {spec['mean']} and std {spec['std']}
(`ens.transform` does this).

```python
from lib.ensemble.load import load_ensemble
ens = load_ensemble("{name}")            # this folder; every weight file checked against its digest
probs = ens.predict(["image.png"])       # (1, {len(class_names)}): the mean of the members' softmax
print(ens.class_names[int(probs.argmax())], float(probs.max()))
```

From the command line (a CSV or JSONL of predictions):

```bash
python scripts/predict.py {name} --images DIR_OR_FILES --out preds.csv
```

| column | meaning |
|---|---|
{columns}
{_onnx_text(onnx, len(class_names))}
## Limitations

{_limits(info, m)}
"""
    return text


def _onnx_text(onnx, n_classes):
    if not onnx:
        return ""
    return f"""
### ONNX

`{onnx['file']}`: the whole ensemble as one graph (input `images`, (batch, 3, H, W) as `ens.transform` gives them;
outputs `probs`, (batch, {n_classes}), and `member_probs`, (networks, batch, {n_classes})). Checked against PyTorch
with onnxruntime on {onnx['checked_on']}: largest absolute difference {onnx['max_abs_diff']:.2e}.

```python
import onnxruntime
session = onnxruntime.InferenceSession("{onnx['file']}")
probs, member_probs = session.run(None, {{"images": x}})   # x: float32 numpy, (batch, 3, H, W)
```
"""


def write_run_card(run, task):
    """<run>/classes.json (the class names in label order, which load_ensemble reads) and <run>/README.md, the model
    card of the run's finished members, from its config.json and metrics.json (atomically; the main process).
    task: the run's lib.data.tasks.TaskData (its class names and test images' size)."""
    n = run.completed_members()
    names = [str(c) for c in task.class_names] if task.class_names else \
        [str(c) for c in range(np.load(run.probs(1), mmap_mode="r").shape[-1])]
    save_json(run.file(CLASSES), names)
    path = run.file("metrics.json")
    cfg = run_settings(run)
    info = {"arch": cfg.arch, "method": cfg.method, "members": n, "soup": None, "settings": run.config,
            "metrics": load_json(path) if os.path.exists(path) else {},
            "test_samples": int(len(np.load(run.file("labels.npy"), mmap_mode="r")))}
    write_card(run.file(CARD), model_card(info, names, input_spec(cfg, task), run.path))


def write_card(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)
