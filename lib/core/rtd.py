"""Representation Topology Divergence (Barannikov et al. 2022) and its differentiable loss (Trofimov et al. 2023).

RTD(a -> b): r1, r2 = distance matrices of the two clouds (one-to-one correspondence of points); build the 2N x 2N
matrix [[0, r1^T], [r1, min(r1, r2)]], compute Vietoris-Rips persistence up to H1 and sum the H1 bar lengths.
RTD(b -> a) swaps r1 and r2; `rtd` returns the symmetrised (RTD(a->b) + RTD(b->a)) / 2. H0 is not used.

The loss runs persistence on a detached copy only to select, for each H1 bar, its birth edge and its death edge
(the longest edge of the death triangle); it sums death - birth read from the differentiable matrices, so
gradients reach the distances and through them the features. Persistence comes from giotto-ph (lib/core/persistence.py);
the two directions run concurrently, one in a worker process (giotto-ph holds the GIL).
"""
import math
from typing import NamedTuple

import numpy as np
import torch

from lib.core.persistence import h1_bars, submit
from lib.infra.errors import check

NORMALIZATIONS = ("quantile", "sqrt_dim", None)
VARIANTS = ("exact", "rtd-ae")


def _check_cloud(x, name):
    x = torch.as_tensor(x)
    check(x.dim() == 2, f"{name} must be a (points, features) array, got shape {tuple(x.shape)}")
    check(bool(torch.isfinite(x).all()), f"{name} contains NaN or infinite values")
    return x


