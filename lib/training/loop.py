"""The training loop on accelerate: one member (phase I, a DE member or a cycle), resumable epoch by epoch.

    loop = LoopSettings.from_settings(cfg)          # batch size, SGD, workers, memory format, tracking
    model, history, iters = fit(accelerator, model, data.train, loop, lrs, epochs, seed, resume_path, freeze=frz)

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
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, gather_object
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from torch.nn.utils import get_total_norm
from tqdm.auto import tqdm

from lib.core.freeze import freeze as freeze_stages
from lib.core.freeze import from_sync_batchnorm, to_sync_batchnorm
from lib.core.losses import Deferred
from lib.data.tasks import train_loader
from lib.evaluation.predict import memory_format
from lib.infra import preemption
from lib.infra.errors import Diverged, Preempted
from lib.infra.files import save_torch
from lib.infra.seeding import seed_for
from lib.models.stages import taps as stage_taps


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


MIXUP_STREAM = 0x313  # seed stream of Mixup/CutMix draws: (seed, epoch, rank, MIXUP_STREAM)
CHECK_EVERY = 50  # steps between checks of the on-device loss sums for NaN/inf (and, in DDP, for a stop signal)


def make_optimizer(loop, model, params, lr):
    """A fresh optimizer over `params` (momentum / moments start at zero at every member's start, as the reference
    code wiped them at each cycle boundary). adamw: timm's parameter groups, no weight decay on norms and biases."""
    if loop.optimizer == "adamw":
        keep = {id(p) for p in params}
        groups = [dict(g, params=[p for p in g["params"] if id(p) in keep])
                  for g in param_groups_weight_decay(model, loop.weight_decay, no_weight_decay_list=getattr(
                      model, "no_weight_decay", lambda: ())())]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    return torch.optim.SGD(params, lr=lr, momentum=loop.momentum, weight_decay=loop.weight_decay)


def make_criterion(loop, num_classes):
    """(mix, loss): mix(x, y) -> (x, target) draws Mixup/CutMix for the batch (identity when off); loss(logits,
    target) is the cross-entropy with the loop's label smoothing (soft-target CE with Mixup/CutMix)."""
    if loop.mixup > 0 or loop.cutmix > 0:
        mixup = Mixup(mixup_alpha=loop.mixup, cutmix_alpha=loop.cutmix, label_smoothing=loop.label_smoothing,
                      num_classes=num_classes)

        def mix(x, y):
            """timm pairs sample i with sample B-1-i and needs an even batch: an odd last sample (the epoch's last,
            short batch) keeps its image and gets its plain (smoothed) target."""
            if len(x) % 2 == 0:
                return mixup(x, y)
            last = mixup_target(y[-1:], num_classes, lam=1.0, smoothing=loop.label_smoothing)
            if len(x) == 1:
                return x, last
            xm, target = mixup(x[:-1], y[:-1])
            return torch.cat([xm, x[-1:]]), torch.cat([target, last])
        return mix, SoftTargetCrossEntropy()
    return (lambda x, y: (x, y)), (lambda logits, y: F.cross_entropy(logits, y, label_smoothing=loop.label_smoothing))


