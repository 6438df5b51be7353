"""P problems with P solver settings in one call: member m equals ``ot_loss`` on its problem
with its own lambda, cap and tolerance (value and gradients, every path), the frozen members
really stop where their own loop stops, and the hand-written log-domain reverse pass agrees
with finite differences."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from trainables.reweight import ot_loss
from trainables.reweight.batched import batched_ot_loss

# lambda, cap, tolerance per member: eps 0.004 puts max C / eps beyond float64's scaling range
# (the log-domain path); the tolerances stop members at different checks.
EPS = [0.1, 0.05, 0.5, 0.004, 1.0, 0.02]
CAPS = [30, 7, 50, 40, 3, 25]
TOLS = [None, 1e-3, 1e-2, 1e-4, None, 1e-3]


def _problems(dtype=torch.float64, p=6, n=7, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    cost = (2 * torch.rand(p, n, m, generator=g, dtype=dtype)).requires_grad_()
    a = torch.softmax(torch.randn(p, n, generator=g, dtype=dtype), 1).requires_grad_()
    b = torch.softmax(torch.randn(p, m, generator=g, dtype=dtype), 1).requires_grad_()
    return cost, a, b


@pytest.mark.parametrize("impl", ["auto", "fused", "reference"])
@pytest.mark.parametrize("stop", ["marginal", "potential_change"])
def test_each_member_is_its_own_ot_loss(impl, stop):
    cost, a, b = _problems()
    eps, caps, tols = (EPS, CAPS, TOLS) if impl != "fused" else (EPS[:3], CAPS[:3], TOLS[:3])
    p = len(eps)
    cost, a, b = cost[:p], a[:p], b[:p]
    v = batched_ot_loss(
        cost, a, b, eps=eps, max_iter=caps, tol=tols, stop=stop, check_every=2, impl=impl
    )
    scale = torch.arange(1, p + 1, dtype=v.dtype)  # a different upstream gradient per member
    gc, ga, gb = torch.autograd.grad((v * scale).sum(), (cost, a, b))
    for m in range(p):
        one = ot_loss(
            cost[m], a[m], b[m], eps=eps[m], max_iter=caps[m], tol=tols[m], stop=stop,
            check_every=2, impl="reference" if impl == "reference" else "auto",
        )  # fmt: skip
        g1 = torch.autograd.grad(one * (m + 1), (cost, a, b))
        torch.testing.assert_close(v[m], one, rtol=1e-12, atol=1e-14)
        for got, want in ((gc[m], g1[0][m]), (ga[m], g1[1][m]), (gb[m], g1[2][m])):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("stop", ["marginal", "potential_change"])
def test_the_torch_namespace_of_the_fused_path_equals_numpy(stop):
    """What runs off the CPU (the fused path's torch namespace) against the NumPy one, on the
    CPU: members stopping at different iterations, so several compactions happen."""
    from trainables.reweight.batched import _BatchedFused

    cost, a, b = _problems()
    eps = torch.tensor([0.1, 0.05, 0.5, 0.2, 1.0, 0.02], dtype=torch.float64)
    caps = torch.tensor(CAPS).numpy()
    tols = torch.tensor([float("-inf") if t is None else t for t in TOLS]).numpy()
    scale = torch.arange(1, 7, dtype=torch.float64)
    out = {}
    for backend in ("numpy", "torch"):
        v = _BatchedFused.apply(cost, a, b, eps, caps, tols, stop, 2, backend)
        out[backend] = (v, *torch.autograd.grad((v * scale).sum(), (cost, a, b)))
    for got, want in zip(out["torch"], out["numpy"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # and each member is its own ot_loss
    for m in range(6):
        one = ot_loss(
            cost[m], a[m], b[m], eps=float(eps[m]), max_iter=int(caps[m]), tol=TOLS[m],
            stop=stop, check_every=2,
        )  # fmt: skip
        torch.testing.assert_close(out["torch"][0][m], one, rtol=1e-12, atol=1e-14)


def test_frozen_members_stop_where_their_own_loop_stops():
    """With a tolerance a member's value is its early-stopped solve, not the capped one: the
    member with tol 1e-2 differs from the same problem run to its cap."""
    cost, a, b = _problems()
    v = batched_ot_loss(cost, a, b, eps=EPS, max_iter=CAPS, tol=TOLS, check_every=2).detach()
    capped = ot_loss(cost[2], a[2], b[2], eps=EPS[2], max_iter=CAPS[2]).detach()
    early = ot_loss(cost[2], a[2], b[2], eps=EPS[2], max_iter=CAPS[2], tol=1e-2, check_every=2)
    assert abs(float(capped - early.detach())) > 1e-8  # the tolerance matters here
    torch.testing.assert_close(v[2], early.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("stop", ["marginal", "potential_change"])
def test_log_domain_reverse_pass_against_finite_differences(backend, stop):
    """Both hand-written log-domain reverse passes: the compiled loop (each member its own)
    and NumPy's shared loop with freezing."""
    cost, a, b = _problems(p=3, n=5, m=3, seed=2)
    eps, caps, tols = [0.003, 0.005, 0.004], [9, 4, 12], [None, None, 1e-3]

    def f(c, x, y):
        return batched_ot_loss(
            c, x, y, eps=eps, max_iter=caps, tol=tols, check_every=3, impl="reference",
            stop=stop, backend=backend,
        )  # fmt: skip

    assert torch.autograd.gradcheck(f, (cost, a, b), eps=1e-7, atol=1e-6, rtol=1e-5)


def test_float32_members_beyond_float32_range_are_solved_in_float64(monkeypatch):
    """max C / eps = 2 / 0.02 = 100: past float32's scaling range (30), inside float64's."""
    cost, a, b = (t.detach().float().requires_grad_() for t in _problems(p=2))
    v = batched_ot_loss(cost, a, b, eps=[0.02, 0.5], max_iter=[30, 30], tol=[None, None])
    assert v.dtype == torch.float32
    exact = [
        ot_loss(cost[m].double(), a[m].double(), b[m].double(), eps=e, max_iter=30)
        for m, e in enumerate([0.02, 0.5])
    ]
    for m in range(2):
        assert abs(float(v[m].detach()) - float(exact[m].detach())) < 1e-6
    # ot_loss takes the same route for one float32 problem: fused in float64, not the log loop
    sinkhorn_mod = importlib.import_module("trainables.reweight.sinkhorn")
    calls = []
    real = sinkhorn_mod.sinkhorn
    monkeypatch.setattr(sinkhorn_mod, "sinkhorn", lambda *x, **k: calls.append(1) or real(*x, **k))
    single = ot_loss(cost[0], a[0], b[0], eps=0.02, max_iter=30)
    assert not calls and single.dtype == torch.float32
    assert abs(float(single.detach()) - float(exact[0].detach())) < 1e-6


def test_bad_arguments_are_refused():
    cost, a, b = _problems(p=2)
    with pytest.raises(ValueError, match="one entry per problem"):
        batched_ot_loss(cost, a, b, eps=[0.1], max_iter=[5, 5], tol=[None, None])
    with pytest.raises(ValueError, match="every eps must be > 0"):
        batched_ot_loss(cost, a, b, eps=[0.1, 0.0], max_iter=[5, 5], tol=[None, None])
    with pytest.raises(ValueError, match="cost must be"):
        batched_ot_loss(cost[0], a[0], b[0], eps=[0.1], max_iter=[5], tol=[None])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("stop", ["marginal", "potential_change"])
def test_compiled_members_are_bit_for_bit_their_single_problem(dtype, stop):
    """On the CPU each member runs its own compiled loop (the scaling domain, in float64 where
    float32's range ends, or the log domain): what it gets in a population is exactly (not up
    to rounding) what ``ot_loss`` gives its problem alone, in float32 too; and it agrees with
    the shared NumPy loops with freezing up to rounding."""
    from trainables.reweight.fused import fused_dtype

    cost, a, b = _problems(dtype)
    eps, caps, tols = EPS, CAPS, TOLS
    p = len(eps)
    # float32 member 6 (eps 0.02, C up to 2) lies beyond float32's range: run in float64;
    # member 4 (eps 0.004) beyond float64's: the log domain
    assert fused_dtype(cost[5], eps[5]) == (torch.float64 if dtype == torch.float32 else dtype)
    assert fused_dtype(cost[3], eps[3]) is None
    scale = torch.arange(1, p + 1, dtype=dtype)
    out = {}
    for backend in ("numba", "numpy"):
        kw = dict(eps=eps, max_iter=caps, tol=tols, stop=stop, check_every=2, backend=backend)
        v = batched_ot_loss(cost, a, b, **kw)
        out[backend] = (v, *torch.autograd.grad((v * scale).sum(), (cost, a, b)))
    for m in range(p):
        one = ot_loss(
            cost[m], a[m], b[m], eps=eps[m], max_iter=caps[m], tol=tols[m], stop=stop,
            check_every=2,
        )  # fmt: skip
        g1 = torch.autograd.grad(one * (m + 1), (cost, a, b))
        assert torch.equal(out["numba"][0][m], one)
        for got, want in zip(out["numba"][1:], g1, strict=True):
            assert torch.equal(got[m], want[m])
    if dtype == torch.float64:
        for got, want in zip(out["numba"], out["numpy"], strict=True):
            torch.testing.assert_close(
                got, want, rtol=1e-10, atol=1e-10 * float(want.detach().abs().max())
            )
    else:  # against the same problems in float64 (the truth float32 rounds)
        c64, a64, b64 = (x.detach().double().requires_grad_() for x in (cost, a, b))
        kw = dict(eps=eps, max_iter=caps, tol=tols, stop=stop, check_every=2)
        v64 = batched_ot_loss(c64, a64, b64, **kw)
        truth = (v64, *torch.autograd.grad((v64 * scale.double()).sum(), (c64, a64, b64)))
        # largest seen, relative to a member's largest entry: 2e-5 on the scaling domain,
        # 4.8e-4 on the log-domain member's gradient (the NumPy loop's: 1.7e-3)
        for m in range(p):
            rtol = 1e-3 if m == 3 else 1e-4
            for got, want in zip(out["numba"], truth, strict=True):
                scale_m = float(want[m].detach().abs().max())
                assert (
                    float((got[m].detach().double() - want[m].detach()).abs().max())
                    <= rtol * scale_m
                ), m
    with pytest.raises(ValueError, match="backend must be"):
        batched_ot_loss(cost, a, b, eps=eps, max_iter=caps, tol=tols, backend="triton")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("stop", "every"), [("marginal", 3), ("potential_change", 1)])
