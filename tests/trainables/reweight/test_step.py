"""One Algorithm-1 iteration on a tiny model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trainables.reweight import (
    StepConfig,
    WeightNet,
    WeightVector,
    class_prototypes,
    combined_cost,
    ot_loss,
    reweight_step,
)

K = 3


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.classifier = nn.Linear(5, K)


def _data(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=dtype)
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    idx = torch.tensor([7, 2, 0, 9, 4, 5])
    meta_x = torch.randn(6, 4, generator=g, dtype=dtype)
    meta_y = torch.tensor([0, 0, 1, 1, 2, 2])
    return x, y, idx, meta_x, meta_y


def _build_q(z, y):
    return class_prototypes(z, y, K)


def _setup(dtype=torch.float32, lr_w=0.5, **wkw):
    torch.manual_seed(0)
    model = Tiny().to(dtype)
    wv = WeightVector(10, **wkw).to(dtype)
    model_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w_opt = torch.optim.SGD(wv.parameters(), lr=lr_w)
    return model, wv, model_opt, w_opt


def _counting(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_iteration_moves_w_and_model_with_virtual_step():
    x, y, idx, mx, my = _data()
    model, wv, mopt, wopt = _setup()
    before_w = wv.logits.detach().clone()
    before_m = copy.deepcopy(model.state_dict())
    res = reweight_step(
        model,
        x,
        y,
        idx,
        wv,
        mopt,
        wopt,
        StepConfig(max_iter=50, virtual_lr=0.1),
        num_classes=K,
        meta_x=mx,
        meta_y=my,
        build_q=_build_q,
    )
    assert res.virtual_step
    moved = (wv.logits.detach() - before_w).abs()
    assert (moved[idx] > 0).all()
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[idx] = False
    assert (moved[untouched] == 0).all()
    for name, p in model.state_dict().items():
        assert not torch.equal(p, before_m[name]), name
    torch.testing.assert_close(res.weights, torch.softmax(wv.logits.detach()[idx], 0))
    assert res.weights.sum().item() == pytest.approx(1.0) and res.ot_loss.item() > 0


def test_frozen_features_skip_virtual_step_and_backbone():
    x, y, idx, mx, my = _data()
    model, wv, mopt, wopt = _setup()
    model.features.requires_grad_(False)
    calls = _counting(model.features)
    frozen = copy.deepcopy(model.features.state_dict())
    with torch.no_grad():
        q = _build_q(model.features(mx), my)
    calls.clear()
    res = reweight_step(
        model, x, y, idx, wv, mopt, wopt, StepConfig(max_iter=50), num_classes=K, q=q
    )
    assert not res.virtual_step
    assert len(calls) == 1  # one no-grad feature pass, reused for the cost and the classifier
    for name, p in model.features.state_dict().items():
        assert torch.equal(p, frozen[name])
    assert (wv.logits.detach()[idx] != 0).any()


def test_label_cost_skips_virtual_step_even_with_trainable_features():
    x, y, idx, mx, my = _data()
    model, wv, mopt, wopt = _setup()
    calls = _counting(model.features)
    res = reweight_step(
        model,
        x,
        y,
        idx,
        wv,
        mopt,
        wopt,
        StepConfig(cost="label", max_iter=50),
        num_classes=K,
        meta_x=mx,
        meta_y=my,
        build_q=_build_q,
    )
    assert not res.virtual_step
    assert len(calls) == 2  # Q from the meta set, then the model step; no virtual forwards


def _bilevel_objective(model, logits_b, x, y, mx, my, alpha, eps, iters):
    """L_OT(theta_hat_1(w), w) of Algorithm 1 step (b), written out independently."""
    f1, f2 = model.features, model.classifier
    w = torch.softmax(logits_b, 0)
    params = dict(f1.named_parameters())
    ce = F.cross_entropy(f2(f1(x)), y, reduction="none")
    grads = torch.autograd.grad((w * ce).sum(), list(params.values()), create_graph=True)
    hat = {n: p - alpha * g for (n, p), g in zip(params.items(), grads, strict=False)}
    z = functional_call(f1, hat, (x,))
    q = class_prototypes(functional_call(f1, hat, (mx,)), my, K)
    cost = combined_cost(z, y, q.z, q.y, K)
    return ot_loss(cost, w, q.b, eps=eps, max_iter=iters)


def test_virtual_step_gradient_matches_finite_differences():
    x, y, idx, mx, my = _data(torch.float64)
    lr_w, alpha = 1e-3, 0.5
    model, wv, mopt, wopt = _setup(torch.float64, lr_w=lr_w)
    with torch.no_grad():
        wv.logits.copy_(torch.linspace(-1, 1, 10, dtype=torch.float64))
    start = wv.logits.detach()[idx].clone()
    ref = copy.deepcopy(model)
    cfg = StepConfig(max_iter=30, virtual_lr=alpha)
    reweight_step(
        model, x, y, idx, wv, mopt, wopt, cfg, num_classes=K, meta_x=mx, meta_y=my, build_q=_build_q
    )
    grad_step = (start - wv.logits.detach()[idx]) / lr_w
    h = 1e-6
    fd = torch.zeros_like(start)
    for i in range(start.numel()):
        e = torch.zeros_like(start)
        e[i] = h
        fd[i] = (
            _bilevel_objective(ref, start + e, x, y, mx, my, alpha, 0.1, 30)
            - _bilevel_objective(ref, start - e, x, y, mx, my, alpha, 0.1, 30)
        ) / (2 * h)
    torch.testing.assert_close(grad_step, fd, atol=1e-6, rtol=1e-4)
    # ... and the second-order path matters: without step (a) the gradient is different.
    model2, wv2, mopt2, wopt2 = _setup(torch.float64, lr_w=lr_w)
    with torch.no_grad():
        wv2.logits.copy_(torch.linspace(-1, 1, 10, dtype=torch.float64))
    reweight_step(
        model2,
        x,
        y,
        idx,
        wv2,
        mopt2,
        wopt2,
        StepConfig(max_iter=30, virtual_lr=alpha, virtual_step=False),
        num_classes=K,
        meta_x=mx,
        meta_y=my,
        build_q=_build_q,
    )
    grad_plain = (start - wv2.logits.detach()[idx]) / lr_w
    assert (grad_plain - fd).abs().max() > 10 * (grad_step - fd).abs().max()


def test_raw_weights_and_meta_ce_form_the_released_loss():
    x, y, idx, mx, my = _data()
    model, wv, mopt, wopt = _setup(
        init="class_balanced", labels=torch.tensor([0, 1, 0, 2, 1, 2, 0, 0, 1, 1]), num_classes=K
    )
    model.features.requires_grad_(False)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        q = _build_q(model.features(mx), my)
    cfg = StepConfig(max_iter=50, loss_weights="raw", meta_ce_coef=10.0, weight_decay=5e-4)
    res = reweight_step(
        model, x, y, idx, wv, mopt, wopt, cfg, num_classes=K, meta_x=mx, meta_y=my, q=q
    )
    raw = wv.logits.detach()[idx]
    torch.testing.assert_close(res.weights, raw)
    with torch.no_grad():
        ce = F.cross_entropy(ref.classifier(ref.features(x)), y, reduction="none")
        meta = F.cross_entropy(ref.classifier(ref.features(mx)), my)
    torch.testing.assert_close(res.loss, (raw * ce).sum() + 10.0 * meta)


def test_weight_decay_touches_only_the_batch():
    x, y, idx, mx, my = _data()
    model, wv, mopt, wopt = _setup()
    with torch.no_grad():
        wv.logits.fill_(1.0)
    model.features.requires_grad_(False)
    with torch.no_grad():
        q = _build_q(model.features(mx), my)
    reweight_step(
        model,
        x,
        y,
        idx,
        wv,
        mopt,
        wopt,
        StepConfig(cost="label", max_iter=50, weight_decay=0.1),
        num_classes=K,
        q=q,
    )
    others = torch.tensor([1, 3, 6, 8])
    assert torch.all(wv.logits.detach()[others] == 1.0)


def test_scratch_mode_restarts_from_initial_logits():
    x, y, idx, mx, my = _data()
    outs = []
    for mode, disturb in (("scratch", True), ("maintained", False)):
        model, wv, mopt, wopt = _setup(mode=mode)
        model.features.requires_grad_(False)
        if disturb:
            with torch.no_grad():
                wv.logits.add_(3.0)
        with torch.no_grad():
            q = _build_q(model.features(mx), my)
        reweight_step(model, x, y, idx, wv, mopt, wopt, StepConfig(max_iter=50), num_classes=K, q=q)
        outs.append(wv.logits.detach()[idx])
    torch.testing.assert_close(outs[0], outs[1])


def test_weight_net_learns_from_the_ot_loss_alone():
    x, y, idx, mx, my = _data()
    torch.manual_seed(1)
    model = Tiny()
    model.features.requires_grad_(False)
    net = WeightNet(5, hidden=7)
    lr = 0.3
    mopt = torch.optim.SGD(model.parameters(), lr=0.1)
    wopt = torch.optim.SGD(net.parameters(), lr=lr)
    with torch.no_grad():
        z = model.features(x)
        q = _build_q(model.features(mx), my)
    ref = copy.deepcopy(net)
    ot = ot_loss(combined_cost(z, y, q.z, q.y, K), ref(z), q.b, eps=0.1, max_iter=50)
    expect = torch.autograd.grad(ot, list(ref.parameters()))
    res = reweight_step(
        model, x, y, idx, net, mopt, wopt, StepConfig(max_iter=50), num_classes=K, q=q
    )
    for p0, p1, g in zip(ref.parameters(), net.parameters(), expect, strict=False):
        torch.testing.assert_close((p0 - p1) / lr, g, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(res.weights, net(z).detach())
    with pytest.raises(ValueError, match="raw"):
        reweight_step(
            model, x, y, idx, net, mopt, wopt, StepConfig(loss_weights="raw"), num_classes=K, q=q
        )
