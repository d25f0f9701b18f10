"""User-facing errors: bad input, a damaged file, a full disk or a diverged run is reported as one clear line and a
non-zero exit, never a traceback; a preempted run exits with PREEMPTED_EXIT after writing its resume point."""
import errno
import functools
import os
import signal
import sys

from lib.infra import preemption

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: the resume point is written; re-run (or requeue) to continue
INTERRUPTED_EXIT = 130


class UserError(Exception):
    """A problem with what the user asked for (missing file, bad value, wrong layout, damaged file, ...)."""


class Diverged(UserError):
    """Training produced a non-finite loss or weights; nothing of that member was saved."""


class Preempted(Exception):
    """A stop signal arrived; the training loop wrote its resume point."""


def check(condition, message):
    """Raise UserError(message) unless condition holds."""
    if not condition:
        raise UserError(message)


def os_error_line(e):
    """One line for an environment fault (full disk, read-only folder, a path through a file, ...)."""
    where = e.filename or "?"
    return {
        errno.ENOSPC: f"the disk is full (writing {where}); free some space and re-run the same command to resume",
        errno.EDQUOT: f"disk quota exceeded (writing {where}); free some space and re-run the same command to resume",
        errno.EROFS: f"{where} is on a read-only file system",
        errno.EACCES: f"permission denied: {where}",
        errno.EPERM: f"operation not permitted: {where}",
        errno.ENOTDIR: f"{where}: a part of this path is a file, not a folder",
        errno.EEXIST: f"{where} exists and is not a folder",
        errno.EISDIR: f"{where} is a folder, not a file",
        errno.ENOENT: f"no such file or folder: {where}",
    }.get(e.errno, f"{e.strerror or e}: {where}")


def _exit_quietly(signum, _frame):
    if signum == signal.SIGINT:
        print("interrupted while starting: nothing was written", file=sys.stderr, flush=True)
        os._exit(INTERRUPTED_EXIT)
    print(f"stopped by {signal.Signals(signum).name} while starting: nothing was written; re-run the same command",
          file=sys.stderr, flush=True)
    os._exit(PREEMPTED_EXIT)


def _stop_here(signum, _frame):
    raise Preempted(f"stopped by {signal.Signals(signum).name}; nothing is half-written (every file is written whole "
                    f"or not at all): re-run the same command")


def interrupt_quietly():
    """Ctrl-C (or a stop signal) while a script imports its libraries: one line and exit 130 (75), not a traceback
    or a silent 143. cli_main takes over once main() runs. Scripts call this before their heavy imports."""
    for s in (signal.SIGINT, *preemption.SIGNALS):
        signal.signal(s, _exit_quietly)


_CLEANUPS = []  # what runs when a script's main() ends, however it ends (lib.infra.locks releases its locks)


def when_main_ends(fn):
    """Run fn() when cli_main's main() returns or raises."""
    _CLEANUPS.append(fn)


def _say(line):
    """One line on stderr (under a multi-process launch every process that stops says why, its rank first)."""
    rank = os.environ.get("RANK", "0")
    print(line if rank == "0" else f"[process {rank}] {line}", file=sys.stderr, flush=True)


def cli_main(fn):
    """Decorator for a script's main(): UserError (and environment faults) -> 'error: ...' on stderr and exit status 2;
    Preempted (a stop signal: training writes its resume point first, lib.infra.preemption) -> exit PREEMPTED_EXIT;
    Ctrl-C -> one line and exit 130. A stop signal that arrives after the work is done is said, and the exit is 0."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for s in preemption.SIGNALS:  # until training installs its own (a flag checked at every step)
            signal.signal(s, _stop_here)
        try:
            result = fn(*args, **kwargs)
            if preemption.requested():
                _say(f"note: {preemption.requested()} arrived as the work ended; it is complete, nothing to resume")
            return result
        except UserError as e:
            _say(f"error: {e}")
            sys.exit(2)
        except OSError as e:
            _say(f"error: {os_error_line(e)}")
            sys.exit(2)
        except Preempted as e:
            _say(f"preempted: {e}")
            sys.exit(PREEMPTED_EXIT)
        except KeyboardInterrupt:
            _say("interrupted: re-run the same command to resume")
            sys.exit(INTERRUPTED_EXIT)
        finally:
            for cleanup in _CLEANUPS:
                cleanup()

    return wrapper
