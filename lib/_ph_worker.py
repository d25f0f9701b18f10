"""Persistence in a worker process: imports only numpy and giotto-ph, so it starts fast and holds no torch threads.

giotto-ph holds the GIL while it computes, so the two RTD directions run concurrently only in two processes.
"""
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
    """Worker loop over stdin/stdout: read (path, size, shape) of a float32 matrix in a shared memory-mapped file,
    write back pickled h1_bars of it; EOF stops. The file is unlinked once mapped: the mapping outlives the name,
    so nothing is left behind whichever process stops first."""
    import os
    import pickle
    import sys
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    maps = {}
    while True:
        try:
            path, size, shape = pickle.load(inp)
        except EOFError:
            break
        if path not in maps:
            maps = {path: np.memmap(path, np.float32, "r", shape=(size,))}  # a larger file replaces the last
            os.unlink(path)
        n = shape[0] * shape[1]
        pickle.dump(h1_bars(np.asarray(maps[path][:n]).reshape(shape)), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
