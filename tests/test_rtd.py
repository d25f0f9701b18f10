"""RTD against an independent persistence computation (gudhi), invariances, gradients, edge cases."""
import gudhi
import numpy as np
import pytest
import torch

from lib.core.rtd import distance_matrix, rtd, rtd_loss
from lib.infra.errors import UserError


def _gudhi_h1_sum(r1, r2):
    """RTD(a -> b) from scratch with gudhi: Rips complex of [[0, r1^T], [r1, min(r1, r2)]], sum of H1 bars."""
    n = len(r1)
    m = np.zeros((2 * n, 2 * n))
    m[n:, :n], m[:n, n:], m[n:, n:] = r1, r1.T, np.minimum(r1, r2)
    m = (m + m.T) / 2
    np.fill_diagonal(m, 0)
    st = gudhi.RipsComplex(distance_matrix=m).create_simplex_tree(max_dimension=2)
    st.compute_persistence()
    bars = st.persistence_intervals_in_dimension(1)
    bars = bars[np.isfinite(bars[:, 1])] if len(bars) else bars
    return float((bars[:, 1] - bars[:, 0]).sum()) if len(bars) else 0.0


def _np_dist(x):
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return d / np.quantile(d, 0.9)


@pytest.mark.parametrize("n,seed", [(6, 0), (12, 1), (20, 2), (30, 3)])
def test_rtd_matches_gudhi(n, seed):
    rng = np.random.RandomState(seed)
    a = rng.randn(n, 5)
    b = a + 0.7 * rng.randn(n, 5)
    r1, r2 = _np_dist(a), _np_dist(b)
    expected_ab, expected_ba = _gudhi_h1_sum(r1, r2), _gudhi_h1_sum(r2, r1)
    assert expected_ab + expected_ba > 0.05  # a non-trivial case
    assert rtd(a, b, symmetric=False) == pytest.approx(expected_ab, abs=1e-5)
    assert rtd(b, a, symmetric=False) == pytest.approx(expected_ba, abs=1e-5)
    assert rtd(a, b) == pytest.approx((expected_ab + expected_ba) / 2, abs=1e-5)


def test_invariances_under_quantile_normalisation():
    rng = np.random.RandomState(0)
    a = rng.randn(40, 8)
    q, _ = np.linalg.qr(rng.randn(8, 8))
    assert rtd(a, 3 * a) < 1e-4
    assert rtd(a, a @ q + 5.0) < 1e-4
    assert rtd(a, a + rng.randn(40, 8)) > 0.1


def test_directed_rtd_vanishes_when_r2_dominates_r1():
    rng = np.random.RandomState(1)
    a = rng.randn(25, 4)
    b = a.copy()
    b[:, 0] *= 3.0  # stretching one axis never shrinks a distance: r2 >= r1 everywhere
    assert rtd(a, b, normalize=None, symmetric=False) == 0.0
    assert rtd(b, a, normalize=None, symmetric=False) > 0.1


def test_loss_with_all_bars_equals_rtd_and_card_truncates():
    rng = np.random.RandomState(2)
    a, b = rng.randn(30, 6), rng.randn(30, 6)
    da, db = distance_matrix(torch.tensor(a)), distance_matrix(torch.tensor(b))
    full = rtd_loss(da, db, card=None).item()
    assert full == pytest.approx(rtd(a, b), abs=1e-5)
    assert rtd_loss(da, db, card=1000).item() == pytest.approx(full, abs=1e-9)  # fewer bars than card: all of them
    assert rtd_loss(da, db, card=2).item() < full
    assert rtd_loss(da, db, card=None, variant="rtd-ae").item() >= full - 1e-9  # the RTD-AE surrogate is >= RTD


@pytest.mark.parametrize("variant", ["exact", "rtd-ae"])
@pytest.mark.parametrize("normalize", ["quantile", "sqrt_dim"])
def test_gradient_matches_finite_differences(variant, normalize):
    rng = np.random.RandomState(3)
    ref = torch.tensor(rng.randn(10, 4))
    x = torch.tensor(rng.randn(10, 4), requires_grad=True)
    d_ref = distance_matrix(ref, normalize)

    def f(points):
        return rtd_loss(d_ref, distance_matrix(points, normalize), card=None, variant=variant)

    f(x).backward()
    assert x.grad.abs().sum() > 0
    eps, fd = 1e-6, torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                plus, minus = x.detach().clone(), x.detach().clone()
                plus[i, j] += eps
                minus[i, j] -= eps
                fd[i, j] = (f(plus) - f(minus)) / (2 * eps)
    assert torch.allclose(x.grad, fd, atol=1e-5), (x.grad - fd).abs().max()


def test_tiny_and_degenerate_clouds_do_not_crash():
    for n in (1, 2, 3):
        a = torch.randn(n, 3)
        assert rtd(a, a + 1) == pytest.approx(0.0, abs=1e-6)
        x = torch.randn(n, 3, requires_grad=True)
        loss = rtd_loss(distance_matrix(a), distance_matrix(x))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    same = torch.ones(8, 3)
    assert rtd(same, same) == 0.0
    x = torch.ones(8, 3, requires_grad=True)
    loss = rtd_loss(distance_matrix(same), distance_matrix(x))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all()


def test_concurrent_equals_sequential():
    """The worker process gives the same barcodes, including when its shared buffer grows (N=64, 128) and when a
    later matrix is smaller than the buffer (N=40); the shared file is unlinked once the worker mapped it."""
    import glob
    import tempfile
    rng = np.random.RandomState(4)
    before = set(glob.glob("/dev/shm/ens-transfer-rtd-*") + glob.glob(f"{tempfile.gettempdir()}/ens-transfer-rtd-*"))
    for n in (64, 128, 40):
        a, b = torch.tensor(rng.randn(n, 32)), torch.tensor(rng.randn(n, 32))
        assert rtd(a, b, concurrent=True) == rtd(a, b, concurrent=False)
        da, db = distance_matrix(a), distance_matrix(b)
        assert rtd_loss(da, db, concurrent=True).item() == rtd_loss(da, db, concurrent=False).item()
    after = set(glob.glob("/dev/shm/ens-transfer-rtd-*") + glob.glob(f"{tempfile.gettempdir()}/ens-transfer-rtd-*"))
    assert after <= before


def test_bad_input():
    with pytest.raises(UserError, match="same number of points"):
        rtd(np.zeros((5, 2)), np.zeros((6, 2)))
    bad = np.ones((5, 2))
    bad[1, 1] = np.nan
    with pytest.raises(UserError, match="NaN"):
        rtd(bad, np.ones((5, 2)))
    with pytest.raises(UserError, match="same size"):
        rtd_loss(torch.zeros(4, 4), torch.zeros(5, 5))
    with pytest.raises(UserError, match="variant"):
        rtd_loss(torch.zeros(4, 4), torch.zeros(4, 4), variant="max")
    with pytest.raises(UserError, match="normalize"):
        distance_matrix(torch.zeros(4, 2), normalize="median")


@pytest.mark.slow
def test_worker_process_starts_from_any_folder(tmp_path):
    """The barcode worker imports this repository's lib wherever the caller runs from (a script started from
    another folder), and gives the barcodes computed here."""
    import subprocess
    import sys

    from conftest import REPO
    code = (f"import sys; sys.path.insert(0, {REPO!r}); import torch; from lib.core.rtd import rtd; "
            f"torch.manual_seed(0); a, b = torch.randn(70, 8), torch.randn(70, 8); "
            f"print(rtd(a, b, concurrent=True) == rtd(a, b, concurrent=False))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr[-2000:]