def fit(accelerator, model, dataset, loop, lrs, epochs, seed, resume_path, *, freeze=None, loss_terms=None, taps=(),
        member=0, step_offset=0, desc="train", local=False, num_classes=None):
    """Train `model` for `epochs` with learning rates `lrs[step]` and a fresh SGD (momentum reset); returns
    (model, history of per-epoch records over all resumed segments, iterations per epoch).

    Resumes from `resume_path` when it exists; writes it (atomically) after every epoch, and mid-epoch when a stop
    signal arrives (lib.infra.preemption: then raises lib.infra.errors.Preempted). Randomness of epoch e (data order,
    augmentation) comes from (seed, e), and a mid-epoch resume point holds the random state, so a resumed member is
    identical to an uninterrupted one. A non-finite loss (checked on the device, synchronised every CHECK_EVERY steps
    and at each epoch's end) or non-finite final weights raise lib.infra.errors.Diverged before anything of the member
    is written; the resume point keeps the last finite epoch.
    freeze: a lib.core.freeze.Freeze (its parameters are the ones optimised, and its frozen tensors are verified
    at the end); default: everything trains. local=True: this process trains the member alone (member-parallel runs):
    the whole data set, no DDP, no collective operation, exactly as a one-process run would. num_classes: for
    Mixup/CutMix targets.
    """
    loss_terms = loss_terms or {}
    freeze = freeze or freeze_stages(model, "none")
    world, rank = (1, 0) if local else (accelerator.num_processes, accelerator.process_index)
    loader = train_loader(dataset, loop.batch_size, world, rank, seed, loop.num_workers, accelerator.device)
    iters = len(loader)
    assert len(lrs) == epochs * iters, f"schedule has {len(lrs)} steps, expected {epochs} x {iters}"
    optimizer = make_optimizer(loop, model, freeze.params, float(lrs[0]))
    mix, criterion = make_criterion(loop, num_classes)
    raw = model  # the module itself: taps, loss terms and saving see it, whatever wraps it (DDP, torch.compile)
    state = torch.load(resume_path, map_location="cpu", weights_only=True) if os.path.exists(resume_path) else None
    start_epoch, start_step, history = 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, start_step, history = state["epoch"], state.get("step", 0), state.get("history", [])
        where = f"epoch {start_epoch + 1}/{epochs}" + (f", step {start_step + 1}/{iters}" if start_step else "")
        print(f"{desc}: resuming at {where} from {resume_path}" if start_epoch < epochs else
              f"{desc}: all {epochs} epochs were done before the stop; finishing the member", flush=True)
    fmt = memory_format(loop, accelerator)
    model = model.to(accelerator.device, memory_format=fmt)
    if local:  # no DDP wrapper: gradients stay in this process
        optimizer = accelerator.prepare_optimizer(optimizer)
    else:
        if world > 1 and accelerator.device.type == "cuda" and loop.sync_bn:
            model = to_sync_batchnorm(model)  # BatchNorm over the global batch, as on the paper's single GPU
        model, optimizer = accelerator.prepare(model, optimizer)
    if loop.compile:
        model = torch.compile(model, mode=None if loop.compile_mode == "default" else loop.compile_mode,
                              backend=loop.compile_backend)
    if state is not None and accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    bar = tqdm(total=max(0, (epochs - start_epoch) * iters - start_step), desc=desc, leave=False, dynamic_ncols=True,
               disable=loop.quiet or not (local or accelerator.is_local_main_process))
    names = ["loss", "ce", *loss_terms]
    reduce = (lambda t, op: t) if local else accelerator.reduce
    gather = (lambda t: t[None]) if local else (lambda t: accelerator.gather(t[None]))
    writer = local or accelerator.is_main_process
    preemption.install()

    def save(epoch, step, sums=None, seconds=0.0):
        """The resume point: the next epoch (and step within it) and everything needed to continue exactly."""
        rng = [_rng_state()]
        if step and not local and world > 1:  # mid-epoch in DDP: every process's random state
            rng = gather_object(rng)
        if writer:
            save_torch(resume_path, {"model": raw.state_dict(),  # SyncBatchNorm has BatchNorm's keys: no conversion
                                     "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                                     "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None,
                                     "history": history, "sums": None if sums is None else sums.cpu(),
                                     "seconds": seconds, "rng": rng if step else None})

    watched = [t for t in list(raw.parameters()) + list(raw.buffers()) if t.is_floating_point()]  # NaN/inf watch
    with stage_taps(raw, taps) as feats:  # hooks for the whole member (a compiled graph keeps them)
        for epoch in range(start_epoch, epochs):
            skip = start_step if epoch == start_epoch else 0
            t0 = time.time() - (state["seconds"] if skip else 0.0)
            loader.sampler.set_epoch(epoch)
            torch.manual_seed(seed_for(seed, epoch, rank))  # augmentation stream of this epoch
            if loop.mixup > 0 or loop.cutmix > 0:  # timm's Mixup draws from numpy's global stream
                np.random.seed(seed_for(seed, epoch, rank, MIXUP_STREAM))
            model.train()  # BatchNorm layers of frozen stages (bn="eval") stay in eval mode: lib.core.freeze.freeze
            # running sums and non-finite flags stay on the device: one synchronisation every CHECK_EVERY steps
            sums = state["sums"].to(accelerator.device) if skip else \
                torch.zeros(len(names) + 2, device=accelerator.device)  # names..., correct, n
            # first step at which each loss term, and then the weights, was NaN/inf (iters: never)
            first_bad = torch.full((len(names) + 1,), iters, device=accelerator.device)
            batches = iter(loader)
            for _ in range(skip):  # a mid-epoch resume: the same batches as before, then the random state at the stop
                next(batches)
            if skip:
                _set_rng_state(state["rng"][rank])
            for it in range(skip, iters):
                x, y = next(batches)
                step = epoch * iters + it
                x = x.to(accelerator.device, non_blocking=True).contiguous(memory_format=fmt)
                y = y.to(accelerator.device, non_blocking=True)
                for group in optimizer.param_groups:
                    group["lr"] = float(lrs[step])
                x, target = mix(x, y)
                with accelerator.autocast():
                    logits = model(x)
                    ce = criterion(logits, target)
                    terms = {name: term(Step(x, y, logits, feats, raw, member, step))
                             for name, term in loss_terms.items()}
                    later = {k: v for k, v in terms.items() if isinstance(v, Deferred)}
                    loss = ce + sum(v for v in terms.values() if not isinstance(v, Deferred))
                optimizer.zero_grad(set_to_none=True)
                if later and world == 1:  # the CE (+ other terms) backward runs while the deferred terms are computed
                    accelerator.backward(loss, retain_graph=True)
                    with accelerator.autocast():
                        terms.update({k: v.result() for k, v in later.items()})
                    accelerator.backward(sum(terms[k] for k in later))
                    loss = loss.detach() + sum(terms[k].detach() for k in later)
                else:  # DDP all-reduces gradients in one backward: deferred terms are waited for, then added
                    if later:
                        with accelerator.autocast():
                            terms.update({k: v.result() for k, v in later.items()})
                        loss = loss + sum(terms[k] for k in later)
                    accelerator.backward(loss)
                if loop.clip_grad is not None:
                    accelerator.clip_grad_norm_(freeze.params, loop.clip_grad)
                optimizer.step()
                with torch.no_grad():
                    values = torch.stack([loss.detach().float(), ce.detach().float(),
                                          *[v.detach().float() for v in terms.values()]])
                    finite = torch.cat([torch.isfinite(values), torch.isfinite(get_total_norm(watched))[None]])
                    first_bad = torch.where(finite, first_bad, first_bad.clamp(max=it))
                    sums[:len(names)] += values * len(y)
                    sums[-2] += (logits.argmax(-1) == y).sum()
                    sums[-1] += len(y)
                if loop.with_tracking:
                    accelerator.log({"train/lr": float(lrs[step]), "train/loss_step": loss.item(),
                                     **{f"train/{k}_step": float(v.detach()) for k, v in terms.items()}},
                                    step=step_offset + step)
                bar.update(1)
                if (it + 1) % CHECK_EVERY == 0 or it + 1 == iters:
                    _check_finite(gather(first_bad).min(0).values, names, raw, epoch, iters, desc)
                if it + 1 < iters and _stop(local, world, accelerator, now=(it + 1) % CHECK_EVERY == 0):
                    _check_finite(gather(first_bad).min(0).values, names, raw, epoch, iters, desc)
                    save(epoch, it + 1, sums, time.time() - t0)
                    if not local:
                        accelerator.wait_for_everyone()
                    bar.close()
                    raise Preempted(f"{desc} stopped at epoch {epoch + 1}, step {it + 1}/{iters} "
                                    f"({preemption.requested()}); its resume point is {resume_path}: re-run the same "
                                    f"command to continue")
            totals = reduce(sums, "sum").tolist()
            record = {"epoch": epoch + 1, "seconds": time.time() - t0, "lr": float(lrs[epoch * iters]),
                      "train_acc": 100.0 * totals[-2] / totals[-1],
                      **{k: totals[i] / totals[-1] for i, k in enumerate(names)}}
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.1f}")
            if loop.with_tracking:
                accelerator.log({f"epoch/{k}": v for k, v in record.items() if k != "epoch"},
                                step=step_offset + (epoch + 1) * iters - 1)
            save(epoch + 1, 0)
            if not local:
                accelerator.wait_for_everyone()
            if epoch + 1 < epochs and _stop(local, world, accelerator, now=True):  # at an epoch's end: already saved
                bar.close()
                raise Preempted(f"{desc} stopped after epoch {epoch + 1} ({preemption.requested()}); its resume point "
                                f"is {resume_path}: re-run the same command to continue")
    bar.close()
    model = from_sync_batchnorm(raw).to(memory_format=torch.contiguous_format)
    release(accelerator)
    freeze.verify(model, desc)
    return model, history, iters


