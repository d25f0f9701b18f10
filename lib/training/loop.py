"""The training loop on accelerate: one member (phase I, a DE member or a cycle), resumable step by step.

    loop = LoopSettings.from_settings(cfg)          # batch size, optimizer, workers, memory format, tracking
    member = Member(run.resume(2), seed=seed, index=2, freeze=frz, loss_terms={"rtd": reg}, taps=["avgpool"])
    model, history, iters = fit(accelerator, model, data.train, loop, Schedule(lrs, epochs), member)

`fit` reads as the loop it is (DINO's train_one_epoch is the model); what surrounds the steps has a name of its own:
ResumePoint (where a member continues, exactly), Processes (DDP, or a member trained alone), Watch (the NaN/inf
watch), Batches (an epoch's batches on the device), and the Trainer's train_one_epoch and train_step.

Loss = CE + the sum of extra loss terms; a term is a function of the step (`Step` below), so similarity and
diversity regularisers plug in without copying the loop:
    Member(..., loss_terms={"rtd": lambda s: alpha * rtd_loss(s.features["avgpool"], ref(s.x))}, taps=["avgpool"])
A term object may also have look_ahead(step), called once every term of the step is built and before its backward
(to start work on the next batch: Step.peek; --rtd_pipeline), and resume_state() / load_resume_state(state), what a
mid-epoch resume point keeps of it.
"""
import os
import pickle
import sys
import time
from dataclasses import dataclass, field, replace

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
    peek: object = None  # peek() -> the input of the epoch's next batch, fetched now (None after its last batch)


@dataclass(frozen=True)
class Schedule:
    """A member's learning rate at every step (lib.core.schedules: epochs x iterations per epoch values)."""
    lrs: np.ndarray
    epochs: int


@dataclass(frozen=True)
class Member:
    """The member `fit` trains, besides its model, data, loop settings and schedule."""
    resume_path: str  # its resume point: written after every epoch and at a stop signal, read when it exists
    seed: int = 0  # the randomness of epoch e (data order, augmentation) comes from (seed, e)
    index: int = 0  # the member's number, which loss terms see (Step.member)
    freeze: object = None  # a lib.core.freeze.Freeze (its parameters train; its frozen tensors are verified at the
    #                        end); None: everything trains
    loss_terms: dict = field(default_factory=dict)  # name -> term(Step): a tensor (or a Deferred) added to the CE
    taps: tuple = ()  # the stages whose outputs the loss terms read (Step.features)
    step_offset: int = 0  # tracking step of the member's first iteration (members laid end to end)
    desc: str = "train"  # the member's name in messages and on the progress bar
    local: bool = False  # this process trains the member alone (member-parallel runs): the whole data set, no DDP,
    #                      no collective operation, exactly as a one-process run would
    num_classes: int = None  # for Mixup/CutMix targets


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


def fit(accelerator, model, dataset, loop, schedule, member):
    """Train `model` (one member) on `dataset` with the learning rates of `schedule` and a fresh optimizer (momentum
    reset); returns (model, history of per-epoch records over all resumed segments, iterations per epoch).

    Resumes from the member's resume point when it exists (ResumePoint); writes it (atomically) after every epoch,
    and mid-epoch when a stop signal arrives (lib.infra.preemption: then raises lib.infra.errors.Preempted).
    Randomness of epoch e (data order, augmentation) comes from (seed, e), and a mid-epoch resume point holds the
    random state, so a resumed member is identical to an uninterrupted one. A non-finite loss or non-finite weights
    (Watch) raise lib.infra.errors.Diverged before anything of the member is written; the resume point keeps the last
    finite epoch.
    """
    procs = Processes(accelerator, member.local)
    loader = train_loader(dataset, loop.batch_size, procs.world, procs.rank, member.seed, loop.num_workers,
                          accelerator.device, loop.drop_last)
    iters = len(loader)
    assert len(schedule.lrs) == schedule.epochs * iters, \
        f"schedule has {len(schedule.lrs)} steps, expected {schedule.epochs} x {iters}"
    member = replace(member, freeze=member.freeze or freeze_stages(model, "none"))
    optimizer = make_optimizer(loop, model, member.freeze.params, float(schedule.lrs[0]))
    raw = model  # the module itself: taps, loss terms and saving see it, whatever wraps it (DDP, torch.compile)
    point = ResumePoint(member.resume_path, member.desc, say_damage=procs.writer)
    point.restore(raw, optimizer, schedule.epochs, iters)
    model, optimizer = procs.prepare(model, optimizer, loop)
    point.restore_scaler(accelerator)
    trainer = Trainer(procs, model, raw, optimizer, loader, loop, schedule, member, point)
    history = list(point.history)
    preemption.install()
    with stage_taps(raw, member.taps) as feats:  # hooks for the whole member (a compiled graph keeps them)
        for epoch in range(point.epoch, schedule.epochs):
            record = trainer.train_one_epoch(epoch, feats, history)
            history.append(record)
            trainer.bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.1f}")
            trainer.log({f"epoch/{k}": v for k, v in record.items() if k != "epoch"}, (epoch + 1) * iters - 1)
            trainer.save(history, epoch + 1)
            procs.wait()
            if epoch + 1 < schedule.epochs and procs.stop(now=True):  # at an epoch's end: already saved
                trainer.bar.close()
                raise Preempted(f"{member.desc} stopped after epoch {epoch + 1} ({preemption.requested()}); its "
                                f"resume point is {member.resume_path}: re-run the same command to continue")
    trainer.bar.close()
    model = from_sync_batchnorm(raw).to(memory_format=torch.contiguous_format)
    release(accelerator)
    member.freeze.verify(model, member.desc)
    return model, history, iters


