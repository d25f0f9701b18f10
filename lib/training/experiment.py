"""An experiment: the accelerator, the task's data, the run directory, and the two ways a member is made.

    cfg = parse(parser, "StarSSE")    # lib.cli.parser: complete, read-only settings
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
import os
import time

import numpy as np
import torch

from lib.core.freeze import freeze as freeze_stages
from lib.core.schedules import cycle_schedule, member_schedule, phase1_schedule
from lib.data.tasks import iterations_per_epoch, load_task, test_loader
from lib.ensemble.card import write_run_card
from lib.evaluation import metrics, registry
from lib.evaluation.evaluate import evaluate_run, load_sets
from lib.evaluation.predict import predict
from lib.evaluation.results import member_digests, result_lines, write_metrics
from lib.infra import preemption
from lib.infra.errors import Preempted, UserError, check
from lib.infra.files import copy_file, intact, save_array
from lib.infra.locks import FileLock, lock_run_dir, wait_for
from lib.infra.seeding import seed_for
from lib.models.backbones import build_model
from lib.models.checkpoints import check_pretrained, load_pretrained, pretrained_id
from lib.runs.rundir import RunDir
from lib.settings import methods
from lib.settings.schema import PHASE1_KEYS, LoopSettings
from lib.training.loop import Member, Schedule, fit, make_accelerator
from lib.training.pretrain import default_checkpoint, pretrain_digits

HEAD_STREAM = 7  # seed stream of a fresh head: (seed, member, HEAD_STREAM)
SLOW_ON_CPU = 96  # px: from this input size on, a full-size backbone on the CPU takes minutes a step (2 cores)


def plan(cfg, device):
    """The run's first line: where its files go and what it trains (members, epochs, learning rates)."""
    method = methods.get(cfg.method)
    m, cycle = cfg.members, f"{cfg.cycle_epochs} epochs restarted at lr {cfg.cycle_lr:g}"
    if method is not None and method.cycles and m > 1:
        first = f"member 1 (phase I: {cfg.epochs} epochs at lr {cfg.lr:g})" if method.phase1 else \
            f"member 1 (a cycle of {cycle})"
        what = f"{first}, then {m - 1} cycle(s) of {cycle}"
        if method.frozen_stage:
            what += f", training the stages from {method.frozen_stage} on"
    else:
        what = f"{m} fine-tune(s) of {cfg.epochs} epochs at lr {cfg.lr:g}"
        if method is not None and method.frozen_stage:
            what += f", only the stages from {method.frozen_stage} on"
    return (f"[{cfg.method}] {os.path.abspath(cfg.output_dir)}: {what}; {cfg.dataset}, {cfg.arch} at "
            f"{cfg.image_size} px, batch {cfg.batch_size}, on {device}")


