"""The training loop on accelerate: one member (phase I, a DE member or a cycle), resumable epoch by epoch.

    loop = LoopSettings.from_settings(cfg)          # batch size, SGD, workers, memory format, tracking
    model, history, iters = fit(accelerator, model, data.train, loop, lrs, epochs, seed, resume_path, freeze=frz)

Loss = CE + the sum of extra loss terms; a term is a function of the step (`Step` below), so similarity and
diversity regularisers plug in without copying the loop:
    fit(..., loss_terms={"rtd": lambda s: alpha * rtd_loss(s.features["avgpool"], ref(s.x))}, taps=["avgpool"])
"""
import os
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm

from .data import train_loader
from .models import freeze as freeze_stages, from_sync_batchnorm, taps as stage_taps, to_sync_batchnorm
from .runs import save_torch
from .seeding import seed_for


@dataclass(frozen=True)
class LoopSettings:
    """What the training loop needs to know besides the model, the data and the schedule."""
    batch_size: int                 # global batch, split evenly over the processes
    momentum: float = 0.9           # SGD momentum (a fresh optimizer, so zero momentum, at every member's start)
    weight_decay: float = 0.0
    num_workers: int = 0            # DataLoader workers per process (torchvision pipeline)
    channels_last: str = "auto"     # memory format: auto = on CUDA only (it slows CPU convolutions)
    sync_bn: bool = True            # DDP on GPUs: BatchNorm statistics over the global batch
    quiet: bool = False             # no progress bar
    with_tracking: bool = False     # log per step and per epoch to the accelerator's trackers

    @classmethod
    def from_settings(cls, settings):
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


def make_accelerator(cpu=False, mixed_precision=None, project_dir=None, log_with=None):
    """Accelerator for one run; CPU-only machines use the CPU path (DDP over gloo with several processes).
    log_with: accelerate's tracker names ("tensorboard", "wandb", "all") or None; TensorBoard writes to
    <project_dir>/tensorboard."""
    cpu = cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
    project = ProjectConfiguration(project_dir=project_dir, logging_dir=os.path.join(project_dir, "tensorboard")) \
        if project_dir else None
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, log_with=log_with, project_config=project)
    if accelerator.device.type == "cpu" and accelerator.num_processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        # several processes on few cores: one thread group per process, never more threads than cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    return accelerator


@dataclass
class Step:
    """What a loss term sees at one training step."""
    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    features: dict = field(default_factory=dict)  # outputs of the tapped stages
    model: torch.nn.Module = None
    member: int = 0
    step: int = 0  # iteration within the member (epoch * iterations per epoch + i): seeds per-step draws


def memory_format(loop, accelerator):
    """channels_last on CUDA unless --channels_last off, or everywhere with --channels_last on."""
    on = loop.channels_last == "on" or (loop.channels_last == "auto" and accelerator.device.type == "cuda")
    return torch.channels_last if on else torch.contiguous_format


def predict_many(accelerator, models, loader, local=False, memory_format=torch.contiguous_format):
    """Test-set probabilities of several models in ONE pass over the test set: (models, samples, classes) float32
    numpy, each sample exactly once, in dataset order (gather_for_metrics over processes; local=True: this process
    alone reads the whole test set, as member-parallel runs do)."""
    transform = getattr(loader.dataset, "transform_batch", None)  # device pipeline: test transform on the device
    if not local:
        loader = accelerator.prepare(loader)
    models = [accelerator.unwrap_model(m) for m in models]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    out = [[] for _ in models]
    with torch.inference_mode(), accelerator.autocast():
        for x, _y in loader:
            x = x.to(accelerator.device, non_blocking=True)
            if transform is not None:
                x = transform(x)
            x = x.contiguous(memory_format=memory_format)
            for k, m in enumerate(models):
                probs = m(x).float().softmax(dim=-1)
                out[k].append((probs if local else accelerator.gather_for_metrics(probs)).cpu())
    for m, mode in zip(models, modes):
        m.train(mode)
    return np.stack([torch.cat(o).numpy().astype(np.float32) for o in out])


def predict(accelerator, model, loader, local=False, memory_format=torch.contiguous_format):
    """Test-set probabilities (samples, classes) of one model; see predict_many."""
    return predict_many(accelerator, [model], loader, local, memory_format)[0]


