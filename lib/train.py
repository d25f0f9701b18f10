"""The training loop on accelerate: one member (phase I, a DE member or a cycle), resumable epoch by epoch.

Loss = CE + the sum of extra loss terms; a term is a function of the step (`Step` below), so similarity and
diversity regularisers plug in without copying the loop:
    fit(..., loss_terms={"rtd": lambda s: alpha * rtd_loss(s.features["avgpool"], ref(s.x))}, taps=["avgpool"])
"""
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import train_loader
from .models import set_train_mode, taps as stage_taps
from .runs import save_torch

# test hook: a process that set this exits abruptly (no clean-up, like a kill) after that many epochs in total
EXIT_AFTER_EPOCHS = "ENS_TRANSFER_EXIT_AFTER_EPOCHS"
_epochs_done_in_process = [0]


def make_accelerator(args):
    """Accelerator for the flags; CPU-only machines use the CPU path (DDP over gloo with several processes)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    cpu = args.cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
    accelerator = Accelerator(cpu=cpu, mixed_precision=args.mixed_precision,
                              log_with="tensorboard" if args.with_tracking else None,
                              project_config=ProjectConfiguration(project_dir=args.output_dir,
                                                                  logging_dir=os.path.join(args.output_dir, "tensorboard")))
    if accelerator.device.type == "cpu" and accelerator.num_processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        # several processes on few cores: one thread group per process, never more threads than cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    return accelerator


def seed_for(*parts):
    """A 32-bit seed derived from integers (seed, member, epoch, ...): independent streams, reproducible."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


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


def predict(accelerator, model, loader):
    """Test-set probabilities (samples, classes) as float32 numpy, each sample exactly once, in dataset order."""
    loader = accelerator.prepare(loader)
    model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode(), accelerator.autocast():
        for x, _y in loader:
            probs = model(x).float().softmax(dim=-1)
            out.append(accelerator.gather_for_metrics(probs).cpu())
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float32)


def fit(accelerator, model, dataset, args, lrs, epochs, seed, resume_path, loss_terms=None, taps=(),
        member=0, step_offset=0, desc="train", params=None):
    """Train `model` for `epochs` with learning rates `lrs[step]` and a fresh SGD (momentum reset); returns it.

    Resumes from `resume_path` when it exists; writes it (atomically) after every epoch. Randomness of epoch e
    (data order, augmentation) comes from (seed, e), so a resumed member is identical to an uninterrupted one.
    `params`: the parameters to optimise (default: all with requires_grad).
    """
    loss_terms = loss_terms or {}
    loader = train_loader(dataset, args.batch_size, accelerator.num_processes, accelerator.process_index,
                          seed, args.num_workers)
    iters = len(loader)
    assert len(lrs) == epochs * iters, f"schedule has {len(lrs)} steps, expected {epochs} x {iters}"
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    optimizer = torch.optim.SGD(params, lr=float(lrs[0]), momentum=args.momentum, weight_decay=args.weight_decay)
    start_epoch = 0
    if os.path.exists(resume_path):
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        accelerator.print(f"{desc}: resuming at epoch {start_epoch + 1}/{epochs} from {resume_path}")
    model, optimizer = accelerator.prepare(model, optimizer)
    if os.path.exists(resume_path) and accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    bar = tqdm(total=(epochs - start_epoch) * iters, desc=desc, leave=False, dynamic_ncols=True,
               disable=args.quiet or not accelerator.is_local_main_process)
    exit_after = int(os.environ.get(EXIT_AFTER_EPOCHS, "0"))
    history = []
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(seed_for(seed, epoch, accelerator.process_index))  # augmentation stream of this epoch
        set_train_mode(model)  # BatchNorm of frozen stages stays in eval mode
        sums = {"loss": 0.0, "ce": 0.0, "correct": 0.0, "n": 0.0, **{k: 0.0 for k in loss_terms}}
        for it, (x, y) in enumerate(loader):
            step = epoch * iters + it
            x, y = x.to(accelerator.device, non_blocking=True), y.to(accelerator.device, non_blocking=True)
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
            n = len(y)
            sums["n"] += n
            sums["loss"] += loss.item() * n
            sums["ce"] += ce.item() * n
            sums["correct"] += (logits.argmax(-1) == y).sum().item()
            for name, value in terms.items():
                sums[name] += float(value.detach()) * n
            if args.with_tracking:
                accelerator.log({"train/lr": float(lrs[step]), "train/loss_step": loss.item(),
                                 **{f"train/{k}_step": float(v.detach()) for k, v in terms.items()}}, step=step_offset + step)
            bar.update(1)
        totals = accelerator.reduce(torch.tensor([sums[k] for k in sums], device=accelerator.device), "sum").tolist()
        totals = dict(zip(sums, totals))
        record = {"epoch": epoch + 1, "seconds": time.time() - t0, "lr": float(lrs[epoch * iters]),
                  "train_acc": 100.0 * totals["correct"] / totals["n"],
                  **{k: totals[k] / totals["n"] for k in ["loss", "ce", *loss_terms]}}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.1f}")
        if args.with_tracking:
            accelerator.log({f"epoch/{k}": v for k, v in record.items() if k != "epoch"},
                            step=step_offset + (epoch + 1) * iters - 1)
        if accelerator.is_main_process:
            save_torch(resume_path, {"model": accelerator.unwrap_model(model).state_dict(),
                                     "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                                     "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None})
        accelerator.wait_for_everyone()
        _epochs_done_in_process[0] += 1
        if exit_after and _epochs_done_in_process[0] >= exit_after:
            os._exit(3)
    bar.close()
    model = accelerator.unwrap_model(model)
    accelerator.free_memory()  # drop accelerate's references to this member's model and optimizer
    return model, history, iters
