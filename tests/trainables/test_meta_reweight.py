"""L2RW and Meta-Weight-Net: L2RW's weights against the closed form of a linear softmax model,
the weight net moved only by the meta loss, second-order gradients against finite differences,
and both running as stage-1 methods."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from search_spaces import resolve
from trainables.config import apply_overrides
from trainables.meta_reweight import MetaWeightNet, l2rw_weights, mwn_meta_loss, mwn_step


def _data(seed=0, n=6, m=5, d=4, k=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    mx = torch.randn(m, d, generator=g, dtype=torch.float64)
    my = torch.randint(0, k, (m,), generator=g)
    return x, y, mx, my


def _linear(d=4, k=3, seed=1):
    torch.manual_seed(seed)
    return nn.Linear(d, k, bias=False).double()


def test_l2rw_weights_match_the_closed_form_of_a_linear_model():
    """For logits W x, dl_i/dW = (p_i - e_{y_i}) x_i^T, and the look-ahead gives
    -dL_meta(W - a sum eps_i dl_i/dW)/deps_i at 0 = a <dL_meta/dW, dl_i/dW>."""
    x, y, mx, my = _data()
    model = _linear()
    alpha = 0.3
    got = l2rw_weights(model, x, y, mx, my, lr=alpha)
    w = model.weight.detach().numpy()

    def grad_ce(xs, ys):
        logits = xs @ w.T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(ys)), ys] -= 1.0
        return np.einsum("nk,nd->nkd", p, xs)  # per-example dl/dW

    g_meta = grad_ce(mx.numpy(), my.numpy()).mean(0)
    raw = alpha * np.einsum("kd,nkd->n", g_meta, grad_ce(x.numpy(), y.numpy()))
    want = np.clip(raw, 0, None)
    want = want / want.sum()
    assert (raw < 0).any() and (raw > 0).any()  # the clipping matters in this case
    # a float64 model gets float64 weights: the perturbation is built in the model's dtype
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-15)
    assert got.sum().item() == pytest.approx(1.0)


def test_mwn_step_moves_the_net_by_the_meta_gradient_only():
    x, y, mx, my = _data(seed=3)
    model = _linear()
    before_model = copy.deepcopy(model.state_dict())
    torch.manual_seed(0)
    vnet = MetaWeightNet(8).double()
    phi0 = [p.detach().clone() for p in vnet.parameters()]
    # the expected update: -lr * dL_meta(theta_hat(Phi))/dPhi, computed on its own
    want = torch.autograd.grad(
        mwn_meta_loss(model, vnet, x, y, mx, my, lr=0.5), list(vnet.parameters())
    )
    opt = torch.optim.SGD(vnet.parameters(), lr=0.1)
    w = mwn_step(model, vnet, opt, x, y, mx, my, lr=0.5)
    for p, p0, g in zip(vnet.parameters(), phi0, want, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g)
    assert any(float(g.abs().max()) > 0 for g in want)
    # the model is untouched (its own step comes after, with these weights)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_model[k])
    assert w.shape == (6,) and w.sum().item() == pytest.approx(1.0) and (w > 0).all()
    with torch.no_grad():  # the weights are the updated net's
        ref = vnet(nn.functional.cross_entropy(model(x), y, reduction="none"))
    torch.testing.assert_close(w, ref / ref.sum())


def test_mwn_net_does_not_move_when_the_look_ahead_is_zero():
    """With a zero virtual step theta_hat = theta: the meta loss does not depend on Phi, so the
    net must not move (nothing else reaches it)."""
    x, y, mx, my = _data(seed=4)
    model = _linear()
    vnet = MetaWeightNet(8).double()
    phi0 = [p.detach().clone() for p in vnet.parameters()]
    mwn_step(model, vnet, torch.optim.SGD(vnet.parameters(), lr=1.0), x, y, mx, my, lr=0.0)
    for p, p0 in zip(vnet.parameters(), phi0, strict=True):
        assert torch.equal(p.detach(), p0)


def test_second_order_meta_gradient_against_finite_differences():
    x, y, mx, my = _data(seed=5)
    model = _linear()
    torch.manual_seed(2)
    vnet = MetaWeightNet(3).double()
    params = list(vnet.parameters())
    grads = torch.autograd.grad(mwn_meta_loss(model, vnet, x, y, mx, my, lr=0.7), params)
    h = 1e-6
    for p, g in zip(params, grads, strict=True):
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + h
            up = mwn_meta_loss(model, vnet, x, y, mx, my, lr=0.7).item()
            flat[i] = old - h
            down = mwn_meta_loss(model, vnet, x, y, mx, my, lr=0.7).item()
            flat[i] = old
            assert g.view(-1)[i].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("method", ["l2rw", "mwn", "metasaug", "metasaug_ldam"])
def test_stage1_with_meta_reweighting_runs_and_is_seeded(method):
    from trainables.trial import build_stage1

    extra = ["stage1.metasaug_loss=ldam"] if method == "metasaug_ldam" else []
    cfg = apply_overrides(
        resolve("image_mnist_lt", smoke=True),
        [
            *extra,
            f"stage1.reweight={method.split('_')[0]}",
            "stage1.epochs=1",
            "stage1.meta_batch=20",
            "stage1.meta_lr=0.1",
        ],
    )
    a = build_stage1(cfg, device=torch.device("cpu"))
    b = build_stage1(cfg, device=torch.device("cpu"))
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k])
    # one epoch of 10 classes learns something: above chance (10)
    assert a.info["summary"]["validation_selected"]["test"]["balanced_acc"] > 15.0
    bad = apply_overrides(cfg, ["stage1.loss=focal"])
    with pytest.raises(ValueError, match=r"stage1\.loss=ce"):
        build_stage1(bad, device=torch.device("cpu"))


# ---------------------------------------------------------------- MetaSAug


def test_isda_logits_match_an_explicit_loop():
    from trainables.meta_reweight import isda_logits

    g = torch.Generator().manual_seed(0)
    k, d = 3, 4
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2)
    logits = torch.randn(5, k, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2, 0])
    got = isda_logits(logits, w, y, cov, lam=0.6)
    for i in range(5):
        for j in range(k):
            dw = w[j] - w[y[i]]
            want = logits[i, j] + 0.3 * dw @ cov[y[i]] @ dw
            assert got[i, j].item() == pytest.approx(want.item())
    assert torch.allclose(got.gather(1, y[:, None]), logits.gather(1, y[:, None]))


def test_class_covariance_matches_numpy():
    from trainables.meta_reweight import ClassCovariance

    g = torch.Generator().manual_seed(1)
    est = ClassCovariance(3, 2)
    zs, ys = [], []
    for _ in range(4):
        z = torch.randn(7, 2, generator=g)
        y = torch.randint(0, 2, (7,), generator=g)  # class 2 never seen
        est.update(z, y)
        zs.append(z)
        ys.append(y)
    z, y = torch.cat(zs).double().numpy(), torch.cat(ys).numpy()
    cov = est.covariance(torch.float64).numpy()
    for c in (0, 1):
        np.testing.assert_allclose(cov[c], np.cov(z[y == c].T, bias=True), atol=1e-12)
    assert np.all(cov[2] == 0)


def _split_linear(d=4, k=3, seed=1):
    from trainables.models import SplitNet

    torch.manual_seed(seed)
    feats = nn.Sequential(nn.Linear(d, 5), nn.Tanh()).double()
    return SplitNet(feats, nn.Linear(5, k).double(), 5)


def test_metasaug_uses_the_earlier_batches_covariance_then_updates_it():
    """The released order: the meta step and the loss use the covariances of the batches seen
    before; this batch's features enter the estimator only after the loss is taken."""
    from trainables.meta_reweight import (
        ClassCovariance,
        isda_logits,
        metasaug_loss,
        metasaug_meta_loss,
    )

    x0, y0, _, _ = _data(seed=5, n=9)  # an earlier batch
    x, y, mx, my = _data(seed=6)
    model = _split_linear()
    before = copy.deepcopy(model.state_dict())
    est = ClassCovariance(3, 5)
    with torch.no_grad():
        est.update(model.features(x0), y0)
    earlier = est.covariance(torch.float64)
    assert float(earlier.abs().max()) > 0
    loss = metasaug_loss(model, est, x, y, mx, my, lr=0.5, lam=0.8, meta_lr=0.1)
    for k, v in model.state_dict().items():  # only the caller's backward moves the model
        assert torch.equal(v, before[k])
    # the loss is the augmented CE under Sigma_earlier - meta_lr * dL_meta/dSigma
    cov = earlier.clone().requires_grad_()
    (g,) = torch.autograd.grad(metasaug_meta_loss(model, x, y, mx, my, cov, lr=0.5, lam=0.8), cov)
    assert float(g.abs().max()) > 0
    moved = (cov - 0.1 * g).detach()
    want = nn.functional.cross_entropy(
        isda_logits(model(x), model.classifier.weight, y, moved, 0.8), y
    )
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    # ... which the covariance including this batch does not give
    both = ClassCovariance(3, 5)
    with torch.no_grad():
        both.update(model.features(torch.cat([x0, x])), torch.cat([y0, y]))
    cov_b = both.covariance(torch.float64).requires_grad_()
    (g_b,) = torch.autograd.grad(
        metasaug_meta_loss(model, x, y, mx, my, cov_b, lr=0.5, lam=0.8), cov_b
    )
    other = nn.functional.cross_entropy(
        isda_logits(model(x), model.classifier.weight, y, (cov_b - 0.1 * g_b).detach(), 0.8), y
    )
    assert abs(other.item() - loss.item()) > 1e-6
    # afterwards the estimator holds both batches
    torch.testing.assert_close(est.covariance(torch.float64), both.covariance(torch.float64))
    assert est.count.tolist() == both.count.tolist()