def distance_matrix(x, normalize="quantile"):
    """Euclidean distances of the rows of x (N, d), divided by their 0.9-quantile over all N*N entries
    ("quantile", diagonal included, as the reference RTD), by sqrt(d) ("sqrt_dim", as RTD-AE and the thesis),
    or left as they are (None). Differentiable."""
    check(normalize in NORMALIZATIONS, f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    x = _check_cloud(x, "point cloud")
    x = x.reshape(len(x), -1)
    # cdist's matrix-product path is fast but leaves ~1e-7 asymmetries; small clouds take the exact path
    mode = "use_mm_for_euclid_dist_if_necessary" if len(x) > 64 else "donot_use_mm_for_euclid_dist"
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    d = torch.cdist(x, x, compute_mode=mode).masked_fill(eye, 0.0)
    if normalize == "quantile":
        q = torch.quantile(d.flatten(), 0.9)  # differentiable: the loss's gradient includes the normaliser's
        d = d / q if q > 0 else d  # identical points: nothing to normalise
    elif normalize == "sqrt_dim":
        d = d / math.sqrt(x.shape[1])
    return d


def _cross_matrix(r1, r2):
    """[[0, r1^T], [r1, min(r1, r2)]] (2N x 2N)."""
    zero = torch.zeros_like(r1)
    return torch.cat([torch.cat([zero, r1.T], 1), torch.cat([r1, torch.minimum(r1, r2)], 1)], 0)


def _cross_numpy(r1, r2):
    """_cross_matrix of two symmetric float32 numpy matrices (the persistence input)."""
    n = len(r1)
    m = np.zeros((2 * n, 2 * n), np.float32)
    m[n:, :n], m[:n, n:], m[n:, n:] = r1, r1.T, np.minimum(r1, r2)
    return m


def _for_persistence(m):
    """A symmetric float32 copy with a zero diagonal (giotto-ph, like ripser++, computes in float32)."""
    m = m.detach().float().cpu().numpy()
    m = (m + m.T) / 2
    np.fill_diagonal(m, 0.0)
    return m


def rtd(a, b, normalize="quantile", symmetric=True, concurrent=True):
    """Symmetrised RTD between point clouds a and b, (N, d) arrays or tensors with a one-to-one correspondence
    (symmetric=False: RTD(a -> b) alone)."""
    a, b = _check_cloud(a, "first point cloud"), _check_cloud(b, "second point cloud")
    check(len(a) == len(b), f"point clouds must have the same number of points, got {len(a)} and {len(b)}")
    with torch.no_grad():
        r1 = _for_persistence(distance_matrix(a.double(), normalize))
        r2 = _for_persistence(distance_matrix(b.double(), normalize))
    mats = []
    for x, y in ((r2, r1), (r1, r2)):
        m = _cross_numpy(x, y)
        m[m < 1e-6 * float(x.mean())] = 0.0  # as the reference: entries below 1e-6 * mean(r1) are zero
        mats.append(m)
    pending = submit(mats[0], concurrent) if symmetric else None  # b -> a in the worker while a -> b runs here
    _, bars_ab = h1_bars(mats[1])
    a_to_b = float((bars_ab[:, 1] - bars_ab[:, 0]).sum())
    if not symmetric:
        return a_to_b
    _, bars_ba = pending.result()
    return (a_to_b + float((bars_ba[:, 1] - bars_ba[:, 0]).sum())) / 2


def _direction_loss(dx, death_matrix, edges, bars, card):
    """Sum over the `card` most persistent bars of death - birth, read from the differentiable matrices."""
    if len(edges) == 0:
        return dx.sum() * 0.0
    order = np.argsort(-(bars[:, 1] - bars[:, 0]), kind="stable")
    if card is not None:
        order = order[:card]
    e = torch.as_tensor(edges[order], device=dx.device)
    birth = dx[e[:, 0], e[:, 1]]
    death = death_matrix[e[:, 2], e[:, 3]]
    return (death - birth).abs().sum()


def _check_matrices(dist_ref, dist_cur, card, variant):
    check(variant in VARIANTS, f"variant must be one of {VARIANTS}, got {variant!r}")
    check(card is None or card > 0, f"card must be positive or None, got {card}")
    check(dist_ref.shape == dist_cur.shape and dist_ref.dim() == 2 and dist_ref.shape[0] == dist_ref.shape[1],
          f"distance matrices must be square and of the same size, got {tuple(dist_ref.shape)} and "
          f"{tuple(dist_cur.shape)}")
    check(bool(torch.isfinite(dist_ref).all() and torch.isfinite(dist_cur).all()),
          "distance matrices contain NaN or inf")


def barcode_threads():
    """giotto-ph threads for each of the two directions computed at the same time: half this process's torch
    threads (all cores of a GPU host; 1 each on a 2-core CPU, as before)."""
    return max(1, torch.get_num_threads() // 2)


class Barcodes(NamedTuple):
    """The H1 bars of both directions of a pair of distance matrices, each (edges (k, 4), bars (k, 2)) as
    lib.core.persistence.h1_bars gives them: they say which matrix entries (birth and death edges) the loss reads,
    and which bars are the `card` most persistent."""
    ref_to_cur: tuple
    cur_to_ref: tuple


def rtd_barcodes(dist_ref, dist_cur, concurrent=True):
    """The Barcodes of two (already normalised) N x N distance matrices, the cur -> ref direction in a worker process
    while ref -> cur is computed here (concurrent=False: both here)."""
    _check_matrices(dist_ref, dist_cur, None, "exact")
    return _barcodes(dist_ref.to(dist_cur.dtype), dist_cur, concurrent)


def _barcodes(dist_ref, dist_cur, concurrent):
    # the persistence inputs are built in numpy: a torch op here would leave OpenMP threads spinning on the core
    # the worker needs
    ref, cur = _for_persistence(dist_ref), _for_persistence(dist_cur)
    threads = barcode_threads()
    pending = submit(_cross_numpy(cur, ref), concurrent, n_threads=threads)  # cur -> ref in the worker ...
    first = h1_bars(_cross_numpy(ref, cur), threads)  # ... while ref -> cur is computed here
    return Barcodes(first, pending.result())


class _PendingBarcodes:
    """Barcodes being computed in two worker processes; result() waits for them (once; later calls return them)."""

    def __init__(self, first, second):
        self.handles, self.value = (first, second), None

    def result(self):
        if self.value is None:
            self.value = Barcodes(*(h.result() for h in self.handles))
        return self.value


def rtd_barcodes_async(dist_ref, dist_cur, slots=(0, 1)):
    """rtd_barcodes computed in worker processes `slots` while the caller goes on (e.g. the GPU runs a backward): a
    handle whose result() waits for them."""
    _check_matrices(dist_ref, dist_cur, None, "exact")
    return _barcodes_async(dist_ref.to(dist_cur.dtype), dist_cur, slots)


def _barcodes_async(dist_ref, dist_cur, slots):
    ref, cur = _for_persistence(dist_ref), _for_persistence(dist_cur)
    threads = barcode_threads()
    return _PendingBarcodes(submit(_cross_numpy(ref, cur), True, slot=slots[0], n_threads=threads),
                            submit(_cross_numpy(cur, ref), True, slot=slots[1], n_threads=threads))


def rtd_loss(dist_ref, dist_cur, card=50, variant="exact", concurrent=True, barcodes=None):
    """Differentiable symmetrised RTD loss from two (already normalised) N x N distance matrices.

    card: keep the `card` most persistent H1 bars of each direction (None keeps all; then the "exact" variant
    equals `rtd`). variant "rtd-ae": the published RTD-AE loss used by the thesis, in which death edges falling in
    the lower-right block read dist_cur (the second argument) instead of the minimum, in both directions.
    barcodes: read the bars (which edges, which `card` of them) from these Barcodes instead of computing those of
    the two matrices (--rtd_pipeline: the barcodes of the same points one step earlier); a bar whose edges now read
    death < birth counts |death - birth|.
    """
    _check_matrices(dist_ref, dist_cur, card, variant)
    dist_ref = dist_ref.to(dist_cur.dtype)
    if barcodes is None:
        barcodes = _barcodes(dist_ref, dist_cur, concurrent)
    return _loss_from_bars(dist_ref, dist_cur, *barcodes, card, variant)


def rtd_loss_async(dist_ref, dist_cur, card=50, variant="exact", slots=(0, 1)):
    """rtd_loss whose two barcodes are computed in worker processes `slots` while the caller goes on (e.g. the GPU
    runs the cross-entropy's backward): returns a function that waits for them and builds the same loss."""
    _check_matrices(dist_ref, dist_cur, card, variant)
    dist_ref = dist_ref.to(dist_cur.dtype)
    pending = _barcodes_async(dist_ref, dist_cur, slots)
    return lambda: _loss_from_bars(dist_ref, dist_cur, *pending.result(), card, variant)


def _loss_from_bars(dist_ref, dist_cur, ref_to_cur, cur_to_ref, card, variant):
    """The loss read from the differentiable matrices at the birth and death edges of both directions' bars."""
    (e1, b1), (e2, b2) = ref_to_cur, cur_to_ref
    dx_1, dx_2 = _cross_matrix(dist_ref, dist_cur), _cross_matrix(dist_cur, dist_ref)
    if variant == "rtd-ae":
        zero = torch.zeros_like(dist_ref)
        death_1 = torch.cat([torch.cat([zero, dist_ref.T], 1), torch.cat([dist_ref, dist_cur], 1)], 0)
        death_2 = torch.cat([torch.cat([zero, dist_cur.T], 1), torch.cat([dist_cur, dist_cur], 1)], 0)
    else:
        death_1, death_2 = dx_1, dx_2
    return (_direction_loss(dx_1, death_1, e1, b1, card) + _direction_loss(dx_2, death_2, e2, b2, card)) / 2
