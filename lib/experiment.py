"""An experiment: the accelerator, the task's data, the run directory, and the two ways a member is made.

    exp = Experiment(args, "StarSSE")
    w1 = exp.finetune(1)              # phase I: fine-tune the pre-trained checkpoint (cached, shared by all methods)
    for i in range(2, M + 1):
        exp.cycle(i, init=w1)         # a cosine cycle restarted at cycle_lr from the given weights
    exp.finish()                      # metrics.json and the results table

Every member is resumable: a finished member is read back from disk, an unfinished one resumes at its last epoch.
"""
import hashlib
import json
import math
import os
import time

import numpy as np
import torch

from . import metrics
from .cli import finalize, run_config, slug
from .data import load_task, test_loader
from .errors import check
from .models import build_model, file_digest, freeze as freeze_stages, frozen_state_keys, match_state_dict, read_checkpoint
from .runs import RunDir, link_or_copy, load_json, load_weights, run_summary, save_array, save_json, save_weights
from .schedules import member_schedule
from .train import fit, make_accelerator, predict, seed_for

HEAD_STREAM = 7  # seed stream of a fresh head: (seed, member, HEAD_STREAM)


class Experiment:
    def __init__(self, args, method, max_checkpoints=1, member_parallel_ok=False):
        self.args, self.method = finalize(args, method), method
        check(not args.member_parallel or member_parallel_ok,
              f"--member_parallel: {method} members depend on earlier members, so they cannot be trained in parallel "
              f"(it is for StarSSE, StarSSE-RTD/MSE, frozen StarSSE and Local/Global DE)")
        self.accelerator = acc = make_accelerator(args)
        # member-parallel: each process trains whole members alone (no gradient all-reduce)
        self.parallel = bool(args.member_parallel) and acc.num_processes > 1
        args.mixed_precision = acc.mixed_precision  # as resolved from the flag or the launch config
        self.checkpoints = self._resolve_pretrained(max_checkpoints)
        self.data = load_task(args)
        self.run = RunDir(args.output_dir, run_config(args), is_main=acc.is_main_process)
        acc.wait_for_everyone()
        if args.with_tracking:
            acc.init_trackers(slug(method), config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                    for k, v in run_config(args).items()})
        if acc.is_main_process:
            save_array(self.run.file("labels.npy"), self.data.test_labels)
        per_process = math.ceil(len(self.data.train) / acc.num_processes)
        self.iters = math.ceil(per_process / (args.batch_size // acc.num_processes))  # training iterations per epoch
        self.test_loader = test_loader(self.data.test, args.eval_batch_size, min(args.num_workers, 4))
        self.weights = {}  # member -> state dict

    # ------------------------------------------------------------------------------------------------------------
    # pre-trained checkpoints

    def _resolve_pretrained(self, max_checkpoints):
        args, acc = self.args, self.accelerator
        paths = args.pretrained
        if paths is None:
            check(args.dataset == "digits", f"--pretrained is required for --dataset {args.dataset} "
                                            f"(e.g. a BYOL ResNet-50 checkpoint such as byol-1000ep-1.pt)")
            from .pretrain import default_checkpoint, pretrain_digits
            path = default_checkpoint(args.cache_dir, 0)
            if acc.is_main_process and not os.path.exists(path):
                acc.print(f"creating the embedded pre-trained checkpoint {path} (once)")
                pretrain_digits(path, seed=0)
            acc.wait_for_everyone()
            paths = [path]
        check(len(paths) <= max_checkpoints,
              f"--pretrained takes {max_checkpoints} checkpoint(s) here, got {len(paths)}")
        model = build_model(args.arch, 10)
        for p in paths:  # fail now, before anything is written, if a checkpoint is missing or does not fit
            if p != "scratch":
                match_state_dict(read_checkpoint(p), model, source=f"checkpoint {p}")
        return list(paths)

    def _init_model(self, checkpoint, member):
        """`arch` with the checkpoint's backbone and a fresh head seeded from (seed, member)."""
        torch.manual_seed(seed_for(self.args.seed, member, HEAD_STREAM))
        model = build_model(self.args.arch, self.data.num_classes)
        if checkpoint != "scratch":
            model.load_state_dict(match_state_dict(read_checkpoint(checkpoint), model), strict=False)
        return model

    # ------------------------------------------------------------------------------------------------------------
    # members

    def finetune(self, member, checkpoint=None, freeze="none", frozen_bn="eval"):
        """Member `member` fine-tuned from a pre-trained checkpoint with the phase-I schedule (phase I, a Local DE
        member, a Global DE member). Cached in cache_dir by (checkpoint, seed, member, phase-I hyper-parameters),
        so SSE, StarSSE, Local DE and every variant train it once. `freeze`: train only the stages after it
        (lib.models.freeze), from the start."""
        args, acc = self.args, self.accelerator
        checkpoint = checkpoint or self.checkpoints[0]
        if self.run.done(member):
            return self._load_member(member)
        # member-parallel: phase I (member 1, which every ray needs) on process 0 while the others wait; other
        # fine-tunes on process (member - 1) mod K, without waiting
        owner = 0 if member == 1 else (member - 1) % acc.num_processes
        mine = not self.parallel or acc.process_index == owner
        if not mine:
            if member == 1:
                acc.wait_for_everyone()
                return self._load_member(member)
            return None
        key = {"checkpoint": "scratch" if checkpoint == "scratch" else file_digest(checkpoint), "member": member,
               **{k: getattr(args, k) for k in ("dataset", "labels_per_class", "augment", "image_size", "arch", "seed",
                                                 "epochs", "lr", "weight_decay", "momentum", "batch_size",
                                                 "lr_granularity", "mixed_precision")},
               **({"freeze": freeze, "frozen_bn": frozen_bn} if freeze != "none" else {}),
               **({"data_pipeline": "device"} if args.data_pipeline == "device" else {})}
        writer = self.parallel or acc.is_main_process
        cache = RunDir(os.path.join(args.cache_dir, "finetune",
                                    hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]),
                       key, is_main=writer)
        if not self.parallel:
            acc.wait_for_everyone()
        if not cache.done(1):
            model = self._init_model(checkpoint, member)
            self._train(cache, 1, model, member_schedule(args, 1, self.iters), args.epochs, seed_for(args.seed, member),
                        init=f"pretrained:{checkpoint}", step_offset=self._step_offset(member, finetune=True),
                        desc=f"member {member} (fine-tune)", freeze=freeze, frozen_bn=frozen_bn)
        if writer:
            for src, dst in [(cache.weights(1), self.run.weights(member)), (cache.probs(1), self.run.probs(member))]:
                link_or_copy(src, dst)
            save_json(self.run.record(member), dict(load_json(cache.record(1)), member=member, cached=cache.path))
        if not self.parallel or member == 1:
            acc.wait_for_everyone()
        return self._load_member(member)

    def cycle(self, member, init, loss_terms=None, taps=(), freeze="none", frozen_bn="eval"):
        """Member `member`: a cosine cycle from cycle_lr to 0 over cycle_epochs, starting from weights `init`,
        with a fresh optimizer (momentum reset). `loss_terms`/`taps`: extra loss terms (lib.train.fit).
        `freeze`: train only the stages after it (lib.models.freeze); the frozen tensors are checked at the end."""
        args, acc = self.args, self.accelerator
        if self.run.done(member):
            return self._load_member(member)
        if self.parallel and acc.process_index != (member - 2) % acc.num_processes:
            return None  # member-parallel: another process trains this ray
        self._train(self.run, member, self.model(init), member_schedule(args, member, self.iters), args.cycle_epochs,
                    seed_for(args.seed, member), init="given weights", loss_terms=loss_terms, taps=taps,
                    step_offset=self._step_offset(member), desc=f"member {member} (cycle)", freeze=freeze,
                    frozen_bn=frozen_bn)
        return self._load_member(member)

    def model(self, weights):
        """A model of this experiment's arch holding `weights` (on the CPU)."""
        model = build_model(self.args.arch, self.data.num_classes)
        model.load_state_dict(weights)
        return model

    def _train(self, run, slot, model, lrs, epochs, seed, init, step_offset, desc, freeze="none", frozen_bn="eval",
               **fit_kwargs):
        acc = self.accelerator
        t0 = time.time()
        total_params = sum(p.numel() for p in model.parameters())
        keep = {k: model.state_dict()[k].clone() for k in frozen_state_keys(model, freeze, frozen_bn)}
        params = freeze_stages(model, freeze, frozen_bn)
        model, history, _ = fit(acc, model, self.data.train, self.args, lrs, epochs, seed, run.resume(slot),
                                member=slot, step_offset=step_offset, desc=desc, params=params, local=self.parallel,
                                **fit_kwargs)
        state = model.state_dict()
        moved = [k for k, v in keep.items() if not torch.equal(state[k].cpu(), v)]
        if moved:  # a frozen tensor moved: a bug, never a result
            raise RuntimeError(f"{desc}: frozen tensors changed during training: {moved[:5]} ({len(moved)} in all)")
        trainable = sum(p.numel() for p in params)
        probs = predict(acc, model, self.test_loader, local=self.parallel)
        if self.parallel or acc.is_main_process:
            save_weights(run.weights(slot), model.state_dict())
            save_array(run.probs(slot), probs)
            epoch_seconds = [h["seconds"] for h in history]
            save_json(run.record(slot), {
                "init": init, "epochs": epochs, "lr_start": float(lrs[0]), "freeze": freeze, "frozen_bn": frozen_bn,
                "seconds": time.time() - t0, "seconds_per_epoch": float(np.mean(epoch_seconds)) if history else None,
                "trainable_params": trainable, "total_params": total_params,
                "trainable_fraction": trainable / total_params, "process": acc.process_index,
                "test_accuracy": metrics.accuracy(probs, self.data.test_labels), "history": history})
            if os.path.exists(run.resume(slot)):
                os.remove(run.resume(slot))
        if not self.parallel:
            acc.wait_for_everyone()

    def _step_offset(self, member, finetune=False):
        """TensorBoard step of a member's first iteration (members laid end to end)."""
        a = self.args
        if finetune:
            return (member - 1) * a.epochs * self.iters
        return (a.epochs + (member - 2) * a.cycle_epochs) * self.iters

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
        line = f"[{self.method}] member {member}/{self.args.members}: test acc {acc_i:.2f} % | " \
               f"ensemble of {len(present)}: {ens:.2f} %"
        if self.parallel:
            print(f"{line} (process {self.accelerator.process_index})", flush=True)
        else:
            self.accelerator.print(line)
        if self.args.with_tracking:
            log = {f"test/member_{member}_acc": acc_i, "test/ensemble_acc": ens}
            if len(present) > 1:
                log["test/diversity"] = metrics.diversity(probs, labels)
            self.accelerator.log(log, step=member)

    # ------------------------------------------------------------------------------------------------------------

    def finish(self):
        """Compute metrics.json from the saved probabilities and print the results."""
        acc, args = self.accelerator, self.args
        acc.wait_for_everyone()  # member-parallel: every process has written its members
        n = self.run.completed_members()
        check(n >= 1, f"no finished member in {self.run.path}")
        result = run_summary(self.run, self.run.load_probs(n), self.data.test_labels, self.run.config)
        if acc.is_main_process:
            save_json(self.run.file("metrics.json"), result)
        if args.with_tracking:
            acc.log({f"test/ensemble_acc_size_{k + 1}": v for k, v in enumerate(result["ensemble_accuracy_by_size"])})
        acc.print(format_result(result))
        acc.wait_for_everyone()
        acc.end_training()  # closes the trackers and the process group
        return result


def format_result(r):
    members = " ".join(f"{a:.2f}" for a in r["member_accuracy"])
    by_size = " ".join(f"{a:.2f}" for a in r["ensemble_accuracy_by_size"])
    return (f"[{r['method']}] {r['members']} members | member acc {members} (avg {r['avg_member_accuracy']:.2f}) | "
            f"diversity {r['diversity']:.2f} | ensemble acc by size {by_size} | "
            f"NLL {r['nll']:.4f} ECE {r['ece']:.4f} Brier {r['brier']:.4f}")
