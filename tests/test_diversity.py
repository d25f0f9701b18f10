"""StarSSE-CE and StarSSE-WO: the terms by hand, the NaN-free all-correct batch, a WO gradient that exists."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import run_script, run_scripts

from lib.core.losses import PredictionDiversity, WeightOrthogonality, compute_dtype
from lib.infra.files import load_json, load_weights
from lib.training.loop import Step


class Fixed(torch.nn.Module):
    """A 'member' that always outputs the given logits."""

    def __init__(self, logits):
        super().__init__()
        self.out = torch.nn.Parameter(logits.clone())

    def forward(self, x):
        return self.out.expand(len(x), -1) if self.out.dim() == 1 else self.out


def _step(logits, y, member, step=0, model=None):
    return Step(torch.zeros(len(y), 3), y, logits, {}, model, member, step)


def test_ce_term_by_hand_in_both_modes():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    other = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 0, 5.0], [0, 5.0, 0]])  # predicts 0 0 2 1: wrong on 1, 3
    for mode, expected in [("all", -0.1 * F.cross_entropy(logits, torch.tensor([0, 0, 2, 1]))),
                           ("incorrect", -0.1 * F.cross_entropy(logits[[1, 3]], torch.tensor([0, 1])))]:
        term = PredictionDiversity(0.1, mode)
        term.add(2, Fixed(other), "cpu")
        assert term(_step(logits, y, member=3)).item() == pytest.approx(expected.item())


def test_ce_all_correct_batch_gives_zero_not_nan():
    logits = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    term = PredictionDiversity(0.3, "incorrect")
    term.add(2, Fixed(F.one_hot(y, 3).float() * 5), "cpu")  # member 2 is right on every sample
    value = term(_step(logits, y, member=3))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_ce_draws_only_earlier_members_2_to_i_minus_1():
    logits, y = torch.randn(2, 3), torch.tensor([0, 1])
    term = PredictionDiversity(1.0, "all")
    term.add(1, Fixed(torch.tensor([9.0, 0, 0])), "cpu")  # model 1 is not kept without include_first
    assert 1 not in term.members and term(_step(logits, y, member=2)).item() == 0.0  # member 2: no term
    term.add(2, Fixed(torch.tensor([0, 9.0, 0])), "cpu")
    term.add(3, Fixed(torch.tensor([0, 0, 9.0])), "cpu")
    drawn = {round(term(_step(logits, y, member=4, step=s)).item(), 6) for s in range(40)}
    expected = {round(-F.cross_entropy(logits, torch.full((2,), c)).item(), 6) for c in (1, 2)}
    assert drawn == expected  # j in {2, 3}, both drawn over 40 steps
    assert term(_step(logits, y, member=4, step=7)).item() == term(_step(logits, y, member=4, step=7)).item()
    first = PredictionDiversity(1.0, "all", include_first=True)
    first.add(1, Fixed(torch.tensor([9.0, 0, 0])), "cpu")
    assert first(_step(logits, y, member=2)).item() == pytest.approx(-F.cross_entropy(logits, torch.zeros(2, dtype=torch.long)).item())


@pytest.mark.parametrize("space", ["raw", "delta"])
def test_wo_gradient_exists_and_matches_finite_differences(space):
    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).double()
    m1, mj, cur = make(), make(), make()
    term = WeightOrthogonality(2.0, space)
    term.add(1, m1, "cpu", torch.float64)
    term.add(2, mj, "cpu", torch.float64)
    value = term(_step(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0]), member=3, model=cur))
    value.backward()
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])
    w, wj, w1 = flat(cur), flat(mj), flat(m1)
    if space == "delta":
        w, wj = w - w1, wj - w1
    assert value.item() == pytest.approx(2.0 * (torch.dot(w, wj) / (w.norm() * wj.norm())).item() ** 2)
    grads = torch.cat([p.grad.flatten() for p in cur.parameters()])
    assert grads.abs().sum() > 1e-6  # the reference's detached vector gave exactly zero here
    eps, fd = 1e-6, []
    params = list(cur.parameters())
    for p in params:
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
                up = term.cos2(cur.named_parameters(), term.members[2]).item()
                p.view(-1)[i] -= 2 * eps
                down = term.cos2(cur.named_parameters(), term.members[2]).item()
                p.view(-1)[i] += eps
            fd.append(2.0 * (up - down) / (2 * eps))
    assert torch.allclose(grads, torch.tensor(fd, dtype=torch.float64), atol=1e-7)


def test_wo_keeps_members_in_the_compute_dtype_but_delta_in_float32():
    model = torch.nn.Linear(3, 2)
    for space, kept in (("raw", torch.float16), ("delta", torch.float32)):
        term = WeightOrthogonality(1.0, space)
        term.add(1, model, "cpu", torch.float16)
        term.add(2, model, "cpu", torch.float16)
        assert {p.dtype for p in term.members[2].values()} == {kept}
        if space == "delta":  # differences of nearby weights lose most of their bits in fp16
            assert {p.dtype for p in term.origin.values()} == {torch.float32}


def test_compute_dtype():
    cpu = SimpleNamespace(device=torch.device("cpu"), mixed_precision="fp16")
    gpu = SimpleNamespace(device=torch.device("cuda"), mixed_precision="fp16")
    bf = SimpleNamespace(device=torch.device("cuda"), mixed_precision="bf16")
    assert compute_dtype(cpu) == torch.float32 and compute_dtype(gpu) == torch.float16
    assert compute_dtype(bf) == torch.bfloat16


def test_scripts_change_training_only_from_member_3(tmp_path, tiny):
    runs = {}
    for name, script, flags in [("star", "starsse.py", []), ("wo", "starsse_wo.py", ["--alpha", "1e6"]),
                                ("ce", "starsse_ce.py", ["--mode", "all", "--alpha", "0.5"]),
                                ("ce0", "starsse_ce.py", ["--mode", "all", "--alpha", "0"])]:
        r = run_script(script, *tiny, *flags, "--output_dir", tmp_path / name)
        assert r.returncode == 0, r.stderr
        runs[name] = [load_weights(tmp_path / name / f"member_{i}.safetensors") for i in (1, 2, 3)]
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)
    for name in ("wo", "ce", "ce0"):
        assert same(runs[name][1], runs["star"][1])  # member 2 has no earlier member 2..1: plain StarSSE
    assert same(runs["ce0"][2], runs["star"][2])
    assert not same(runs["wo"][2], runs["star"][2]) and not same(runs["ce"][2], runs["star"][2])
    hist = load_json(tmp_path / "wo" / "member_3.json")["history"]
    assert all(h["wo"] > 0 for h in hist)
    assert load_json(tmp_path / "ce" / "metrics.json")["method"] == "StarSSE-CE (all)"


def test_bad_diversity_input(tmp_path, cache_dir):
    cases = [("starsse_ce.py", ["--mode", "some"], "unknown --mode 'some' (choose from all, incorrect)"),
             ("starsse_ce.py", ["--alpha", "nan"], "--alpha must be a finite number"),
             ("starsse_wo.py", ["--alpha", "inf"], "--alpha must be a finite number"),
             ("starsse_wo.py", ["--wo_space", "cos"], "unknown --wo_space 'cos' (choose from raw, delta)")]
    results = run_scripts([(script, "--cpu", "--cache_dir", cache_dir, "--output_dir", tmp_path / f"o{i}", *flags)
                           for i, (script, flags, _) in enumerate(cases)])
    for i, ((_, _, msg), r) in enumerate(zip(cases, results)):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.stderr
        assert not (tmp_path / f"o{i}").exists()
