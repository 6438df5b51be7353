from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from trainables.reweight import sinkhorn

from ._tolerance import assert_close_normwise, float32_tolerance


def _problem(n, m, seed, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(n, m, generator=g, dtype=dtype) * scale
    a = torch.softmax(torch.randn(n, generator=g, dtype=dtype), 0)
    b = torch.softmax(0.5 * torch.randn(m, generator=g, dtype=dtype), 0)
    return cost, a, b


@pytest.mark.parametrize("n,m,eps,seed", [(16, 10, 0.1, 0), (7, 23, 0.05, 1), (32, 32, 0.5, 2)])
def test_plan_and_potentials_match_pot(n, m, eps, seed):
    cost, a, b = _problem(n, m, seed)
    res = sinkhorn(cost, a, b, eps=eps, max_iter=20000, tol=1e-12, check_every=5)
    plan, log = ot.bregman.sinkhorn_log(
        a.numpy(), b.numpy(), cost.numpy(), eps, numItermax=200000, stopThr=1e-15, log=True
    )
    np.testing.assert_allclose(res.plan.numpy(), plan, atol=1e-10, rtol=1e-7)
    # Potentials are unique up to (f + t, g - t); compare centred versions.
    f_pot = eps * log["log_u"]
    g_pot = eps * log["log_v"]
    f, g = res.f.numpy(), res.g.numpy()
    np.testing.assert_allclose(f - f.mean(), f_pot - f_pot.mean(), atol=1e-8)
    np.testing.assert_allclose(g - g.mean(), g_pot - g_pot.mean(), atol=1e-8)
    np.testing.assert_allclose((f.mean() + g.mean()), f_pot.mean() + g_pot.mean(), atol=1e-8)


def test_marginals_met_to_tolerance_with_sparse_checks():
    cost, a, b = _problem(20, 12, 3)
    res = sinkhorn(cost, a, b, eps=0.05, max_iter=5000, tol=1e-7, check_every=7)
    assert res.n_iter < 5000 and res.n_iter % 7 == 0
    assert (res.plan.sum(1) - a).abs().sum() < 1e-12  # sample side exact after each iteration
    assert (res.plan.sum(0) - b).abs().sum() < 1e-7
    assert float(res.marginal_error) < 1e-7
    # One check earlier it had not converged yet (otherwise it would have stopped there).
    early = sinkhorn(cost, a, b, eps=0.05, max_iter=res.n_iter - 7)
    assert (early.plan.sum(0) - b).abs().sum() >= 1e-7


def test_fixed_iterations_without_tol():
    cost, a, b = _problem(5, 4, 4)
    assert sinkhorn(cost, a, b, eps=0.1, max_iter=13).n_iter == 13


def test_float32_stays_float32_and_mixed_dtypes_raise():
    cost, a, b = _problem(8, 5, 5, dtype=torch.float32)
    res = sinkhorn(cost, a, b, eps=0.1, max_iter=50)
    assert res.plan.dtype == res.f.dtype == res.g.dtype == torch.float32
    with pytest.raises(TypeError, match="one dtype"):
        sinkhorn(cost, a.double(), b, eps=0.1, max_iter=5)


def test_batched_equals_looped():
    probs = [_problem(9, 6, s, dtype=torch.float32) for s in range(4)]
    cost = torch.stack([p[0] for p in probs])
    a = torch.stack([p[1] for p in probs])
    b = torch.stack([p[2] for p in probs])
    res = sinkhorn(cost, a, b, eps=0.1, max_iter=100)
    assert res.plan.shape == (4, 9, 6) and res.f.shape == (4, 9) and res.g.shape == (4, 6)
    assert res.marginal_error.shape == (4,)
    # float32 after 100 iterations: batched and looped (different reduction orders) each
    # within the rounding bound derived from the problem (_tolerance.py) of the problem's own
    # solve in float64, rather than a fixed rtol between the two float32 runs
    tol = float32_tolerance(100, 0.1, cost)
    for i, (c, ai, bi) in enumerate(probs):
        one = sinkhorn(c, ai, bi, eps=0.1, max_iter=100)
        exact = sinkhorn(c.double(), ai.double(), bi.double(), eps=0.1, max_iter=100)
        for name in ("plan", "f", "g"):
            want = getattr(exact, name)
            assert_close_normwise(getattr(res, name)[i], want, tol, msg=f"batched {name}")
            assert_close_normwise(getattr(one, name), want, tol, msg=f"looped {name}")


def test_small_eps_float32_is_stable_and_near_exact_ot():
    cost, a, b = _problem(16, 10, 6, dtype=torch.float32)
    res = sinkhorn(cost, a, b, eps=1e-3, max_iter=3000, tol=1e-4, check_every=50)
    assert torch.isfinite(res.plan).all() and torch.isfinite(res.f).all()
    assert float(res.marginal_error) < 1e-3
    exact = ot.emd2(a.double().numpy(), b.double().numpy(), cost.double().numpy())
    value = float((res.plan * cost).sum())
    # Entropic bias at eps=1e-3 is tiny compared to costs in [0, 2].
    assert abs(value - exact) < 5e-3


def test_released_stop_rule_semantics():
    # The released code's setting: 10 prototypes (uniform) x 16 samples, costs in [0, 0.6].
    g = torch.Generator().manual_seed(7)
    cost = (torch.rand(16, 10, generator=g) * 0.6).double()
    a = torch.softmax(torch.randn(16, generator=g), 0).double()
    b = torch.full((10,), 0.1, dtype=torch.float64)
    res = sinkhorn(
        cost, a, b, eps=0.1, max_iter=200, tol=0.1, stop="potential_change", check_every=1
    )
    assert 2 <= res.n_iter <= 8

    def change(n):  # sum_j |g^(n) - g^(n-1)|, from two fixed-iteration runs
        return float(
            (
                sinkhorn(cost, a, b, eps=0.1, max_iter=n).g
                - sinkhorn(cost, a, b, eps=0.1, max_iter=n - 1).g
            )
            .abs()
            .sum()
        )

    assert change(res.n_iter) < 0.1 <= change(res.n_iter - 1)


def test_warm_start_converges_faster():
    cost, a, b = _problem(16, 10, 8)
    cold = sinkhorn(cost, a, b, eps=0.05, max_iter=5000, tol=1e-9, check_every=1)
    b2 = torch.softmax(torch.log(b) + 0.01, 0)  # a nearby problem
    warm = sinkhorn(
        cost, a, b2, eps=0.05, max_iter=5000, tol=1e-9, check_every=1, init=(cold.f, cold.g)
    )
    cold2 = sinkhorn(cost, a, b2, eps=0.05, max_iter=5000, tol=1e-9, check_every=1)
    assert warm.n_iter < cold2.n_iter
    torch.testing.assert_close(warm.plan, cold2.plan, atol=1e-8, rtol=1e-6)


def test_bad_inputs_raise():
    cost, a, b = _problem(4, 3, 9)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(cost, a, b, eps=0.0, max_iter=5)
    with pytest.raises(ValueError, match="a must have shape"):
        sinkhorn(cost, a[:3], b, eps=0.1, max_iter=5)
    with pytest.raises(ValueError, match="stop"):
        sinkhorn(cost, a, b, eps=0.1, max_iter=5, tol=1e-3, stop="nope")