def _check_finite(first_bad, names, model, epoch, iters, desc):
    """Raise Diverged if a loss term or the weights were NaN/inf at some step (first_bad[k] < iters: the first such
    step of names[k], then of the weights), naming the term (or the first bad tensor) and the step."""
    first = first_bad.tolist()
    if min(first) >= iters:
        return
    it = int(min(first))
    bad = [n for n, f in zip(names, first) if f == it]
    where = f"at epoch {epoch + 1}, step {it + 1}/{iters}"
    if bad:
        what = f"the {next((n for n in bad if n != 'loss'), 'loss')} loss became NaN or infinite {where}"
    else:  # every term was finite at that step, the update was not
        tensor = next(k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all())
        what = f"the weights ({tensor}) became NaN or infinite {where}, after a step whose loss was finite"
    raise Diverged(f"{desc}: {what}; nothing of this member was saved (its resume point keeps the last finite epoch). "
                   f"A smaller learning rate (--lr / --cycle_lr) or loss weight (--alpha) usually helps")


def _stop(local, world, accelerator, now):
    """Whether to stop for a signal: at once with one process; in DDP all processes decide together, at the steps
    where `now` (every CHECK_EVERY steps and at epochs' ends: a signal may reach them at different steps)."""
    if local or world == 1:
        return preemption.requested() is not None
    if not now:
        return False
    flag = torch.tensor([1.0 if preemption.requested() else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)


def _rng_state():
    """Every random state a training step draws from: torch (CPU and CUDA) and numpy's (timm's Mixup), as tensors
    (resume files are read with weights_only=True)."""
    _name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
            "numpy_rest": torch.tensor([pos, has_gauss, gauss], dtype=torch.float64),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(rng):
    torch.set_rng_state(rng["torch"])
    pos, has_gauss, gauss = rng["numpy_rest"].tolist()
    np.random.set_state(("MT19937", rng["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def release(accelerator):
    """Drop accelerate's references to the finished member's model and optimizer, so the next member does not keep
    it alive. accelerator.free_memory() is the public way, but it also runs gc.collect() (about 0.2 s per member, 26 %
    of a short demo run), so this one function clears accelerate's private lists instead; accelerate keeps prepared
    objects nowhere else."""
    for name in ("_models", "_optimizers", "_schedulers"):
        getattr(accelerator, name, []).clear()
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()
