"""Vietoris-Rips H1 barcodes (giotto-ph) and the worker process that computes one while the caller computes another.

giotto-ph holds the GIL while it computes, so the two RTD directions run concurrently only in two processes. This
module imports only the standard library, numpy and (inside h1_bars) giotto-ph, so the worker starts fast and holds
no torch threads; lib/core/rtd.py keeps the mathematics and calls `submit` / `h1_bars`.
"""
import atexit
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np


def h1_bars(matrix, n_threads=1):
    """H1 of the Vietoris-Rips filtration of a symmetric distance matrix with zero diagonal.

    Returns (edges, bars): edges (k, 4) int64 rows [birth u, birth v, death u, death v] (each edge as
    (larger vertex, smaller vertex), the death edge being the longest edge of the death triangle) and bars (k, 2)
    float [birth, death] of the k finite bars with death > birth.
    """
    from gph import ripser_parallel
    n = len(matrix)
    if n < 3:  # no triangle, no H1
        return np.zeros((0, 4), np.int64), np.zeros((0, 2))
    out = ripser_parallel(matrix, maxdim=1, metric="precomputed", collapse_edges=False, return_generators=True,
                          n_threads=n_threads)
    edges = np.asarray(out["gens"][1][0], dtype=np.int64).reshape(-1, 4)
    bars = np.asarray(out["dgms"][1], dtype=np.float64)[: len(edges)]  # finite bars come first, aligned with gens
    return edges, bars


def serve_stdio():
    """Worker loop over stdin/stdout: read (path, size, shape, threads) of a float32 matrix in a shared memory-mapped
    file, write back pickled h1_bars of it; EOF stops. The file is unlinked once mapped: the mapping outlives the name,
    so nothing is left behind whichever process stops first."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    maps = {}
    while True:
        try:
            path, size, shape, n_threads = pickle.load(inp)
        except EOFError:
            break
        if path not in maps:
            maps = {path: np.memmap(path, np.float32, "r", shape=(size,))}  # a larger file replaces the last
            os.unlink(path)
        n = shape[0] * shape[1]
        pickle.dump(h1_bars(np.asarray(maps[path][:n]).reshape(shape), n_threads), out,
                    protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


# ----------------------------------------------------------------------------------------------------------------
# the worker, seen from the caller

_workers = {}  # slot -> running worker process, each started on first use
_SHM = "/dev/shm"  # memory-backed on Linux


class _Worker:
    """A child process that computes a barcode while this process does something else (another barcode, or the
    GPU's work). One job at a time: its shared buffer holds the matrix until the result is read.

    A plain child over pipes, not multiprocessing: an executor hands work over in a feeder thread, which needs the
    GIL that giotto-ph holds here, and spawn would re-import the user's main script in the child. The matrix
    itself crosses through a shared memory-mapped file (the pipe carries its name and size), so handing over a
    2N x 2N matrix costs a memcpy, not a pickle through a 64 KiB pipe buffer.
    """

    def __init__(self):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds lib/core/
        code = f"import sys; sys.path.insert(0, {root!r}); from lib.core.persistence import serve_stdio; serve_stdio()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.path, self.buffer = None, np.zeros(0, np.float32)
        self.busy = False  # a job was sent whose result was not read
        atexit.register(self.close)

    def alive(self):
        return self.proc.poll() is None

    def send(self, matrix, n_threads=1):
        if self.buffer.size < matrix.size:  # a new, larger file; the child maps it and unlinks it
            fd, self.path = tempfile.mkstemp(prefix="ens-transfer-rtd-", dir=_shared_dir(matrix.size * 4))
            os.ftruncate(fd, matrix.size * 4)
            os.close(fd)
            self.buffer = np.memmap(self.path, np.float32, "r+", shape=(matrix.size,))
        if self.busy:  # a result nobody read (a step abandoned half-way, e.g. by an error): dropped, not misread
            self.recv()
        self.buffer[: matrix.size] = matrix.ravel()
        pickle.dump((self.path, self.buffer.size, matrix.shape, n_threads), self.proc.stdin,
                    protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()
        self.busy = True

    def recv(self):
        result = pickle.load(self.proc.stdout)
        self.busy = False
        return result

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.kill()
        if self.path and os.path.exists(self.path):  # the child died before mapping it
            os.unlink(self.path)


def _shared_dir(nbytes):
    """/dev/shm (memory) when it has room (containers often give it 64 MiB), else the temp folder (page cache)."""
    try:
        st = os.statvfs(_SHM)
        return _SHM if st.f_bavail * st.f_frsize > 2 * nbytes else None
    except OSError:
        return None


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _Pending:
    def __init__(self, worker):
        self.worker = worker

    def result(self):
        return self.worker.recv()


def submit(matrix, concurrent, slot=0, n_threads=1):
    """Start h1_bars(matrix, n_threads) in worker process `slot` (returns a handle with .result(); read it before
    submitting to the same slot again), or compute it here when not `concurrent`."""
    if concurrent and len(matrix) >= 64:  # small matrices: the hand-off costs more than it saves
        try:
            worker = _workers.get(slot)
            if worker is None or not worker.alive():
                worker = _workers[slot] = _Worker()
            worker.send(matrix, n_threads)
            return _Pending(worker)
        except (OSError, EOFError, pickle.PickleError):  # the worker died: carry on without it
            _workers.pop(slot, None)
    return _Done(h1_bars(matrix, n_threads))