def test_metasaug_ldam_variant_by_hand():
    """The released CIFAR recipe's loss on the augmented logits: z_j + lam/2 (w_j - w_y)^T
    Sigma_y (w_j - w_y), less the margin m_y on the true class (no scale s), then the
    class-weighted mean CE sum_i c_{y_i} l_i / sum_i c_{y_i}; the same loss in the virtual step."""
    import math

    from trainables.meta_reweight import (
        ClassCovariance,
        augmented_loss,
        metasaug_loss,
        metasaug_meta_loss,
    )

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 3, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 5, generator=g, dtype=torch.float64)
    a = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2) * 0.1
    y = torch.tensor([0, 2, 1, 2])
    margins = torch.tensor([0.1, 0.3, 0.5], dtype=torch.float64)
    cw = torch.tensor([0.2, 1.1, 1.7], dtype=torch.float64)
    lam = 0.6
    num = den = 0.0
    for i in range(4):
        yi = int(y[i])
        row = []
        for j in range(3):
            dw = weight[j] - weight[yi]
            quad = float(dw @ cov[yi] @ dw)
            margin = float(margins[yi]) if j == yi else 0.0
            row.append(float(logits[i, j]) + 0.5 * lam * quad - margin)
        ce = math.log(sum(math.exp(v) for v in row)) - row[yi]
        num += float(cw[yi]) * ce
        den += float(cw[yi])
    got = augmented_loss(logits, weight, y, cov, lam, margins, cw)
    assert got.item() == pytest.approx(num / den, rel=1e-12)
    assert augmented_loss(logits, weight, y, cov, lam).item() != pytest.approx(num / den)

    x, yb, mx, my = _data(seed=8)
    model = _split_linear(seed=2)
    est = ClassCovariance(3, 5)
    with torch.no_grad():
        est.update(model.features(mx), my)
    c0 = est.covariance(torch.float64).requires_grad_()
    kw = {"lr": 0.4, "lam": lam, "margins": margins, "class_weights": cw}
    (grad,) = torch.autograd.grad(metasaug_meta_loss(model, x, yb, mx, my, c0, **kw), c0)
    moved = (c0 - 0.1 * grad).detach()
    want = augmented_loss(model(x), model.classifier.weight, yb, moved, lam, margins, cw)
    got = metasaug_loss(model, est, x, yb, mx, my, meta_lr=0.1, **kw)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