def test_members_sharing_vector_lanes_are_bit_for_bit_their_single_problem(dtype, stop, every):
    """A population's scaling-domain members share SIMD lanes (``compiled.LANES_FROM`` of them
    or more; one problem alone runs the one-problem loop): more members than lanes, so lanes
    take new problems as theirs stop, at caps from 1 to 60 and at their own tolerances, some
    ending on the same tick; every member's value and gradients exactly its problem's alone."""
    from trainables.reweight import compiled, lanes

    p = 3 * lanes.width(torch.empty((), dtype=dtype).numpy().dtype) + 1
    cost, a, b = _problems(dtype, p=p, n=16, m=10, seed=3)
    g = torch.Generator().manual_seed(4)
    eps = (0.3 + 0.7 * torch.rand(p, generator=g, dtype=torch.float64)).tolist()
    caps = [1, 60, 2, 60, *torch.randint(1, 61, (p - 4,), generator=g).tolist()]
    tols = [[None, 1e-2, 1e-3, 1e-5][i % 4] for i in range(p)]
    assert p >= compiled.LANES_FROM
    kw = dict(eps=eps, max_iter=caps, tol=tols, stop=stop, check_every=every)
    v = batched_ot_loss(cost, a, b, **kw)
    scale = torch.linspace(0.5, 2.0, p, dtype=dtype)
    grads = torch.autograd.grad((v * scale).sum(), (cost, a, b))
    stopped_early = 0
    for m in range(p):
        one = ot_loss(
            cost[m], a[m], b[m], eps=eps[m], max_iter=caps[m], tol=tols[m], stop=stop,
            check_every=every,
        )  # fmt: skip
        g1 = torch.autograd.grad(one * scale[m], (cost, a, b))
        assert torch.equal(v[m], one), m
        for got, want in zip(grads, g1, strict=True):
            assert torch.equal(got[m], want[m]), m
        full = ot_loss(cost[m], a[m], b[m], eps=eps[m], max_iter=caps[m], tol=None)
        stopped_early += not torch.equal(one, full)
    assert stopped_early >= p // 4  # the tolerances really stop members early