class Trainer:
    """One member's training, epoch by epoch and step by step (fit builds it, resumed, and runs its epochs)."""

    def __init__(self, procs, model, raw, optimizer, loader, loop, schedule, member, point):
        """Nine parameters: what fit prepared (the processes, the wrapped and the raw model, the optimizer, the
        loader, the resume point) and what it was given (loop settings, schedule, member), held for the steps."""
        self.procs, self.accelerator = procs, procs.accelerator
        self.model, self.raw, self.optimizer, self.loader, self.point = model, raw, optimizer, loader, point
        self.loop, self.schedule, self.member, self.iters = loop, schedule, member, len(loader)
        self.mix, self.criterion = make_criterion(loop, member.num_classes)
        self.fmt = memory_format(loop, self.accelerator)
        self.names = ["loss", "ce", *member.loss_terms]
        self.watch = Watch(self.names, raw, self.iters, member.desc)
        self.bar = tqdm(total=max(0, (schedule.epochs - point.epoch) * self.iters - point.step), desc=member.desc,
                        leave=False, dynamic_ncols=True, disable=loop.quiet or not procs.shows_progress)

    def train_one_epoch(self, epoch, feats, history):
        """Epoch `epoch`'s steps (from the resume point's step when it stopped in this epoch); returns the epoch's
        record (mean loss of each term, training accuracy, seconds, lr). When a stop signal arrives: saves a resume
        point and raises Preempted."""
        member, procs, iters, device = self.member, self.procs, self.iters, self.accelerator.device
        resume = self.point.state if epoch == self.point.epoch and self.point.step else None
        skip = self.point.step if resume else 0
        t0 = time.time() - (resume["seconds"] if resume else 0.0)
        self.loader.sampler.set_epoch(epoch)
        torch.manual_seed(seed_for(member.seed, epoch, procs.rank))  # augmentation stream of this epoch
        if self.loop.mixup > 0 or self.loop.cutmix > 0:  # timm's Mixup draws from numpy's global stream
            np.random.seed(seed_for(member.seed, epoch, procs.rank, MIXUP_STREAM))
        self.model.train()  # BatchNorm layers of frozen stages (bn="eval") stay in eval mode: lib.core.freeze.freeze
        # running sums and non-finite flags stay on the device: one synchronisation every CHECK_EVERY steps
        sums = resume["sums"].to(device) if resume else torch.zeros(len(self.names) + 2, device=device)  # +correct, n
        self.watch.start_epoch(device)
        saved = resume.get("terms") if resume else None  # mid-epoch: {term: state} of every process
        for name, term in member.loss_terms.items():  # what a term had pending at the stop, else nothing
            if hasattr(term, "load_resume_state"):
                term.load_resume_state(saved[procs.rank].get(name) if saved else None)
        batches = Batches(self.loader, skip, resume["rng"][procs.rank] if resume else None, self)
        for it in range(skip, iters):
            step = epoch * iters + it
            x, y, target = batches.take()
            loss, ce, terms, logits = self.train_step(x, y, target, step, feats, batches.peek)
            with torch.no_grad():
                values = torch.stack([loss.detach().float(), ce.detach().float(),
                                      *[v.detach().float() for v in terms.values()]])
                self.watch.record(values, it)
                sums[:len(self.names)] += values * len(y)
                sums[-2] += (logits.argmax(-1) == y).sum()
                sums[-1] += len(y)
            if self.loop.with_tracking:
                self.log({"train/lr": float(self.schedule.lrs[step]), "train/loss_step": loss.item(),
                          **{f"train/{k}_step": float(v.detach()) for k, v in terms.items()}}, step)
            self.bar.update(1)
            if (it + 1) % CHECK_EVERY == 0 or it + 1 == iters:
                self.watch.check(procs, epoch)
            if it + 1 < iters and procs.stop(now=(it + 1) % CHECK_EVERY == 0):
                self.watch.check(procs, epoch)
                self.save(history, epoch, it + 1, sums, time.time() - t0, batches.rng_state())
                procs.wait()
                self.bar.close()
                raise Preempted(f"{member.desc} stopped at epoch {epoch + 1}, step {it + 1}/{iters} "
                                f"({preemption.requested()}); its resume point is {member.resume_path}: re-run the "
                                f"same command to continue")
        totals = procs.sum(sums).tolist()
        return {"epoch": epoch + 1, "seconds": time.time() - t0, "lr": float(self.schedule.lrs[epoch * iters]),
                "train_acc": 100.0 * totals[-2] / totals[-1],
                **{k: totals[i] / totals[-1] for i, k in enumerate(self.names)}}

    def train_step(self, x, y, target, step, feats, peek=None):
        """One optimisation step: forward, CE + loss terms (then their look-ahead at the next batch, `peek`),
        backward (Trainer.backward), clipping, update. Returns (loss, ce, terms, logits)."""
        acc, optimizer = self.accelerator, self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = float(self.schedule.lrs[step])
        with acc.autocast():
            logits = self.model(x)
            ce = self.criterion(logits, target)
            seen = Step(x, y, logits, feats, self.raw, self.member.index, step, peek)
            terms = {name: term(seen) for name, term in self.member.loss_terms.items()}
            for term in self.member.loss_terms.values():  # after every term: a look-ahead's forward re-fills feats
                if hasattr(term, "look_ahead"):
                    term.look_ahead(seen)
            loss = ce + sum(v for v in terms.values() if not isinstance(v, Deferred))
        optimizer.zero_grad(set_to_none=True)
        loss = self.backward(loss, terms)
        if self.loop.clip_grad is not None:
            acc.clip_grad_norm_(self.member.freeze.params, self.loop.clip_grad)
        optimizer.step()
        return loss, ce, terms, logits

    def backward(self, loss, terms):
        """The step's backward. Deferred terms (lib.core.losses.Deferred, --rtd_overlap) are completed in `terms`:
        on one process their barcodes are computed while the CE (+ other terms) backward runs, then their own
        backward follows; DDP all-reduces gradients in one backward, so there they are waited for, then added.
        Returns the step's total loss (detached where two backwards ran)."""
        acc = self.accelerator
        later = {k: v for k, v in terms.items() if isinstance(v, Deferred)}
        if later and self.procs.world == 1:
            acc.backward(loss, retain_graph=True)
            with acc.autocast():
                terms.update({k: v.result() for k, v in later.items()})
            acc.backward(sum(terms[k] for k in later))
            return loss.detach() + sum(terms[k].detach() for k in later)
        if later:
            with acc.autocast():
                terms.update({k: v.result() for k, v in later.items()})
            loss = loss + sum(terms[k] for k in later)
        acc.backward(loss)
        return loss

    def save(self, history, epoch, step=0, sums=None, seconds=0.0, rng=None):
        """Write the resume point: the next epoch (and step within it) and everything needed to continue exactly;
        mid-epoch, every process's random state at its next batch."""
        acc = self.accelerator
        rngs = self.procs.each(rng) if step else None
        terms = self.procs.each({name: term.resume_state() for name, term in self.member.loss_terms.items()
                                 if hasattr(term, "resume_state")}) if step else None
        if self.procs.writer:
            self.point.save({"model": self.raw.state_dict(),  # SyncBatchNorm has BatchNorm's keys: no conversion
                             "optimizer": self.optimizer.state_dict(), "epoch": epoch, "step": step,
                             "scaler": acc.scaler.state_dict() if acc.scaler else None,
                             "history": history, "sums": None if sums is None else sums.cpu(),
                             "seconds": seconds, "rng": rngs, "terms": terms})

    def log(self, values, step):
        """Log to the trackers (--with_tracking) at the member's `step`, counted from the run's first member."""
        if self.loop.with_tracking:
            self.accelerator.log(values, step=self.member.step_offset + step)


