"""An experiment: the accelerator, the task's data, the run directory, and the two ways a member is made.

    cfg = parse(parser, "StarSSE")    # lib.cli: complete, read-only settings
    exp = Experiment(cfg)
    w1 = exp.finetune(1)              # phase I: fine-tune the pre-trained checkpoint (cached, shared by all methods)
    for i in range(2, M + 1):
        exp.cycle(i, init=w1)         # a cosine cycle restarted at cycle_lr from the given weights
    exp.finish()                      # metrics.json and the results table

Every member is resumable: a finished member is read back from disk, an unfinished one resumes at its last epoch.

Processes. Without --member_parallel, every process trains every member together (DDP: each reads its shard of
every batch) and the main process alone writes files. With --member_parallel and K processes, each member is
trained whole by one process, `owner(member)`, which also writes its files. `sync` is the one barrier.
"""
import hashlib
import json
import math
import os
import time

import numpy as np
import torch

from . import methods, metrics
from .data import load_task, test_loader
from .models import build_model, file_digest, freeze as freeze_stages, load_pretrained, match_state_dict, read_checkpoint
from .pretrain import default_checkpoint, pretrain_digits
from .runs import RunDir, link_or_copy, load_json, load_weights, run_summary, save_array, save_json, save_weights
from .schedules import member_schedule
from .seeding import seed_for
from .train import LoopSettings, fit, make_accelerator, predict

HEAD_STREAM = 7  # seed stream of a fresh head: (seed, member, HEAD_STREAM)
# settings of phase I: a fine-tune is cached under a key made of these (and the checkpoint's content, the member)
PHASE1_KEYS = ("dataset", "labels_per_class", "augment", "image_size", "arch", "seed", "epochs", "lr", "weight_decay",
               "momentum", "batch_size", "lr_granularity", "mixed_precision")


