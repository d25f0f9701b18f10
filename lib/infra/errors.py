"""User-facing errors: bad input, a damaged file, a full disk or a diverged run is reported as one clear line and a
non-zero exit, never a traceback; a preempted run exits with PREEMPTED_EXIT after writing its resume point."""
import errno
import functools
import os
import signal
import sys

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


def _exit_quietly(_signum, _frame):
    print("interrupted while starting: nothing was written", file=sys.stderr, flush=True)
    os._exit(INTERRUPTED_EXIT)


def interrupt_quietly():
    """Ctrl-C while a script imports its libraries: one line and exit 130, not a traceback. cli_main restores the
    usual KeyboardInterrupt once main() runs. Scripts call this before their heavy imports."""
    signal.signal(signal.SIGINT, _exit_quietly)


def _say(line):
    """One line on stderr (under a multi-process launch every process that stops says why, its rank first)."""
    rank = os.environ.get("RANK", "0")
    print(line if rank == "0" else f"[process {rank}] {line}", file=sys.stderr, flush=True)


def cli_main(fn):
    """Decorator for a script's main(): UserError (and environment faults) -> 'error: ...' on stderr and exit status 2;
    Preempted -> exit PREEMPTED_EXIT; Ctrl-C -> one line and exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return fn(*args, **kwargs)
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

    return wrapper
