"""The Swin-T setup's optimisation switches (AdamW without decay on norms and biases, gradient clipping, label
smoothing, Mixup/CutMix through timm), each checked against its formula computed by hand."""
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from lib.settings.schema import LoopSettings
from lib.training.loop import Member, Schedule, fit, make_accelerator, make_criterion, make_optimizer


def _smoothed(y, k, eps):  # one-hot targets with label smoothing: eps / k everywhere, 1 - eps more on the label
    t = torch.full((len(y), k), eps / k)
    t[torch.arange(len(y)), y] += 1 - eps
    return t


def _soft_ce(logits, t):
    return -(t * F.log_softmax(logits, -1)).sum(-1).mean()


def test_label_smoothing_is_the_mixture_of_ce_and_the_uniform_term():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    mix, loss = make_criterion(LoopSettings(batch_size=6, label_smoothing=0.1), 5)
    x = torch.randn(6, 3)
    assert mix(x, y)[0] is x  # no Mixup: the batch goes through untouched
    logp = F.log_softmax(logits, -1).numpy()
    by_hand = np.mean(0.9 * -logp[np.arange(6), y.numpy()] + 0.1 * -logp.mean(1))
    assert abs(loss(logits, y).item() - by_hand) < 1e-6


def test_mixup_mixes_images_and_targets_with_one_lambda():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mix, loss = make_criterion(LoopSettings(batch_size=4, mixup=0.8, label_smoothing=0.1), 4)
    np.random.seed(0)
    xm, t = mix(x.clone(), y)
    xf = x.flip(0)  # timm pairs sample i with sample B-1-i
    lam = ((xm - xf) / (x - xf)).flatten()[0].item()
    assert 0 < lam < 1
    assert torch.allclose(xm, lam * x + (1 - lam) * xf, atol=1e-5)
    target = lam * _smoothed(y, 4, 0.1) + (1 - lam) * _smoothed(y.flip(0), 4, 0.1)
    assert torch.allclose(t, target, atol=1e-6)
    logits = torch.randn(4, 4)
    assert abs(loss(logits, t).item() - _soft_ce(logits, target).item()) < 1e-6


def test_cutmix_pastes_one_box_and_weighs_targets_by_its_area():
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([3, 1, 0, 2])
    mix, _ = make_criterion(LoopSettings(batch_size=4, cutmix=1.0), 4)
    np.random.seed(3)
    xm, t = mix(x.clone(), y)
    pasted = (xm != x).any(0).any(0)  # pixels taken from the paired image, (H, W)
    rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
    box = torch.zeros_like(pasted)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert pasted.any() and torch.equal(pasted, box)  # one rectangle
    assert torch.equal(xm[..., box], x.flip(0)[..., box]) and torch.equal(xm[..., ~box], x[..., ~box])
    lam = 1 - box.sum().item() / box.numel()  # the target's weight is the area left of the image itself
    assert torch.allclose(t, lam * _smoothed(y, 4, 0.0) + (1 - lam) * _smoothed(y.flip(0), 4, 0.0), atol=1e-6)


def test_adamw_decays_weights_but_not_norms_and_biases():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5))
    loop = LoopSettings(batch_size=2, optimizer="adamw", weight_decay=0.05)
    params = [p for p in model.parameters()]
    opt = make_optimizer(loop, model, params, lr=0.01)
    assert isinstance(opt, torch.optim.AdamW)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(model[0].weight), id(model[3].weight)}  # the conv and linear kernels only
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)
    w0 = [p.detach().clone() for p in params]
    F.cross_entropy(model(torch.randn(2, 3, 8, 8)), torch.tensor([1, 4])).backward()
    g = [p.grad.clone() for p in params]
    opt.step()
    for p, w, gr in zip(params, w0, g):  # AdamW's first step: decoupled decay, then lr * g / (|g| + eps)
        wd = 0.05 if id(p) in decay else 0.0
        assert torch.allclose(p.detach(), w * (1 - 0.01 * wd) - 0.01 * gr / (gr.abs() + 1e-8), atol=1e-6)
    # a freeze: only the parameters left to train reach the optimizer
    opt = make_optimizer(loop, model, [model[3].weight, model[3].bias], lr=0.01)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(model[3].weight), id(model[3].bias)}


def test_gradient_clipping_bounds_the_step(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    model = torch.nn.Linear(4, 3)
    w0 = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    m = torch.nn.Linear(4, 3)
    m.load_state_dict(model.state_dict())
    F.cross_entropy(m(x), y).backward()
    g = torch.cat([p.grad.flatten() for p in m.parameters()])
    assert g.norm() > 1e-3
    loop = LoopSettings(batch_size=8, momentum=0.9, weight_decay=0.0, clip_grad=1e-3, quiet=True)
    model, _, _ = fit(make_accelerator(cpu=True), model, TensorDataset(x, y), loop, Schedule(np.array([0.1]), 1),
                      Member(str(tmp_path / "r.pt")))
    w1 = torch.cat([p.detach().flatten() for p in model.parameters()])
    # the first SGD step is lr times the gradient rescaled to norm clip_grad
    assert torch.allclose(w1, w0 - 0.1 * g * (1e-3 / g.norm()), atol=1e-7)


def test_an_odd_batch_mixes_all_but_its_last_sample():
    torch.manual_seed(2)
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 1])
    mix, _ = make_criterion(LoopSettings(batch_size=5, mixup=0.8, label_smoothing=0.1), 4)
    np.random.seed(0)
    xm, t = mix(x.clone(), y)
    head, xf = x[:4], x[:4].flip(0)  # timm pairs within the first 4
    lam = ((xm[:4] - xf) / (head - xf)).flatten()[0].item()
    assert torch.allclose(xm[:4], lam * head + (1 - lam) * xf, atol=1e-5)
    assert torch.allclose(t[:4], lam * _smoothed(y[:4], 4, 0.1) + (1 - lam) * _smoothed(y[:4].flip(0), 4, 0.1))
    assert torch.equal(xm[4], x[4]) and torch.allclose(t[4:], _smoothed(y[4:], 4, 0.1))
    xm, t = mix(x[:1].clone(), y[:1])  # a batch of one: nothing to pair with
    assert torch.equal(xm, x[:1]) and torch.allclose(t, _smoothed(y[:1], 4, 0.1))