class Experiment:
    def __init__(self, cfg):
        self.cfg, self.method = cfg, cfg.method
        self.accelerator = acc = make_accelerator(
            cfg.cpu, cfg.mixed_precision, cfg.output_dir,
            log_with=cfg.report_to if cfg.with_tracking and cfg.report_to != "none" else None)
        # member-parallel: each process trains whole members alone (no gradient all-reduce)
        self.parallel = cfg.member_parallel and acc.num_processes > 1
        # who writes a member's files: the process that trained it alone (member-parallel), else the main process
        self.writer = self.parallel or acc.is_main_process
        self.loop = LoopSettings.from_settings(cfg)
        self.frozen_bn = getattr(cfg, "frozen_bn", "eval")  # scripts without --freeze never freeze anything
        self.checkpoints = self._check_pretrained()
        self.data = load_task(cfg)
        self.run = RunDir(cfg.output_dir, cfg.as_dict(), is_main=acc.is_main_process)
        self.sync(shared=True)
        if cfg.with_tracking:
            acc.init_trackers(methods.directory(self.method),
                              config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                      for k, v in cfg.as_dict().items()})
        if acc.is_main_process:
            save_array(self.run.file("labels.npy"), self.data.test_labels)
        per_process = math.ceil(len(self.data.train) / acc.num_processes)
        self.iters = math.ceil(per_process / (cfg.batch_size // acc.num_processes))  # training iterations per epoch
        self.test_loader = test_loader(self.data.test, cfg.eval_batch_size, min(cfg.num_workers, 4))
        self.weights = {}  # member -> state dict

    # ------------------------------------------------------------------------------------------------------------
    # processes

    def owner(self, member):
        """The process that trains `member` in a member-parallel run: model 1 on process 0 (every ray starts from it,
        so the others wait for it), then members 2..M dealt round-robin from process 0."""
        return 0 if member == 1 else (member - 2) % self.accelerator.num_processes

    def mine(self, member):
        """Whether this process trains (and writes) `member`: in DDP every process trains it, the main one writes."""
        return self.owner(member) == self.accelerator.process_index if self.parallel else True

    def sync(self, shared=False):
        """The one barrier. DDP runs meet after everything the main process writes (the others read it next).
        Member-parallel runs meet only at `shared` points, where one process needs another's files: the run
        directory and the embedded checkpoint at the start, model 1 (every ray starts from it), the end."""
        if not self.parallel or shared:
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------------------------
    # pre-trained checkpoints

    def _check_pretrained(self):
        """The checkpoints, each checked to fit the arch before anything is written; the embedded default
        checkpoint is created once if missing."""
        cfg, acc = self.cfg, self.accelerator
        embedded = default_checkpoint(cfg.cache_dir, 0)
        if cfg.dataset == "digits" and cfg.pretrained == [embedded]:
            if acc.is_main_process and not os.path.exists(embedded):
                acc.print(f"creating the embedded pre-trained checkpoint {embedded} (once)")
                pretrain_digits(embedded, seed=0)
            self.sync(shared=True)
        model = build_model(cfg.arch, 10)
        for p in cfg.pretrained:  # fail now, before anything is written, if a checkpoint is missing or does not fit
            if p != "scratch":
                match_state_dict(read_checkpoint(p), model, source=f"checkpoint {p}")
        return list(cfg.pretrained)

    def _init_model(self, checkpoint, member):
        """`arch` with the checkpoint's backbone and a fresh head seeded from (seed, member)."""
        torch.manual_seed(seed_for(self.cfg.seed, member, HEAD_STREAM))
        return load_pretrained(checkpoint, self.cfg.arch, self.data.num_classes)

    # ------------------------------------------------------------------------------------------------------------
    # members

    def finetune(self, member, checkpoint=None, freeze="none"):
        """Member `member` fine-tuned from a pre-trained checkpoint with the phase-I schedule (phase I, a Local DE
        member, a Global DE member). Cached in cache_dir by (checkpoint, seed, member, phase-I hyper-parameters),
        so SSE, StarSSE, Local DE and every variant train it once. `freeze`: train only the stages from it on
        (lib.models.freeze), from the start."""
        cfg = self.cfg
        checkpoint = checkpoint or self.checkpoints[0]
        if self.run.done(member):
            return self._load_member(member)
        if not self.mine(member):
            if member == 1:  # every process needs model 1: wait for its owner
                self.sync(shared=True)
                return self._load_member(member)
            return None
        key = {"checkpoint": "scratch" if checkpoint == "scratch" else file_digest(checkpoint), "member": member,
               **{k: getattr(cfg, k) for k in PHASE1_KEYS},
               **({"freeze": freeze, "frozen_bn": self.frozen_bn} if freeze != "none" else {}),
               **({"data_pipeline": "device"} if cfg.data_pipeline == "device" else {})}
        writer = self.writer
        cache = RunDir(os.path.join(cfg.cache_dir, "finetune",
                                    hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]),
                       key, is_main=writer)
        self.sync()
        if not cache.done(1):
            model = self._init_model(checkpoint, member)
            self._train(cache, 1, model, member_schedule(cfg, 1, self.iters), cfg.epochs, seed_for(cfg.seed, member),
                        init=f"pretrained:{checkpoint}", step_offset=self._step_offset(member, finetune=True),
                        desc=f"member {member} (fine-tune)", freeze=freeze)
        if writer:
            for src, dst in [(cache.weights(1), self.run.weights(member)), (cache.probs(1), self.run.probs(member))]:
                link_or_copy(src, dst)
            save_json(self.run.record(member), dict(load_json(cache.record(1)), member=member, cached=cache.path))
        self.sync(shared=member == 1)
        return self._load_member(member)

    def cycle(self, member, init, loss_terms=None, taps=(), freeze="none"):
        """Member `member`: a cosine cycle from cycle_lr to 0 over cycle_epochs, starting from weights `init`,
        with a fresh optimizer (momentum reset). `loss_terms`/`taps`: extra loss terms (lib.train.fit).
        `freeze`: train only the stages from it on (lib.models.freeze); the frozen tensors are checked at the end."""
        cfg = self.cfg
        if self.run.done(member):
            return self._load_member(member)
        if not self.mine(member):
            return None  # member-parallel: another process trains this ray
        self._train(self.run, member, self.model(init), member_schedule(cfg, member, self.iters), cfg.cycle_epochs,
                    seed_for(cfg.seed, member), init="given weights", loss_terms=loss_terms, taps=taps,
                    step_offset=self._step_offset(member), desc=f"member {member} (cycle)", freeze=freeze)
        return self._load_member(member)

    def model(self, weights):
        """A model of this experiment's arch holding `weights` (on the CPU)."""
        model = build_model(self.cfg.arch, self.data.num_classes)
        model.load_state_dict(weights)
        return model

    def _train(self, run, slot, model, lrs, epochs, seed, init, step_offset, desc, freeze="none", loss_terms=None,
               taps=()):
        acc = self.accelerator
        t0 = time.time()
        frozen = freeze_stages(model, freeze, self.frozen_bn)
        model, history, _ = fit(acc, model, self.data.train, self.loop, lrs, epochs, seed, run.resume(slot),
                                freeze=frozen, loss_terms=loss_terms, taps=taps, member=slot,
                                step_offset=step_offset, desc=desc, local=self.parallel)
        probs = predict(acc, model, self.test_loader, local=self.parallel)
        if self.writer:
            save_weights(run.weights(slot), model.state_dict())
            save_array(run.probs(slot), probs)
            epoch_seconds = [h["seconds"] for h in history]
            save_json(run.record(slot), {
                "init": init, "epochs": epochs, "lr_start": float(lrs[0]), "freeze": freeze, "frozen_bn": self.frozen_bn,
                "seconds": time.time() - t0, "seconds_per_epoch": float(np.mean(epoch_seconds)) if history else None,
                "trainable_params": frozen.trainable, "total_params": frozen.total,
                "trainable_fraction": frozen.trainable_fraction, "process": acc.process_index,
                "test_accuracy": metrics.accuracy(probs, self.data.test_labels), "history": history})
            if os.path.exists(run.resume(slot)):
                os.remove(run.resume(slot))
        self.sync()

    def _step_offset(self, member, finetune=False):
        """TensorBoard step of a member's first iteration (members laid end to end)."""
        cfg = self.cfg
        if finetune:
            return (member - 1) * cfg.epochs * self.iters
        return (cfg.epochs + (member - 2) * cfg.cycle_epochs) * self.iters

    def _load_member(self, member):
        if member not in self.weights:
            self.weights[member] = load_weights(self.run.weights(member))
            self._report_member(member)
        return self.weights[member]

    def _report_member(self, member):
        """Print (and log) member `member`'s accuracy and that of the ensemble of the members finished so far."""
        present = [i for i in range(1, member + 1) if os.path.exists(self.run.probs(i))]
        probs = np.stack([np.load(self.run.probs(i)) for i in present])
        labels = self.data.test_labels
        acc_i = metrics.accuracy(probs[-1], labels)
        ens = metrics.ensemble_accuracy(probs, labels)
        line = f"[{self.method}] member {member}/{self.cfg.members}: test acc {acc_i:.2f} % | " \
               f"ensemble of {len(present)}: {ens:.2f} %"
        if self.parallel:
            print(f"{line} (process {self.accelerator.process_index})", flush=True)
        else:
            self.accelerator.print(line)
        if self.cfg.with_tracking:
            log = {f"test/member_{member}_acc": acc_i, "test/ensemble_acc": ens}
            if len(present) > 1:
                log["test/diversity"] = metrics.diversity(probs, labels)
            self.accelerator.log(log, step=member)

    # ------------------------------------------------------------------------------------------------------------

    def finish(self):
        """Compute metrics.json from the saved probabilities and print the results."""
        acc, cfg = self.accelerator, self.cfg
        self.sync(shared=True)  # member-parallel: every process has written its members
        n = self.run.completed_members()
        assert n >= 1, f"no finished member in {self.run.path}"
        result = run_summary(self.run, self.run.load_probs(n), self.data.test_labels, self.run.config)
        if acc.is_main_process:
            save_json(self.run.file("metrics.json"), result)
        if cfg.with_tracking:
            acc.log({f"test/ensemble_acc_size_{k + 1}": v for k, v in enumerate(result["ensemble_accuracy_by_size"])})
        acc.print(format_result(result))
        self.sync(shared=True)
        acc.end_training()  # closes the trackers and the process group
        return result


def format_result(r):
    members = " ".join(f"{a:.2f}" for a in r["member_accuracy"])
    by_size = " ".join(f"{a:.2f}" for a in r["ensemble_accuracy_by_size"])
    return (f"[{r['method']}] {r['members']} members | member acc {members} (avg {r['avg_member_accuracy']:.2f}) | "
            f"diversity {r['diversity']:.2f} | ensemble acc by size {by_size} | "
            f"NLL {r['nll']:.4f} ECE {r['ece']:.4f} Brier {r['brier']:.4f}")