def _vnet_step(optimizer: str):
    from trainables.config import Stage1Config
    from trainables.loop import _vnet_optimizer

    x, y, mx, my = _data(seed=3)
    model = _linear()
    torch.manual_seed(0)
    vnet = MetaWeightNet(8).double()
    phi0 = [p.detach().clone() for p in vnet.parameters()]
    grads = torch.autograd.grad(
        mwn_meta_loss(model, vnet, x, y, mx, my, lr=0.5), list(vnet.parameters())
    )
    cfg = Stage1Config(reweight="mwn", meta_lr=0.1, meta_optimizer=optimizer)
    mwn_step(model, vnet, _vnet_optimizer(vnet, cfg), x, y, mx, my, lr=0.5)
    return phi0, grads, [p.detach() for p in vnet.parameters()]


def test_mwn_optimiser_is_the_2019_codes_nesterov_sgd_by_default():
    # first step of SGD(momentum 0.9, nesterov, wd 5e-4): buf = g', step = g' + 0.9 buf
    phi0, grads, phi1 = _vnet_step("sgd")
    for p0, g, p1 in zip(phi0, grads, phi1, strict=True):
        gw = g + 5e-4 * p0
        torch.testing.assert_close(p1, p0 - 0.1 * 1.9 * gw)
    assert any(float(g.abs().max()) > 0 for g in grads)


def test_mwn_optimiser_adam_is_the_2020_codes():
    # first Adam step (wd 1e-4 as L2): m_hat = g', v_hat = g'^2, step = lr g' / (|g'| + 1e-8)
    phi0, grads, phi1 = _vnet_step("adam")
    for p0, g, p1 in zip(phi0, grads, phi1, strict=True):
        gw = g + 1e-4 * p0
        torch.testing.assert_close(p1, p0 - 0.1 * gw / (gw.abs() + 1e-8))


def test_metasaug_meta_gradient_against_finite_differences():
    from trainables.meta_reweight import metasaug_meta_loss

    x, y, mx, my = _data(seed=7)
    model = _split_linear(seed=3)
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 5, 5, generator=g, dtype=torch.float64) * 0.3
    cov = (a @ a.transpose(1, 2)).requires_grad_()
    (grad,) = torch.autograd.grad(
        metasaug_meta_loss(model, x, y, mx, my, cov, lr=0.9, lam=0.7), cov
    )
    h = 1e-6
    for idx in [(0, 0, 0), (1, 2, 3), (2, 4, 1), (1, 1, 1)]:
        up, down = cov.detach().clone(), cov.detach().clone()
        up[idx] += h
        down[idx] -= h
        fd = (
            metasaug_meta_loss(model, x, y, mx, my, up, lr=0.9, lam=0.7)
            - metasaug_meta_loss(model, x, y, mx, my, down, lr=0.9, lam=0.7)
        ) / (2 * h)
        assert grad[idx].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-10)
