"""The fused fixed-iteration OT path against the log-domain reference under autograd: equal
values and gradients (to rounding), its own gradient against finite differences, and the
automatic choice falling back to the reference where the scaling domain is unsafe."""

from __future__ import annotations

import pytest
import torch

from trainables.reweight import fused as fused_mod
from trainables.reweight import ot_loss
from trainables.reweight.fused import fused_applicable, fused_dtype, fused_unrolled_ot

from ._tolerance import assert_close_normwise, float32_tolerance


def _problem(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(*shape, generator=g, dtype=dtype).requires_grad_()
    a = torch.softmax(torch.randn(shape[:-1], generator=g, dtype=dtype), -1).requires_grad_()
    b = torch.softmax(torch.randn(shape[:-2] + shape[-1:], generator=g, dtype=dtype), -1)
    return c, a, b.requires_grad_()


def _value_and_grads(fn, c, a, b):
    v = fn(c, a, b)
    return (v, *torch.autograd.grad(v.sum(), (c, a, b)))


def _reference64(c, a, b, eps, iters):
    """The reference loop in float64 on the same (possibly float32-rounded) inputs: the exact
    iterates a float32 run is compared with (float64 rounding is ~1e-13 here)."""
    c, a, b = (x.detach().double().requires_grad_() for x in (c, a, b))
    fn = lambda c, a, b: ot_loss(c, a, b, eps=eps, max_iter=iters, impl="reference")  # noqa: E731
    return tuple(x.detach() for x in _value_and_grads(fn, c, a, b))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(16, 10), (16, 100), (3, 7, 5)])
@pytest.mark.parametrize("eps, iters", [(0.1, 200), (0.05, 37)])
@pytest.mark.parametrize("backend", ["numba", "numpy", "torch"])
def test_fused_equals_the_unrolled_reference(dtype, shape, eps, iters, backend):
    c, a, b = _problem(shape, dtype)
    got = _value_and_grads(
        lambda c, a, b: fused_unrolled_ot(c, a, b, eps=eps, n_iter=iters, backend=backend), c, a, b
    )
    assert all(x.dtype == dtype for x in got)
    ref = _reference64(c, a, b, eps, iters)
    if dtype == torch.float64:  # the exact check: equal up to float64 rounding
        for x, y in zip(got, ref, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10 * float(y.abs().max()))
    else:
        # float32 against the float64 iterates, within the rounding bound derived from the
        # problem (iterations, max|C| / eps: see _tolerance.py), not a fixed rtol: 5e-5 at
        # 200 iterations of eps 0.1, 1.4e-5 at 37 of eps 0.05
        tol = float32_tolerance(iters, eps, c)
        for name, x, y in zip(("value", "dC", "da", "db"), got, ref, strict=True):
            assert_close_normwise(x, y, tol, msg=name)


@pytest.mark.parametrize("shape", [(16, 10), (16, 100), (3, 7, 5)])
@pytest.mark.parametrize("eps, iters", [(0.1, 200), (0.05, 37)])
def test_the_float32_tolerance_still_catches_a_planted_error(shape, eps, iters):
    """The derived float32 bound is no blanket: a value or gradient off by a relative 1e-4
    fails the check that the float32 result itself passes, also where the planted error
    works against the rounding error (only the largest entry moved, the other way)."""
    c, a, b = _problem(shape, torch.float32)
    got = _value_and_grads(
        lambda c, a, b: fused_unrolled_ot(c, a, b, eps=eps, n_iter=iters, backend="numpy"), c, a, b
    )
    ref = _reference64(c, a, b, eps, iters)
    tol = float32_tolerance(iters, eps, c)
    assert tol < 1e-4
    for name, x, y in zip(("value", "dC", "da", "db"), got, ref, strict=True):
        x, y = x.detach().reshape(-1), y.reshape(-1)
        assert_close_normwise(x, y, tol, msg=name)
        with pytest.raises(AssertionError):
            assert_close_normwise(x * (1 + 1e-4), y, tol)
        i = int(y.abs().argmax())
        against = -1.0 if float(x[i]) >= float(y[i]) else 1.0  # opposite to the rounding
        planted = x.clone()
        planted[i] += against * 1e-4 * float(y.abs().max())
        with pytest.raises(AssertionError):
            assert_close_normwise(planted, y, tol)


