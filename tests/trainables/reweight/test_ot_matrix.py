"""The equivalence matrix of ``ot_loss``'s implementations: the compiled CPU loop on each of
its paths against the log-domain reference (values and the three gradients), one problem and
stacks with per-problem settings, fixed iterations and both stopping rules, float64 and
float32; the reference against POT's log-domain Sinkhorn; the edges (a weight of exactly zero,
eps 1e-3 against costs up to 10) and what each implementation refuses. The Triton kernels'
rows of the matrix run in Triton's interpreter (``test_triton_ot.py``); the implicit and
envelope gradients are the reference's alone (``test_gradients.py``: finite differences)."""

from __future__ import annotations

import numpy as np
import ot as pot
import pytest
import torch

from trainables.reweight import ot as ot_mod
from trainables.reweight import ot_loss

from ._tolerance import assert_close_normwise, float32_log_tolerance, float32_tolerance


def _problem(shape, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    c = (torch.rand(*shape, generator=g, dtype=dtype) * scale).requires_grad_()
    a = torch.softmax(torch.randn(shape[:-1], generator=g, dtype=dtype), -1).requires_grad_()
    b = torch.softmax(torch.randn(shape[:-2] + shape[-1:], generator=g, dtype=dtype), -1)
    return c, a, b.requires_grad_()


def _value_and_grads(c, a, b, **kw):
    """The value and the gradients in cost, a and b, under a different upstream gradient
    per problem of a stack (so a problem's rows cannot borrow another's)."""
    v = ot_loss(c, a, b, **kw)
    w = torch.arange(1, v.numel() + 1, dtype=v.dtype).reshape(v.shape)
    return (v.detach(), *torch.autograd.grad((v * w).sum(), (c, a, b)))


def _in64(c, a, b):
    return [x.detach().double().requires_grad_() for x in (c, a, b)]


def _settings(shape, eps, iters, stop):
    """One setting for a single problem; for a stack, each problem its own eps and cap."""
    kw = dict(eps=eps, max_iter=iters)
    if len(shape) == 3:
        p = shape[0]
        kw = dict(eps=[eps * (1 + k / 2) for k in range(p)], max_iter=[iters - k for k in range(p)])
    if stop is not None:
        kw.update(stop=stop[0], tol=stop[1], check_every=stop[2])
    return kw


SHAPES = [(16, 10), (1, 3), (3, 7, 5), (64, 80), (2, 64, 96)]  # the last two: BLAS's products
STOPS = [None, ("marginal", 1e-4, 5), ("potential_change", 1e-3, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps, iters", [(0.1, 200), (0.05, 37)])
@pytest.mark.parametrize("stop", STOPS)
def test_compiled_equals_the_reference_in_float64(shape, eps, iters, stop):
    c, a, b = _problem(shape, torch.float64)
    kw = _settings(shape, eps, iters, stop)
    got = _value_and_grads(c, a, b, impl="compiled", **kw)
    ref = _value_and_grads(c, a, b, impl="reference", **kw)
    for name, x, y in zip(("value", "dC", "da", "db"), got, ref, strict=True):
        assert x.shape == y.shape and x.dtype == torch.float64, name
        assert_close_normwise(x, y, 1e-10, msg=name)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps, iters", [(0.1, 200), (0.05, 37)])
def test_compiled_float32_is_within_rounding_of_the_float64_iterates(shape, eps, iters):
    c, a, b = _problem(shape, torch.float32)
    kw = _settings(shape, eps, iters, None)
    got = _value_and_grads(c, a, b, impl="compiled", **kw)
    assert all(x.dtype == torch.float32 for x in got)
    ref = _value_and_grads(*_in64(c, a, b), impl="reference", **kw)
    # the rounding bound derived from the problem (iterations, max|C| / eps: _tolerance.py)
    tol = float32_tolerance(iters, min(np.ravel(kw["eps"])), c)
    for name, x, y in zip(("value", "dC", "da", "db"), got, ref, strict=True):
        assert_close_normwise(x, y, tol, msg=name)


# (dtype, cost scale, eps): max|C| / eps about 10, 100 and 2,000, i.e. the scaling domain in
# the problem's dtype, in float64 for float32 (past its range of 30), and the log domain
PATHS = [
    (torch.float32, 1.0, 0.1, "SCALING"),
    (torch.float32, 10.0, 0.1, "SCALING64"),
    (torch.float32, 2.0, 0.001, "LOG"),
    (torch.float64, 1.0, 0.1, "SCALING"),
    (torch.float64, 2.0, 0.001, "LOG"),
]


@pytest.mark.parametrize("dtype, scale, eps, path", PATHS)
@pytest.mark.parametrize("stop", STOPS)
def test_each_compiled_path_against_the_reference(monkeypatch, dtype, scale, eps, path, stop):
    """Each path the compiled loop takes by max|C| / eps: the path it was sent down, and the
    reference's value and gradients (float64: 1e-9; float32: within the derived rounding bound
    of the float64 iterates, or of the float32 reference where a stopping rule may end float32
    and float64 at different checks)."""
    from trainables.reweight import compiled

    seen = []
    real = ot_mod.compiled_ot
    monkeypatch.setattr(
        ot_mod, "compiled_ot", lambda *x, path, **k: seen.append(path) or real(*x, path=path, **k)
    )
    c, a, b = _problem((9, 6), dtype, seed=4, scale=scale)
    kw = dict(eps=eps, max_iter=300)
    if stop is not None:
        kw.update(stop=stop[0], tol=stop[1], check_every=stop[2])
    got = _value_and_grads(c, a, b, **kw)
    assert seen and list(seen[0]) == [getattr(compiled, path)]
    bound = float32_log_tolerance if path == "LOG" else float32_tolerance
    if dtype == torch.float64:
        ref = _value_and_grads(c, a, b, impl="reference", **kw)
        tol = 1e-9
    elif stop is None:
        ref = _value_and_grads(*_in64(c, a, b), impl="reference", **kw)
        tol = bound(300, eps, c)
    else:  # float32 may stop at another check than float64: the float32 reference's stop
        ref = _value_and_grads(c, a, b, impl="reference", **kw)
        tol = 2 * bound(300, eps, c)
    for name, x, y in zip(("value", "dC", "da", "db"), got, ref, strict=True):
        assert torch.isfinite(x).all(), name
        assert_close_normwise(x, y, tol, msg=f"{path} {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stop", STOPS)
def test_a_stack_gives_each_problem_bit_for_bit_what_it_gets_alone(dtype, stop):
    """A population's call: problems of different eps (across all three paths), caps and
    tolerances in one stack, each exactly its own problem's result alone."""
    p = 6
    c, a, b = _problem((p, 16, 10), dtype, seed=5, scale=2.0)
    eps = [0.1, 0.05, 0.02, 0.002, 0.2, 0.08]
    caps = [20, 50, 7, 30, 40, 300]
    tol = None if stop is None else [stop[1], None, stop[1] / 10, 1e-2, None, stop[1]]
    rest = {} if stop is None else dict(stop=stop[0], check_every=stop[2])
    got = _value_and_grads(c, a, b, eps=eps, max_iter=caps, tol=tol, **rest)
    for i in range(p):
        one = [x.detach()[i].clone().requires_grad_() for x in (c, a, b)]
        t = None if tol is None else tol[i]
        v = ot_loss(*one, eps=eps[i], max_iter=caps[i], tol=t, **rest)
        alone = (v.detach(), *torch.autograd.grad(v * (i + 1), one))
        for name, x, y in zip(("value", "dC", "da", "db"), got, alone, strict=True):
            assert torch.equal(x[i], y), (i, name)


@pytest.mark.parametrize("shape", [(1, 3), (16, 10), (64, 365)])
@pytest.mark.parametrize("eps", [1.0, 0.1, 0.01])
def test_the_reference_against_pots_log_domain_sinkhorn(shape, eps):
    """Converged, the reference's value and its gradient in the weights are POT's (POT's own
    loop: another update order and stopping rule, under autograd)."""
    c, a, b = _problem(shape, torch.float64, seed=6, scale=2.0)
    c = c.detach()
    v = ot_loss(c, a, b, eps=eps, max_iter=200000, tol=1e-13, check_every=10, impl="reference")
    (ga,) = torch.autograd.grad(v, a)
    x = a.detach().clone().requires_grad_()
    w = pot.sinkhorn2(x, b.detach(), c, eps, method="sinkhorn_log", numItermax=200000,
                      stopThr=1e-14)  # fmt: skip
    (gx,) = torch.autograd.grad(w, x)
    assert abs(float(v.detach()) - float(w.detach())) < 1e-11
    assert_close_normwise(ga - ga.mean(), gx - gx.mean(), 1e-7)


ZERO_EDGES = [(1.0, 1.0), (0.1, 1.0), (1e-3, 1.0), (1.0, 10.0), (0.1, 10.0), (1e-3, 10.0)]


def _scaling_loop_grad_a(c, a, b, eps, iters):
    """The gradient in ``a`` of ``iters`` Sinkhorn iterations in the scaling domain, a plain
    loop under autograd: what the truncated loop's derivative is at a zero mass, where the
    log domain has none (``u = a / (K v)`` is linear in ``a``)."""
    x = a.detach().clone().requires_grad_()
    k = torch.exp(-c.detach() / eps)
    u = torch.ones_like(x)
    for _ in range(iters):
        v = b.detach() / (k.T @ u)
        u = x / (k @ v)
    (g,) = torch.autograd.grad((c.detach() * (u[:, None] * k * v[None, :])).sum(), x)
    return g


@pytest.mark.parametrize("eps, scale", ZERO_EDGES)
@pytest.mark.parametrize("shape", [(2, 3), (16, 10), (64, 365)])  # B1 has no zero weight
def test_a_zero_weight_gives_finite_values_and_gradients_everywhere_else(eps, scale, shape):
    """A weight of exactly zero (an underflowed softmax): every implementation's value is
    finite and the reference's; every other entry's gradient finite and the reference's. The
    zero entry's own unrolled gradient: in the scaling domain that of a plain scaling loop
    under autograd, where that loop determines it; undefined (NaN) in the log domain, as in
    the reference, and never spread to the others. At B2 K3, eps 0.1, costs up to 10 float64
    does not determine it: the plain loop gives 6.4e11, 3.2e11 or -1.2e12 by the order of its sums
    (and which, by the machine's BLAS), where a mass of 1e-13 gives 1.19; there it is only
    finite."""
    c, a, b = _problem(shape, torch.float64, seed=7, scale=scale)
    a = a.detach().clone()
    a[0] = 0.0
    a = (a / a.sum()).requires_grad_()
    kw = dict(eps=eps, max_iter=100)
    ref = _value_and_grads(c, a, b, impl="reference", **kw)
    got = _value_and_grads(c, a, b, impl="compiled", **kw)
    for name, x, y in zip(("value", "dC", "da", "db"), got, ref, strict=True):
        x, y = (x[1:], y[1:]) if name == "da" else (x, y)
        assert torch.isfinite(x).all() and torch.isfinite(y).all(), name
        assert_close_normwise(x, y, 1e-9, msg=name)
    if float(c.detach().abs().max()) / eps <= ot_mod.SCALING_LIMIT[torch.float64]:
        assert torch.isfinite(got[2][0])
        plain = float(_scaling_loop_grad_a(c, a, b, eps, 100)[0])
        flip = torch.arange(shape[-1] - 1, -1, -1)  # the same loop, its sums in another order
        again = float(_scaling_loop_grad_a(c[..., flip], a, b[flip], eps, 100)[0])
        determined = abs(plain - again) <= 1e-9 * abs(plain)
        assert determined or (eps, scale) == (0.1, 10.0)  # the milder edges always are
        if determined:
            assert abs(float(got[2][0]) - plain) <= 1e-9 * abs(plain)
    else:
        assert torch.isnan(got[2][0]) and torch.isnan(ref[2][0])


def test_bad_arguments_are_refused_in_one_line():
    c, a, b = _problem((3, 4, 5), torch.float64)
    cases = [
        (dict(eps=[0.1, 0.1]), ValueError, r"^eps must be one value or one per problem \(3,\)"),
        (dict(eps=[0.1, 0.0, 0.1]), ValueError, r"^eps must be > 0, got \[0.1, 0.0, 0.1\]"),
        (dict(eps=0.1, max_iter=[5, 0, 5]), ValueError, r"^max_iter must be whole numbers >= 1"),
        (dict(eps=0.1, max_iter=2.5), ValueError, r"^max_iter must be whole numbers >= 1, got"),
        (dict(eps=0.1, tol=0.1, stop="sometimes"), ValueError, "^stop must be one of"),
        (dict(eps=0.1, impl="fast"), ValueError, "^impl must be one of"),
        (dict(eps=0.1, grad="implicit", impl="compiled"), ValueError,
         "^impl='compiled' computes the unrolled gradient; grad='implicit' runs the reference"),
    ]  # fmt: skip
    for kw, err, match in cases:
        kw = {"max_iter": 5, **kw}
        with pytest.raises(err, match=match):
            ot_loss(c, a, b, **kw)
    with pytest.raises(ValueError, match=r"^cost must be \[N, M\] or \[P, N, M\]"):
        ot_loss(c[None], a[None], b[None], eps=0.1, max_iter=5)
    with pytest.raises(ValueError, match=r"^impl='compiled' takes float32 or float64 CPU"):
        ot_loss(*(x.detach().half() for x in (c, a, b)), eps=0.1, max_iter=5, impl="compiled")
    half = ot_loss(*(x.detach().bfloat16() for x in (c, a, b)), eps=0.1, max_iter=5)
    assert half.dtype == torch.bfloat16  # auto: the reference takes any dtype


def test_the_compiled_path_keeps_autograds_in_place_check():
    c, a, b = _problem((5, 4), torch.float32)
    v = ot_loss(c, a, b, eps=0.1, max_iter=10, impl="compiled")
    with torch.no_grad():
        a.mul_(2)  # changes the memory the forward read
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        v.backward()


@pytest.mark.parametrize("shape", [(16, 10), (3, 7, 5)])
@pytest.mark.parametrize("eps, iters", [(0.1, 200), (0.05, 37)])
def test_the_float32_tolerance_still_catches_a_planted_error(shape, eps, iters):
    """The derived float32 bound is no blanket: a value or gradient off by a relative 1e-4
    fails the check that the float32 result itself passes, also where the planted error
    works against the rounding error (only the largest entry moved, the other way)."""
    c, a, b = _problem(shape, torch.float32)
    got = _value_and_grads(c, a, b, eps=eps, max_iter=iters, impl="compiled")
    ref = _value_and_grads(*_in64(c, a, b), eps=eps, max_iter=iters, impl="reference")
    tol = float32_tolerance(iters, eps, c)
    assert tol < 1e-4
    for name, x, y in zip(("value", "dC", "da", "db"), got, ref, strict=True):
        x, y = x.reshape(-1), y.reshape(-1)
        assert_close_normwise(x, y, tol, msg=name)
        with pytest.raises(AssertionError):
            assert_close_normwise(x * (1 + 1e-4), y, tol)
        i = int(y.abs().argmax())
        against = -1.0 if float(x[i]) >= float(y[i]) else 1.0  # opposite to the rounding
        planted = x.clone()
        planted[i] += against * 1e-4 * float(y.abs().max())
        with pytest.raises(AssertionError):
            assert_close_normwise(planted, y, tol)


def test_a_stopped_loop_is_the_truncated_loop():
    """With a tol each implementation runs exactly the reference's iterations: its result is
    that of as many fixed iterations, and one more differs."""
    from trainables.reweight import sinkhorn

    c, a, b = _problem((12, 7), torch.float64, seed=3)
    kw = dict(eps=0.1, tol=1e-4, stop="marginal", check_every=10)
    n_ref = sinkhorn(c.detach(), a.detach(), b.detach(), max_iter=500, **kw).n_iter
    assert 1 <= n_ref < 500 and n_ref % 10 == 0
    stopped = ot_loss(c, a, b, max_iter=500, impl="compiled", **kw)
    fixed = ot_loss(c, a, b, eps=0.1, max_iter=n_ref, impl="compiled")
    longer = ot_loss(c, a, b, eps=0.1, max_iter=n_ref + 1, impl="compiled")
    assert torch.equal(stopped, fixed) and not torch.equal(longer, fixed)


def test_the_stage2_config_chooses_the_implementation():
    from search_spaces import resolve
    from trainables.config import apply_overrides
    from trainables.loop import step_config
    from trainables.reweight import StepConfig

    cfg = apply_overrides(resolve("image_mnist_lt"), ["stage2.impl=reference"])
    assert step_config(cfg.stage2, 10).impl == "reference"
    assert step_config(resolve("image_mnist_lt").stage2, 10).impl == "auto"
    with pytest.raises(ValueError, match="impl must be one of"):
        StepConfig(impl="fast")
