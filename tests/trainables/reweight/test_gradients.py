"""Each gradient mode against central finite differences of its own objective (float64)."""

from __future__ import annotations

import pytest
import torch

from trainables.reweight import GRAD_MODES, ot_loss, sinkhorn

EPS = 0.1
CONVERGED = dict(max_iter=20000, tol=1e-13, check_every=5)
UNROLLED = dict(max_iter=25)  # the objective of "unrolled" is the truncated loop itself


def _problem(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(n, m, generator=g, dtype=torch.float64) * 2
    theta = torch.randn(n, generator=g, dtype=torch.float64)
    b = torch.softmax(0.3 * torch.randn(m, generator=g, dtype=torch.float64), 0)
    return cost, theta, b


def _objective(mode, cost, theta, b):
    """The function each mode claims to differentiate, evaluated without autograd."""
    a = torch.softmax(theta, 0)
    if mode == "unrolled":
        res = sinkhorn(cost, a, b, eps=EPS, **UNROLLED)
        return (res.plan * cost).sum()
    res = sinkhorn(cost, a, b, eps=EPS, **CONVERGED)
    value = (res.plan * cost).sum()
    if mode == "envelope":  # <C, T> - eps H(T), H(T) = -sum T log T
        value = value + EPS * (res.plan * res.plan.log()).sum()
    return value


def _fd(fn, x, h=1e-6):
    out = torch.zeros_like(x)
    flat = out.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        flat[i] = (fn(x + e) - fn(x - e)) / (2 * h)
    return out


@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize("n,m", [(7, 5), (4, 9)])
def test_gradient_matches_finite_differences(mode, n, m):
    cost, theta, b = _problem(n, m, seed=n * 10 + m)
    kw = UNROLLED if mode == "unrolled" else CONVERGED
    th = theta.clone().requires_grad_(True)
    c = cost.clone().requires_grad_(True)
    bb = b.clone().requires_grad_(True)
    value = ot_loss(c, torch.softmax(th, 0), bb, eps=EPS, grad=mode, **kw)
    torch.testing.assert_close(value, _objective(mode, cost, theta, b), atol=1e-10, rtol=1e-9)
    value.backward()
    fd_theta = _fd(lambda t: _objective(mode, cost, t, b), theta)
    fd_cost = _fd(lambda cc: _objective(mode, cc, theta, b), cost)
    torch.testing.assert_close(th.grad, fd_theta, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(c.grad, fd_cost, atol=1e-7, rtol=1e-5)
    # b lives on the simplex too: compare along a softmax parametrisation of it.
    phi = torch.log(b)
    fd_phi = _fd(lambda p: _objective(mode, cost, theta, torch.softmax(p, 0)), phi)
    torch.testing.assert_close(b * (bb.grad - (b * bb.grad).sum()), fd_phi, atol=1e-7, rtol=1e-5)


def test_unrolled_converges_to_implicit_and_envelope_is_different():
    cost, theta, b = _problem(8, 6, 3)
    grads = {}
    for mode, kw in [
        ("unrolled", dict(max_iter=3000)),
        ("implicit", CONVERGED),
        ("envelope", CONVERGED),
    ]:
        th = theta.clone().requires_grad_(True)
        ot_loss(cost, torch.softmax(th, 0), b, eps=EPS, grad=mode, **kw).backward()
        grads[mode] = th.grad
    torch.testing.assert_close(grads["unrolled"], grads["implicit"], atol=1e-9, rtol=1e-6)
    # The sharp gradient of <C, T*> is not the dual potential (baselines-and-ot-notes, Sec. 3).
    assert (grads["envelope"] - grads["implicit"]).norm() > 0.05 * grads["implicit"].norm()


def test_implicit_batched_equals_looped_and_keeps_no_iteration_graph():
    costs, thetas, bs = zip(*[_problem(6, 4, s) for s in range(3)], strict=False)
    cost = torch.stack(costs)
    theta = torch.stack(thetas).requires_grad_(True)
    b = torch.stack(bs)
    value = ot_loss(cost, torch.softmax(theta, -1), b, eps=EPS, grad="implicit", **CONVERGED)
    assert value.shape == (3,)
    assert type(value.grad_fn).__name__.startswith("_ImplicitOT")
    (value * torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)).sum().backward()
    for i, scale in enumerate([1.0, 2.0, -1.0]):
        th = thetas[i].clone().requires_grad_(True)
        v = ot_loss(costs[i], torch.softmax(th, 0), bs[i], eps=EPS, grad="implicit", **CONVERGED)
        (scale * v).backward()
        torch.testing.assert_close(theta.grad[i], th.grad, atol=1e-10, rtol=1e-8)


def test_float32_gradients_close_to_float64():
    cost, theta, b = _problem(16, 10, 11)
    out = {}
    for dt in (torch.float32, torch.float64):
        th = theta.to(dt).requires_grad_(True)
        ot_loss(
            cost.to(dt),
            torch.softmax(th, 0),
            b.to(dt),
            eps=EPS,
            grad="implicit",
            max_iter=2000,
            tol=1e-6,
        ).backward()
        out[dt] = th.grad.double()
    torch.testing.assert_close(out[torch.float32], out[torch.float64], atol=1e-5, rtol=1e-3)


def test_unknown_grad_mode_raises():
    cost, theta, b = _problem(3, 3, 0)
    with pytest.raises(ValueError, match="grad must be one of"):
        ot_loss(cost, torch.softmax(theta, 0), b, eps=EPS, max_iter=5, grad="magic")


def _zero_mass_problem(seed, eps):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(12, 7, generator=g, dtype=torch.float64) * 3
    a = torch.rand(12, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    return cost, a, b / b.sum()


def _grad_a(cost, a, b, eps, mode, impl="auto"):
    x = a.clone().requires_grad_(True)
    v = ot_loss(cost, x, b, eps=eps, grad=mode, impl=impl, max_iter=20000, tol=1e-14)
    (g,) = torch.autograd.grad(v, x)
    return v.detach(), g - g[1:].mean()  # on the simplex: defined up to a constant


@pytest.mark.parametrize("eps", [1.0, 0.1, 0.03])
@pytest.mark.parametrize("seed", [0, 1])
def test_implicit_gives_a_zero_mass_sample_the_limit_of_its_gradient(seed, eps):
    """A weight of exactly zero: every entry of the implicit gradient (the zero one included)
    is the limit as that weight goes to 0, i.e. the converged unrolled gradient at 1e-9."""
    cost, a, b = _zero_mass_problem(seed, eps)
    zero, tiny = a.clone(), a.clone()
    zero[0], tiny[0] = 0.0, 1e-9
    _, got = _grad_a(cost, zero / zero.sum(), b, eps, "implicit")
    _, near = _grad_a(cost, tiny / tiny.sum(), b, eps, "unrolled", impl="reference")
    assert torch.isfinite(got).all()
    assert torch.allclose(got, near, atol=1e-7, rtol=0)


def test_envelope_value_with_a_zero_mass_sample_is_finite_and_continuous():
    """T log T is 0 on a row of zero mass (not 0 * -inf); the gradient there is undefined
    (the entropy's slope at 0 is infinite) and stays on that entry alone."""
    cost, a, b = _zero_mass_problem(0, 0.1)
    zero, tiny = a.clone(), a.clone()
    zero[0], tiny[0] = 0.0, 1e-12
    v0, g0 = _grad_a(cost, zero / zero.sum(), b, 0.1, "envelope")
    v1, _ = _grad_a(cost, tiny / tiny.sum(), b, 0.1, "envelope")
    assert torch.isfinite(v0) and abs(float(v0 - v1)) < 1e-9
    assert torch.isfinite(g0[1:]).all() and g0[0] == -torch.inf
    _, g1 = _grad_a(cost, tiny / tiny.sum(), b, 0.1, "envelope")
    assert torch.allclose(g0[1:], g1[1:], atol=1e-6, rtol=0)  # the others: as at 1e-12


def test_implicit_refuses_a_singular_system_in_one_line():
    """eps 1e-3 against costs up to 10: the plan is nearly a deterministic map and the adjoint
    system singular in float64; one line naming the remedy instead of torch's LinAlgError."""
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(16, 10, generator=g, dtype=torch.float64) * 10
    a = torch.softmax(torch.randn(16, generator=g, dtype=torch.float64), 0).requires_grad_(True)
    b = torch.full((10,), 0.1, dtype=torch.float64)
    v = ot_loss(cost, a, b, eps=1e-3, max_iter=2000, tol=1e-12, grad="implicit")
    with pytest.raises(FloatingPointError, match=r"^grad='implicit': the adjoint system is singul"):
        v.backward()