@pytest.mark.parametrize("backend", ["numba", "numpy", "torch"])
def test_fused_gradient_against_finite_differences(backend):
    c, a, b = _problem((4, 3), torch.float64, seed=2)
    fn = lambda c, a, b: fused_unrolled_ot(c, a, b, eps=0.2, n_iter=15, backend=backend)  # noqa: E731
    _, gc, ga, gb = _value_and_grads(fn, c, a, b)
    h = 1e-6
    for which, (tensor, grad) in enumerate(((c, gc), (a, ga), (b, gb))):
        for i in range(tensor.numel()):
            args = [c.detach().clone(), a.detach().clone(), b.detach().clone()]
            plus, minus = args[which].reshape(-1).clone(), args[which].reshape(-1).clone()
            plus[i] += h
            minus[i] -= h
            ap, am = list(args), list(args)
            ap[which] = plus.view_as(tensor)
            am[which] = minus.view_as(tensor)
            fd = (fn(*ap) - fn(*am)) / (2 * h)
            assert float(grad.reshape(-1)[i]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_auto_uses_fused_only_where_exact(monkeypatch):
    calls = []
    real = fused_mod.fused_unrolled_ot
    monkeypatch.setattr(
        fused_mod, "fused_unrolled_ot", lambda *a, **k: calls.append(k["stop"]) or real(*a, **k)
    )
    c, a, b = _problem((8, 6), torch.float32)
    ot_loss(c, a, b, eps=0.1, max_iter=20)
    assert calls == [None]
    ot_loss(c, a, b, eps=0.1, max_iter=20, tol=1e-3)  # early stopping: the same rule, fused
    assert calls == [None, ("marginal", 1e-3, 10)]
    warm = (torch.zeros(8), torch.zeros(6))
    ot_loss(c, a, b, eps=0.1, max_iter=20, init=warm)  # a warm start: the reference loop
    assert len(calls) == 2
    big = (c.detach() * 100).requires_grad_()  # C / eps = 1000: exp underflows in float32
    assert not fused_applicable(big, 0.1)
    out = ot_loss(big, a, b, eps=0.1, max_iter=20)
    assert len(calls) == 2 and torch.isfinite(out)
    torch.testing.assert_close(out, ot_loss(big, a, b, eps=0.1, max_iter=20, impl="reference"))
    with pytest.raises(ValueError, match="needs init=None"):
        ot_loss(c, a, b, eps=0.1, max_iter=20, init=warm, impl="fused")
    with pytest.raises(ValueError, match="stop must be one of"):
        ot_loss(c, a, b, eps=0.1, max_iter=20, tol=0.1, stop="sometimes")
    # asked for by name: a float32 problem beyond float32's range runs fused in float64 (as
    # under auto); beyond float64's it is refused in one line instead of returning NaN
    mid = c.detach() * 10  # C / eps up to 100
    torch.testing.assert_close(
        ot_loss(mid, a, b, eps=0.1, max_iter=20, impl="fused"),
        ot_loss(mid, a, b, eps=0.1, max_iter=20, impl="reference"),
    )
    with pytest.raises(ValueError, match=r"^impl='fused' runs in the scaling domain, which max"):
        ot_loss(big.detach(), a, b, eps=0.1, max_iter=20, impl="fused")


@pytest.mark.parametrize("backend", ["numba", "numpy", "torch"])
@pytest.mark.parametrize(
    "shape, stop, tol, check_every",
    [
        ((16, 10), "potential_change", 0.1, 1),  # the released code's rule
        ((16, 10), "potential_change", 1e-3, 3),
        ((12, 7), "marginal", 1e-4, 10),
        ((3, 9, 5), "marginal", 1e-3, 4),  # batched: the worst problem decides
        ((3, 9, 5), "potential_change", 0.05, 1),  # batched: the batch mean decides
    ],
)
def test_fused_early_stopping_equals_the_reference(backend, shape, stop, tol, check_every):
    from trainables.reweight import sinkhorn

    c, a, b = _problem(shape, torch.float64, seed=3)
    rule = (stop, tol, check_every)
    if backend == "numba" and len(shape) > 2:  # it runs each problem alone: no batch statistic
        with pytest.raises(ValueError, match="stops a single problem"):
            fused_unrolled_ot(c, a, b, eps=0.1, n_iter=500, backend=backend, stop=rule)
        return
    kw = dict(eps=0.1, max_iter=500, tol=tol, stop=stop, check_every=check_every)
    n_ref = sinkhorn(c.detach(), a.detach(), b.detach(), **kw).n_iter
    assert 1 <= n_ref < 500 and n_ref % check_every == 0  # it did stop early, at a check
    ref = _value_and_grads(lambda c, a, b: ot_loss(c, a, b, impl="reference", **kw), c, a, b)
    got = _value_and_grads(
        lambda c, a, b: fused_unrolled_ot(c, a, b, eps=0.1, n_iter=500, backend=backend, stop=rule),
        c,
        a,
        b,
    )
    for x, y in zip(got, ref, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9 * float(y.detach().abs().max()))
    # ... and it is the truncated loop: n_ref fixed iterations give the same, n_ref + 1 not
    fixed = fused_unrolled_ot(c, a, b, eps=0.1, n_iter=n_ref, backend=backend)
    torch.testing.assert_close(fixed, got[0], rtol=1e-12, atol=0)
    longer = fused_unrolled_ot(c, a, b, eps=0.1, n_iter=n_ref + 1, backend=backend)
    assert float((longer - got[0]).detach().abs().max()) > 0


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


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_the_cpu_backends_keep_autograds_in_place_check(backend):
    c, a, b = _problem((5, 4), torch.float32)
    v = fused_unrolled_ot(c, a, b, eps=0.1, n_iter=10, backend=backend)
    with torch.no_grad():
        a.mul_(2)  # changes the NumPy view the forward read
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        v.backward()
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_unrolled_ot(c, a, b, eps=0.1, n_iter=10, backend="cupy")


@pytest.mark.parametrize(
    "stop, tol, check_every",
    [("marginal", None, 10), ("marginal", 1e-4, 5), ("potential_change", 1e-3, 1)],
)
def test_a_problem_beyond_float64s_range_runs_the_compiled_log_loop(monkeypatch, stop, tol,
                                                                    check_every):  # fmt: skip
    """C / eps up to 2000: past float64's scaling range. One CPU problem runs the compiled
    log-domain loop (not the loop under autograd) and gets its value and gradients; a batch
    of problems still runs the reference loop."""
    import importlib

    sinkhorn_mod = importlib.import_module("trainables.reweight.sinkhorn")
    c, a, b = _problem((9, 6), torch.float64, seed=4)
    c = (2 * c.detach() / c.detach().max()).requires_grad_()
    assert fused_dtype(c, 0.001) is None
    kw = dict(eps=0.001, max_iter=300, tol=tol, stop=stop, check_every=check_every)
    ref = _value_and_grads(lambda c, a, b: ot_loss(c, a, b, impl="reference", **kw), c, a, b)
    calls = []
    real = sinkhorn_mod.sinkhorn
    monkeypatch.setattr(sinkhorn_mod, "sinkhorn", lambda *x, **k: calls.append(1) or real(*x, **k))
    got = _value_and_grads(lambda c, a, b: ot_loss(c, a, b, **kw), c, a, b)
    assert not calls
    for x, y in zip(got, ref, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9 * float(y.detach().abs().max()))
    batch = (x.detach().expand(2, *x.shape).clone() for x in (c, a, b))
    ot_loss(*batch, **kw)
    assert calls == [1]