class Batches:
    """An epoch's batches, each on the device in the loop's memory format and mixed (Mixup/CutMix), in order.

    A mid-epoch resume skips the batches already trained on (the same ones, as the order depends on (seed, epoch)
    only), then restores the random state saved at the stop. `peek` fetches the next batch early (a loss term's
    look-ahead, after the step's forward): its augmentation and Mixup draws come in the same order as when it is
    fetched at its own step, since the look-ahead's forward restores the random streams it uses."""

    def __init__(self, loader, skip, rng, trainer):
        self.batches, self.left = iter(loader), len(loader) - skip
        for _ in range(skip):
            next(self.batches)
        if skip:
            _set_rng_state(rng)
        self.device, self.fmt, self.mix = trainer.accelerator.device, trainer.fmt, trainer.mix
        self.ahead = None  # a peeked batch, and the random state before it was fetched

    def take(self):
        """The next batch: (input, labels, target of the loss)."""
        if self.ahead is not None:
            batch, self.ahead = self.ahead[0], None
            return batch
        return self._fetch()

    def peek(self):
        """The next batch's input, fetched now; None when the epoch has no next batch."""
        if self.ahead is None:
            if self.left == 0:
                return None
            rng = _rng_state()
            self.ahead = (self._fetch(), rng)
        return self.ahead[0][0]

    def rng_state(self):
        """The random state the next batch will be drawn from (what a mid-epoch resume point keeps)."""
        return self.ahead[1] if self.ahead is not None else _rng_state()

    def _fetch(self):
        x, y = next(self.batches)
        self.left -= 1
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt)
        y = y.to(self.device, non_blocking=True)
        x, target = self.mix(x, y)
        return x, y, target


