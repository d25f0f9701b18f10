"""Locks on shared files: the run directory (one run writes it at a time) and each phase-I cache entry (one process
trains it, the others wait and reuse it).

fcntl.flock locks belong to an open file: the kernel releases them when the process ends, however it ends (kill -9
included), so a dead run never leaves a stale lock, and its successor simply resumes from the last resume point. flock
works across hosts on the shared file systems of clusters (NFSv4, Lustre, GPFS, BeeGFS). The holder's host and PID are
written into the lock file while it holds the lock, for messages only: correctness never depends on them.
"""
import fcntl
import os
import socket
import time

from lib.infra.errors import UserError, when_main_ends

_HELD = set()  # the locks this process holds: released when a script's main() ends, however it ends


class FileLock:
    """An exclusive lock on `path` (created if missing). `acquire(wait=False)` returns False when another process holds
    it; `holder()` says who (host, PID, since when), as far as that process wrote it."""

    def __init__(self, path):
        self.path, self.fd = path, None

    def acquire(self, wait=True):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        _HELD.add(self)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, PID {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        return True

    def release(self):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an idle lock file is empty
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
            _HELD.discard(self)

    def holder(self):
        try:
            with open(self.path) as f:
                return f.read().strip() or "a process that has not written its name yet"
        except OSError:
            return "unknown"

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def release_all():
    """Release every lock this process holds (the kernel would at its exit; a script run in-process ends earlier)."""
    for lock in list(_HELD):
        lock.release()


when_main_ends(release_all)


def lock_run_dir(path):
    """Hold `<path>/.lock` for this process's lifetime, or stop at once with one line naming the holder."""
    lock = FileLock(os.path.join(path, ".lock"))
    if not lock.acquire(wait=False):
        raise UserError(f"--output_dir {path} is being written by another run ({lock.holder()}); wait for it to end "
                        f"or choose another --output_dir")
    return lock


def wait_for(lock, what, log=print):
    """Acquire `lock`, saying once who holds it if we have to wait (e.g. another job training the same phase I)."""
    if not lock.acquire(wait=False):
        log(f"waiting for {what}: held by {lock.holder()}")
        lock.acquire(wait=True)
    return lock
