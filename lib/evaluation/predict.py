"""Predictions of saved or trained models on a data set: every model in one pass over it, each sample exactly once,
in dataset order, whatever the number of processes (accelerate's gather_for_metrics).

    probs, logits = predict_set(accelerator, models, dataset, cfg)   # a run's members on one set (evaluation, soups)
    probs = predict_many(accelerator, models, loader)                 # the same on a loader already made (training)
"""
import numpy as np
import torch

from lib.data.tasks import test_loader
from lib.settings.schema import LoopSettings


def memory_format(loop, accelerator):
    """channels_last on CUDA unless --channels_last off, or everywhere with --channels_last on."""
    on = loop.channels_last == "on" or (loop.channels_last == "auto" and accelerator.device.type == "cuda")
    return torch.channels_last if on else torch.contiguous_format


def predict_many(accelerator, models, loader, local=False, memory_format=torch.contiguous_format, logits=False):
    """Probabilities of several models on a data set in ONE pass over it: (models, samples, classes) float32 numpy,
    each sample exactly once, in dataset order (gather_for_metrics over processes; local=True: this process alone
    reads the whole set, as member-parallel runs do). logits=True: (probabilities, logits)."""
    transform = getattr(loader.dataset, "transform_batch", None)  # device pipeline: test transform on the device
    if not local:
        loader = accelerator.prepare(loader)
    models = [accelerator.unwrap_model(m) for m in models]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    probs, raw = [[] for _ in models], [[] for _ in models]
    collect = (lambda t: t) if local else accelerator.gather_for_metrics
    with torch.inference_mode(), accelerator.autocast():
        for x, _y in loader:
            x = x.to(accelerator.device, non_blocking=True)
            if transform is not None:
                x = transform(x)
            x = x.contiguous(memory_format=memory_format)
            for k, m in enumerate(models):
                out = m(x).float()
                probs[k].append(collect(out.softmax(dim=-1)).cpu())
                if logits:
                    raw[k].append(collect(out).cpu())
    for m, mode in zip(models, modes):
        m.train(mode)
    stack = lambda parts: np.stack([torch.cat(p).numpy().astype(np.float32) for p in parts])
    return (stack(probs), stack(raw)) if logits else stack(probs)


def predict_set(accelerator, models, dataset, cfg, local=False):
    """(probabilities, logits), each (models, samples, classes) float32, of `models` on `dataset` in one pass: the
    evaluation loader (lib.data.tasks.test_loader: cfg.eval_batch_size, at most 4 workers) and cfg's memory format.
    Every evaluation of saved members predicts through it: the test and validation sets again (evaluate.py
    --from_weights), OOD and shifted sets, model soups."""
    loader = test_loader(dataset, cfg.eval_batch_size, min(cfg.num_workers, 4))
    return predict_many(accelerator, models, loader, local=local,
                        memory_format=memory_format(LoopSettings.from_settings(cfg), accelerator), logits=True)


def predict(accelerator, model, loader, local=False, memory_format=torch.contiguous_format, logits=False):
    """Probabilities (samples, classes) of one model (and its logits with logits=True); see predict_many."""
    out = predict_many(accelerator, [model], loader, local, memory_format, logits)
    return (out[0][0], out[1][0]) if logits else out[0]