class Processes:
    """The processes that train a member: all of them (DDP: each reads its shard of every batch, sums are
    all-reduced, the main process writes, a stop is decided together) or this one alone (local, member-parallel:
    the whole data set and no collective operation, exactly as a one-process run)."""

    def __init__(self, accelerator, local):
        self.accelerator, self.local = accelerator, local
        self.world, self.rank = (1, 0) if local else (accelerator.num_processes, accelerator.process_index)
        self.writer = local or accelerator.is_main_process  # writes the resume point
        self.shows_progress = local or accelerator.is_local_main_process

    def prepare(self, model, optimizer, loop):
        """The model on the device in the loop's memory format, wrapped for DDP (SyncBatchNorm on GPUs) unless
        alone, compiled when asked; the optimizer prepared."""
        acc = self.accelerator
        model = model.to(acc.device, memory_format=memory_format(loop, acc))
        if self.local:  # no DDP wrapper: gradients stay in this process
            optimizer = acc.prepare_optimizer(optimizer)
        else:
            if self.world > 1 and acc.device.type == "cuda" and loop.sync_bn:
                model = to_sync_batchnorm(model)  # BatchNorm over the global batch, as on the paper's single GPU
            model, optimizer = acc.prepare(model, optimizer)
        if loop.compile:
            model = torch.compile(model, mode=None if loop.compile_mode == "default" else loop.compile_mode,
                                  backend=loop.compile_backend)
        return model, optimizer

    def sum(self, t):
        return t if self.local else self.accelerator.reduce(t, "sum")

    def stack(self, t):
        """t of every process, stacked (of this one alone when it trains alone)."""
        return t[None] if self.local else self.accelerator.gather(t[None])

    def each(self, obj):
        """[obj of every process] (picklable objects)."""
        return [obj] if self.local or self.world == 1 else gather_object([obj])

    def wait(self):
        if not self.local:
            self.accelerator.wait_for_everyone()

    def stop(self, now):
        """Whether to stop for a signal: at once with one process; in DDP all processes decide together, at the steps
        where `now` (every CHECK_EVERY steps and at epochs' ends: a signal may reach them at different steps)."""
        if self.world == 1:
            return preemption.requested() is not None
        if not now:
            return False
        flag = torch.tensor([1.0 if preemption.requested() else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item() > 0)


class ResumePoint:
    """A member's resume point file: the next epoch and step, the weights, the optimizer (and loss scaler), the
    history and, mid-epoch, the epoch's running sums, its seconds so far and every process's random state."""

    def __init__(self, path, desc, say_damage=True):
        self.path, self.desc = path, desc
        self.state = self._read(say_damage)

    def _read(self, say_damage):
        """The saved state; None when there is none, or when the file is damaged (a resume point cut short, e.g. by
        a full disk or a copy): that is said in one line and the member restarts from its start."""
        if not os.path.exists(self.path):
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not {"model", "optimizer", "epoch"} <= set(state):
                raise ValueError("not a resume point")
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
            if say_damage:
                print(f"warning: {self.desc}: its resume point {self.path} is damaged (cut short, or not a resume "
                      f"point: {type(e).__name__}); restarting this member from its start", file=sys.stderr, flush=True)
            return None
        return state

    @property
    def epoch(self):
        """The epoch training continues at (0: the start)."""
        return self.state["epoch"] if self.state else 0

    @property
    def step(self):
        """The step within that epoch (0: its start)."""
        return self.state.get("step", 0) if self.state else 0

    @property
    def history(self):
        return self.state.get("history", []) if self.state else []

    def restore(self, model, optimizer, epochs, iters):
        """Load the weights and the optimizer's state (before the model is prepared), and say where training
        resumes."""
        if self.state is None:
            return
        model.load_state_dict(self.state["model"])
        optimizer.load_state_dict(self.state["optimizer"])
        where = f"epoch {self.epoch + 1}/{epochs}" + (f", step {self.step + 1}/{iters}" if self.step else "")
        print(f"{self.desc}: resuming at {where} from {self.path}" if self.epoch < epochs else
              f"{self.desc}: all {epochs} epochs were done before the stop; finishing the member", flush=True)

    def restore_scaler(self, accelerator):
        """The mixed-precision loss scaler's state (once accelerate has made the scaler)."""
        if self.state is not None and accelerator.scaler is not None and self.state.get("scaler"):
            accelerator.scaler.load_state_dict(self.state["scaler"])

    def save(self, state):
        save_torch(self.path, state)


class Watch:
    """The NaN/inf watch: for each loss term, then for the weights, the first step of the epoch at which it was not
    finite. Kept on the device (no synchronisation per step) and read every CHECK_EVERY steps and at the epoch's end,
    where a non-finite value raises Diverged."""

    def __init__(self, names, model, iters, desc):
        self.names, self.model, self.iters, self.desc = names, model, iters, desc
        self.tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
        self.first_bad = None

    def start_epoch(self, device):
        self.first_bad = torch.full((len(self.names) + 1,), self.iters, device=device)  # iters: never

    def record(self, values, it):
        """Step `it`'s loss values (in the order of `names`); the weights are read here, after the update."""
        finite = torch.cat([torch.isfinite(values), torch.isfinite(get_total_norm(self.tensors))[None]])
        self.first_bad = torch.where(finite, self.first_bad, self.first_bad.clamp(max=it))

    def check(self, procs, epoch):
        """Raise Diverged if, on any process, a loss term or the weights were NaN/inf at some step of the epoch,
        naming the term (or the first bad tensor) and the step."""
        first = procs.stack(self.first_bad).min(0).values.tolist()
        if min(first) >= self.iters:
            return
        it = int(min(first))
        bad = [n for n, f in zip(self.names, first) if f == it]
        where = f"at epoch {epoch + 1}, step {it + 1}/{self.iters}"
        if bad:
            what = f"the {next((n for n in bad if n != 'loss'), 'loss')} loss became NaN or infinite {where}"
        else:  # every term was finite at that step, the update was not
            tensor = next(k for k, v in self.model.state_dict().items()
                          if v.is_floating_point() and not torch.isfinite(v).all())
            what = f"the weights ({tensor}) became NaN or infinite {where}, after a step whose loss was finite"
        raise Diverged(f"{self.desc}: {what}; nothing of this member was saved (its resume point keeps the last "
                       f"finite epoch). A smaller learning rate (--lr / --cycle_lr) or loss weight (--alpha) usually "
                       f"helps")


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