def test_lane_states_are_reused_only_once_their_reverse_pass_cannot_run():
    """The lanes' tick states go back to a pool when the graph that holds them is freed: two
    graphs alive at once keep their own states (the second call's problems differ), and a
    graph kept for a second backward gives the same gradients twice."""
    from trainables.reweight import lanes

    kw = dict(eps=[0.5] * 9, max_iter=[40, 30, 20, 10, 5, 40, 30, 20, 10], tol=[None] * 9)
    first = _problems(p=9, n=16, m=10, seed=5)
    second = _problems(p=9, n=16, m=10, seed=6)
    v1 = batched_ot_loss(*first, **kw)
    v2 = batched_ot_loss(*second, **kw)
    g1 = torch.autograd.grad(v1.sum(), first, retain_graph=True)
    v3 = batched_ot_loss(*second, **kw)  # may take states freed by nothing yet: v1's are held
    again = torch.autograd.grad(v1.sum(), first)
    assert all(torch.equal(x, y) for x, y in zip(g1, again, strict=True))
    g2, g3 = (torch.autograd.grad(v.sum(), second) for v in (v2, v3))
    assert all(torch.equal(x, y) for x, y in zip(g2, g3, strict=True))
    for (cost, a, b), grads in ((first, g1), (second, g2)):
        for m in range(9):
            one = ot_loss(cost[m], a[m], b[m], eps=0.5, max_iter=kw["max_iter"][m])
            for got, want in zip(grads, torch.autograd.grad(one, (cost, a, b)), strict=True):
                assert torch.equal(got[m], want[m])
    del v1, v2, v3
    key = (np.dtype(np.float64).str, 16, 10)
    assert [k for k, _ in lanes._RETURNED].count(key) >= 3  # freed states wait for reuse
    lanes._take(key, 1, 16, 10, 4, np.float64)  # which moves them to the pool
    assert len(lanes._POOL[key]) >= 2
    lanes._give(key, (np.empty(lanes._POOL_MAX_BYTES // 8 + 1),))  # too large to keep
    assert not lanes._RETURNED


def test_a_zero_weight_gives_a_non_finite_member_not_an_exception():
    """A zero weight (an underflowed softmax) on the log-domain path: log 0 = -inf, and the
    reverse pass divides by it. The compiled loops follow IEEE arithmetic as NumPy does (no
    ZeroDivisionError): that member's gradient is not finite, so it diverges and leaves its
    population, and the other members get exactly what they get without it."""
    cost, a, b = (x.detach() for x in _problems(p=3))
    a = a.clone()
    a[1, 2] = 0.0
    a = a / a.sum(1, keepdim=True)
    cost, a, b = (x.requires_grad_() for x in (cost, a, b))
    kw = dict(eps=[0.1, 0.004, 0.05], max_iter=[20, 20, 20], tol=[None, None, None])
    v = batched_ot_loss(cost, a, b, **kw)
    grads = torch.autograd.grad(v.sum(), (cost, a, b))
    assert not torch.isfinite(grads[1][1]).all()
    for m in (0, 2):
        one = ot_loss(cost[m], a[m], b[m], eps=kw["eps"][m], max_iter=20)
        g1 = torch.autograd.grad(one, (cost, a, b))
        assert torch.equal(v[m], one)
        assert all(torch.equal(g[m], h[m]) for g, h in zip(grads, g1, strict=True))