class Experiment:
    def __init__(self, cfg):
        self.cfg, self.method = cfg, cfg.method
        preemption.install()  # from now on a stop signal (Slurm's SIGTERM / USR1) ends in a resume point
        self.accelerator = acc = make_accelerator(
            cfg.cpu, cfg.mixed_precision, cfg.output_dir,
            log_with=cfg.report_to if cfg.with_tracking and cfg.report_to != "none" else None)
        # member-parallel: each process trains whole members alone (no gradient all-reduce)
        self.parallel = cfg.member_parallel and acc.num_processes > 1
        # who writes a member's files: the process that trained it alone (member-parallel), else the main process
        self.writer = self.parallel or acc.is_main_process
        self.loop = LoopSettings.from_settings(cfg)
        # what config.json records: the settings and how many processes train each member together
        self.record = dict(cfg.as_dict(), processes=1 if self.parallel else acc.num_processes)
        acc.print(plan(cfg, acc.device.type))
        if acc.device.type == "cpu" and cfg.arch != "resnet_mini" and cfg.image_size >= SLOW_ON_CPU:
            acc.print(f"note: {cfg.arch} at {cfg.image_size} px on the CPU takes minutes a step; a CPU-sized run: "
                      f"--arch resnet_mini --image_size 16 (docs/data.md)")
        check(self.parallel or cfg.batch_size % acc.num_processes == 0,
              f"--batch_size {cfg.batch_size} must be divisible by the number of processes ({acc.num_processes}): "
              f"it is the global batch, split evenly over them")
        self.frozen_bn = getattr(cfg, "frozen_bn", "eval")  # scripts without --freeze never freeze anything
        self.checkpoints = self._check_pretrained()
        self.data = load_task(cfg)
        # the evaluation sets of finish(), opened now: a bad one stops the run before any member trains
        self.eval_sets = {"ood": load_sets(cfg.ood_dataset or (), cfg, False, self.data),
                          "shift": load_sets(cfg.shift_dataset or (), cfg, True, self.data)}
        self.lock = None
        if acc.is_main_process:  # everything is checked: from here on this run owns its directory
            RunDir.check(cfg.output_dir, self.record)  # a different run there is refused untouched
            self.lock = lock_run_dir(cfg.output_dir)
        self.run = RunDir(cfg.output_dir, self.record, is_main=acc.is_main_process)
        if acc.is_main_process:
            self.run.clean()
        self.sync(shared=True)
        if cfg.with_tracking:
            acc.init_trackers(methods.directory(self.method),
                              config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                      for k, v in cfg.as_dict().items()})
        if acc.is_main_process:
            save_array(self.run.file("labels.npy"), self.data.test_labels)
            if self.data.val is not None:
                save_array(self.run.file("val_labels.npy"), self.data.val_labels)
        self.iters = iterations_per_epoch(len(self.data.train), cfg.batch_size, 1 if self.parallel else
                                          acc.num_processes, cfg.drop_last)  # per epoch, as fit's train_loader
        self.test_loader = test_loader(self.data.test, cfg.eval_batch_size, min(cfg.num_workers, 4))
        self.val_loader = None if self.data.val is None else \
            test_loader(self.data.val, cfg.eval_batch_size, min(cfg.num_workers, 4))
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
        checkpoint is created once if missing, and again if it is damaged (its digest: lib.infra.files.seal)."""
        cfg, acc = self.cfg, self.accelerator
        embedded = default_checkpoint(cfg.cache_dir, 0)
        if cfg.dataset == "digits" and cfg.pretrained == [embedded]:
            if acc.is_main_process and not intact(embedded, unsealed=True):
                why = "is damaged (its content does not match its digest)" if os.path.exists(embedded) else \
                    "is missing"
                acc.print(f"the embedded pre-trained checkpoint {why}: pre-training it once (BYOL on the "
                          f"unlabelled digits, about a minute on 2 CPU cores) into {os.path.abspath(embedded)}")
                pretrain_digits(embedded, seed=0, verbose=not cfg.quiet)
            self.sync(shared=True)
        for p in cfg.pretrained:  # fail now, before anything is written, if weights are missing or do not fit
            state = check_pretrained(p, cfg.arch, cfg.image_size)
            bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
            check(not bad, f"checkpoint {p}: {bad[:1][0] if bad else ''} holds NaN or inf values "
                           f"({len(bad)} tensor(s)); it cannot be fine-tuned")
        return list(cfg.pretrained)

    def _init_model(self, checkpoint, member):
        """`arch` with the checkpoint's backbone and a fresh head seeded from (seed, member)."""
        torch.manual_seed(seed_for(self.cfg.seed, member, HEAD_STREAM))
        cfg = self.cfg
        return load_pretrained(checkpoint, cfg.arch, self.data.num_classes, cfg.image_size, cfg.drop_path)

    # ------------------------------------------------------------------------------------------------------------
    # members

    def finetune(self, member, checkpoint=None, freeze="none", first_cycle=False, loss_terms=None, taps=(),
                 terms_key=None):
        """Member `member` fine-tuned from a pre-trained checkpoint with the phase-I schedule (phase I, a Local DE
        member, a Global DE member). Cached in cache_dir by (checkpoint, seed, member, phase-I hyper-parameters),
        so SSE, StarSSE, Local DE and every variant train it once; the cache entry is locked while it is trained
        (lib.infra.locks), so two runs that need it at the same time train it once. `freeze`: train only the stages from
        it on (lib.core.freeze.freeze), from the start. first_cycle: fine-tune with the cycles' schedule
        (cycle_lr over cycle_epochs) instead of phase I's, as Standard SSE's first cycle. loss_terms / taps: extra
        loss terms in phase I too (sse_rtd.py --reference pretrained_phase1); terms_key, a dict of every setting
        they depend on, is then part of the cache key, so a regularised phase I never shares an entry with a plain
        one nor with another term's."""
        assert not loss_terms or terms_key, "finetune with loss terms needs terms_key (what keys its cache entry)"
        cfg = self.cfg
        checkpoint = checkpoint or self.checkpoints[0]
        if self.run.done(member):
            return self._load_member(member)
        if not self.mine(member):
            if member == 1:  # every process needs model 1: wait for its owner
                self.sync(shared=True)
                return self._load_member(member)
            return None
        lr, epochs = (cfg.cycle_lr, cfg.cycle_epochs) if first_cycle else (cfg.lr, cfg.epochs)
        key = {"checkpoint": "scratch" if checkpoint == "scratch" else pretrained_id(checkpoint, cfg.arch),
               "member": member,
               **{k: getattr(cfg, k) for k in PHASE1_KEYS}, "lr": lr, "epochs": epochs,
               "processes": 1 if self.parallel else self.accelerator.num_processes,
               **({"train_data": self.data.train_key} if self.data.train_key else {}),  # the data's own fingerprint
               **({"freeze": freeze, "frozen_bn": self.frozen_bn} if freeze != "none" else {}),
               **({"loss_terms": terms_key} if loss_terms else {})}
        entry = os.path.join(cfg.cache_dir, "finetune",
                             hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20])
        lock = None
        if self.writer:  # one process (of all runs and hosts sharing the cache) trains the entry at a time
            lock = wait_for(FileLock(entry + ".lock"), f"phase I of member {member} ({entry})", self.accelerator.print)
        try:
            cache = RunDir(entry, key, is_main=self.writer)
            if self.writer:
                cache.clean()
                if cache.done(1):  # a damaged entry is trained again, never copied into a run
                    try:
                        cache.verify_member(1)
                    except UserError as e:
                        self.accelerator.print(f"note: the cached phase I of member {member} is damaged "
                                               f"({str(e).split(';')[0]}): training it again")
                        cache.discard_member(1)
            self.sync()
            if not cache.done(1):
                model = self._init_model(checkpoint, member)
                lrs = cycle_schedule(cfg, self.iters) if first_cycle else phase1_schedule(cfg, self.iters)
                self._train(cache, 1, model, Schedule(lrs, epochs), f"pretrained:{checkpoint}", freeze,
                            seed=seed_for(cfg.seed, member), step_offset=self._step_offset(member, finetune=True),
                            desc=f"member {member} (fine-tune)", loss_terms=loss_terms or {}, taps=taps)
            if self.writer:  # a verified copy (never a link: damage to a run must not spread to the cache)
                record = cache.verify_member(1)
                for kind, src in cache.member_files(1).items():
                    copy_file(src, getattr(self.run, kind)(member))
                self.run.write_member_record(member, dict(record, member=member, cached=cache.path))
        finally:
            if lock is not None:
                lock.release()
        self.sync(shared=member == 1)
        self._check_stop(member)
        return self._load_member(member)

    def cycle(self, member, init, loss_terms=None, taps=(), freeze="none"):
        """Member `member`: a cosine cycle from cycle_lr to 0 over cycle_epochs, starting from weights `init`,
        with a fresh optimizer (momentum reset). `loss_terms`/`taps`: extra loss terms (lib.training.loop.fit).
        `freeze`: train only the stages from it on (lib.core.freeze.freeze); the frozen tensors are checked at
        the end."""
        cfg = self.cfg
        if self.run.done(member):
            return self._load_member(member)
        if not self.mine(member):
            return None  # member-parallel: another process trains this ray
        self._train(self.run, member, self.model(init),
                    Schedule(member_schedule(cfg, member, self.iters), cfg.cycle_epochs), "given weights", freeze,
                    seed=seed_for(cfg.seed, member), loss_terms=loss_terms or {}, taps=tuple(taps),
                    step_offset=self._step_offset(member), desc=f"member {member} (cycle)")
        self._check_stop(member)
        return self._load_member(member)

    def pretrained_model(self, member=1):
        """The pre-trained checkpoint with member `member`'s fresh head (e.g. the similarity regularisers'
        --reference pretrained)."""
        return self._init_model(self.checkpoints[0], member)

    def _check_stop(self, member):
        """A stop signal that arrived while the member was finished or evaluated: stop before the next member."""
        if preemption.requested():
            raise Preempted(f"stopped after member {member} ({preemption.requested()}); re-run the same command to "
                            f"continue with the next member")

    def model(self, weights):
        """A model of this experiment's arch holding `weights` (on the CPU)."""
        model = build_model(self.cfg.arch, self.data.num_classes, self.cfg.image_size, self.cfg.drop_path)
        model.load_state_dict(weights)
        return model

    def _train(self, run, slot, model, schedule, init, freeze, **member):
        """Train member `slot` of `run` (a run directory or a phase-I cache entry) from `model` (whose weights came
        from `init`), with the stages before `freeze` frozen; write its files. member: the rest of
        lib.training.loop.Member (seed, step_offset, desc, loss_terms, taps)."""
        acc = self.accelerator
        t0 = time.time()
        frozen = freeze_stages(model, freeze, self.frozen_bn)
        member = Member(run.resume(slot), index=slot, freeze=frozen, local=self.parallel,
                        num_classes=self.data.num_classes, **member)
        model, history, _ = fit(acc, model, self.data.train, self.loop, schedule, member)
        t_eval = time.time()
        probs, logits = predict(acc, model, self.test_loader, local=self.parallel, logits=True)
        arrays = {"probs": probs, "logits": logits}
        if self.val_loader is not None:
            arrays["val_probs"], arrays["val_logits"] = predict(acc, model, self.val_loader, local=self.parallel,
                                                                logits=True)
        if self.writer:
            epoch_seconds = [h["seconds"] for h in history]  # every epoch, across resumed segments
            run.write_member(slot, arrays, model.state_dict(), {
                "init": init, "epochs": schedule.epochs, "lr_start": float(schedule.lrs[0]), "freeze": freeze,
                "frozen_bn": self.frozen_bn,
                "seconds": float(sum(epoch_seconds)) + time.time() - t_eval,  # training (all segments) + evaluation
                "seconds_this_segment": time.time() - t0,
                "seconds_per_epoch": float(np.mean(epoch_seconds)) if history else None,
                "trainable_params": frozen.trainable, "total_params": frozen.total,
                "trainable_fraction": frozen.trainable_fraction, "process": acc.process_index,
                "test_accuracy": metrics.accuracy(probs, self.data.test_labels),
                **({"val_accuracy": metrics.accuracy(arrays["val_probs"], self.data.val_labels)}
                   if "val_probs" in arrays else {}),
                "history": history})
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
            self.weights[member] = self.run.load_member_weights(member)  # checked against its record's digests
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
        """metrics.json from the saved predictions (and the OOD / shifted sets asked for), through the one writer
        (lib.evaluation.results.write_metrics); print the results."""
        acc, cfg = self.accelerator, self.cfg
        self.sync(shared=True)  # member-parallel: every process has written its members
        n = self.run.completed_members()
        assert n >= 1, f"no finished member in {self.run.path}"
        if preemption.requested():  # a stop signal during the last member's saving: evaluate on the re-run
            raise Preempted(f"stopped before the evaluation ({preemption.requested()}); every member is saved: re-run "
                            f"the same command to evaluate")
        asked = bool(cfg.ood_dataset or cfg.shift_dataset)
        sets = []  # the members' predictions on the evaluation sets, saved with metrics.json
        result = evaluate_run(self.run, cfg, acc, members=n, task=self.data, sets=self.eval_sets if asked else None,
                              log=acc.print if asked else (lambda _m: None), predictions=sets)
        if acc.is_main_process:  # keeps later results (soups, evaluate.py's sets) computed from the same members
            write_metrics(self.run, result, member_digests(self.run, n), sets, log=acc.print)
            write_run_card(self.run, self.data)  # README.md (the model card) and classes.json
        if cfg.with_tracking:
            acc.log({f"test/ensemble_acc_size_{k + 1}": v
                     for k, v in enumerate(result[registry.ENSEMBLE_ACCURACY_BY_SIZE.key])})
        lines = result_lines(result)
        acc.print("\n".join(lines if asked else lines[:1]))
        acc.print(f"results: {os.path.abspath(self.run.file('metrics.json'))} (members and their predictions in "
                  f"{os.path.abspath(self.run.path)})")
        self.sync(shared=True)
        if self.lock is not None:
            self.lock.release()
        acc.end_training()  # closes the trackers and the process group
        return result