def fit(accelerator, model, dataset, loop, lrs, epochs, seed, resume_path, *, freeze=None, loss_terms=None, taps=(),
        member=0, step_offset=0, desc="train", local=False):
    """Train `model` for `epochs` with learning rates `lrs[step]` and a fresh SGD (momentum reset); returns
    (model, history of per-epoch records, iterations per epoch).

    Resumes from `resume_path` when it exists; writes it (atomically) after every epoch. Randomness of epoch e
    (data order, augmentation) comes from (seed, e), so a resumed member is identical to an uninterrupted one.
    freeze: a lib.models.Freeze (its parameters are the ones optimised, and its frozen tensors are verified at the
    end); default: everything trains. local=True: this process trains the member alone (member-parallel runs):
    the whole data set, no DDP, no collective operation, exactly as a one-process run would.
    """
    loss_terms = loss_terms or {}
    freeze = freeze or freeze_stages(model, "none")
    world, rank = (1, 0) if local else (accelerator.num_processes, accelerator.process_index)
    loader = train_loader(dataset, loop.batch_size, world, rank, seed, loop.num_workers, accelerator.device)
    iters = len(loader)
    assert len(lrs) == epochs * iters, f"schedule has {len(lrs)} steps, expected {epochs} x {iters}"
    optimizer = torch.optim.SGD(freeze.params, lr=float(lrs[0]), momentum=loop.momentum,
                                weight_decay=loop.weight_decay)
    start_epoch, state = 0, None
    if os.path.exists(resume_path):
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        print(f"{desc}: resuming at epoch {start_epoch + 1}/{epochs} from {resume_path}", flush=True)
    fmt = memory_format(loop, accelerator)
    model = model.to(accelerator.device, memory_format=fmt)
    if local:  # no DDP wrapper: gradients stay in this process
        optimizer = accelerator.prepare_optimizer(optimizer)
    else:
        if world > 1 and accelerator.device.type == "cuda" and loop.sync_bn:
            model = to_sync_batchnorm(model)  # BatchNorm over the global batch, as on the paper's single GPU
        model, optimizer = accelerator.prepare(model, optimizer)
    if state is not None and accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    bar = tqdm(total=(epochs - start_epoch) * iters, desc=desc, leave=False, dynamic_ncols=True,
               disable=loop.quiet or not (local or accelerator.is_local_main_process))
    names = ["loss", "ce", *loss_terms]
    history = []
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(seed_for(seed, epoch, rank))  # augmentation stream of this epoch
        model.train()  # BatchNorm layers of frozen stages (bn="eval") stay in eval mode: lib.models.freeze
        # running sums stay on the device: one synchronisation per epoch, not several per step
        sums = torch.zeros(len(names) + 2, device=accelerator.device)  # names..., correct, n
        for it, (x, y) in enumerate(loader):
            step = epoch * iters + it
            x = x.to(accelerator.device, non_blocking=True).contiguous(memory_format=fmt)
            y = y.to(accelerator.device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
            with stage_taps(model, taps) as feats, accelerator.autocast():
                logits = model(x)
                ce = F.cross_entropy(logits, y)
                terms = {name: term(Step(x, y, logits, feats, model, member, step)) for name, term in loss_terms.items()}
                loss = ce + sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            with torch.no_grad():
                values = torch.stack([loss.detach().float(), ce.detach().float(),
                                      *[v.detach().float() for v in terms.values()]])
                sums[:len(names)] += values * len(y)
                sums[-2] += (logits.argmax(-1) == y).sum()
                sums[-1] += len(y)
            if loop.with_tracking:
                accelerator.log({"train/lr": float(lrs[step]), "train/loss_step": loss.item(),
                                 **{f"train/{k}_step": float(v.detach()) for k, v in terms.items()}},
                                step=step_offset + step)
            bar.update(1)
        totals = (sums if local else accelerator.reduce(sums, "sum")).tolist()
        record = {"epoch": epoch + 1, "seconds": time.time() - t0, "lr": float(lrs[epoch * iters]),
                  "train_acc": 100.0 * totals[-2] / totals[-1],
                  **{k: totals[i] / totals[-1] for i, k in enumerate(names)}}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.1f}")
        if loop.with_tracking:
            accelerator.log({f"epoch/{k}": v for k, v in record.items() if k != "epoch"},
                            step=step_offset + (epoch + 1) * iters - 1)
        if local or accelerator.is_main_process:
            save_torch(resume_path, {"model": from_sync_batchnorm(accelerator.unwrap_model(model)).state_dict(),
                                     "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                                     "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None})
        if not local:
            accelerator.wait_for_everyone()
    bar.close()
    model = from_sync_batchnorm(accelerator.unwrap_model(model)).to(memory_format=torch.contiguous_format)
    release(accelerator)
    freeze.verify(model, desc)
    return model, history, iters


def release(accelerator):
    """Drop accelerate's references to the finished member's model and optimizer, so the next member does not keep
    it alive. accelerator.free_memory() is the public way, but it also runs gc.collect() (about 0.2 s per member, 26 %
    of a short demo run), so this one function clears accelerate's private lists instead; accelerate keeps prepared
    objects nowhere else."""
    for name in ("_models", "_optimizers", "_schedulers"):
        getattr(accelerator, name, []).clear()
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()
