"""Preemption: a scheduler's "stop soon" signal turns into a resume point, not a lost run.

Slurm sends SIGTERM (scancel, scontrol requeue, preemption) or the signal of `--signal=B:USR1@120` before it kills a
job. `install()` makes SIGTERM and SIGUSR1 only set a flag; the training loop checks it after every step, writes its
resume point atomically (mid-epoch included) and raises lib.infra.errors.Preempted, which the scripts turn into exit
status PREEMPTED_EXIT (75, EX_TEMPFAIL). Re-running the same command resumes exactly where it stopped.
"""
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_requested = []  # the signal numbers received since install()


def _handler(signum, _frame):
    _requested.append(signum)


def install():
    """Catch SIGTERM and SIGUSR1 from now on (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _handler)


def requested():
    """The name of the first stop signal received (e.g. 'SIGTERM'), or None."""
    return signal.Signals(_requested[0]).name if _requested else None
