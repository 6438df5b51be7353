"""The scaling-domain Sinkhorn loop and its reverse pass, compiled (numba) for the CPU.

At the sizes stage 2 solves (a batch of 16 against K classes, up to a few hundred iterations)
the NumPy loop of :mod:`.fused` is bound by its calls (about ten per iteration, of a few
microseconds each), not by its arithmetic (a few hundred multiply-adds). Here the whole loop of
one problem is one compiled function: the same iterates (``r = K^T u``, ``v = b / r``,
``s = K v``, ``u = a / s`` from ``u = 1``), the same stopping rules checked at the same
iterations, and the same reverse replay, in the problem's dtype; only the order of the sums
inside a matrix-vector product differs from NumPy's (rounding).

Problems come as a stack ``[P, N, M]``, each with its own ``eps``, iteration cap and tolerance,
and each runs exactly its own iterations (no shared loop, no freezing): a member of a population
(:mod:`.batched`) gets bit for bit what the same problem gets alone through
:func:`.fused.fused_unrolled_ot`. Compiled functions are cached on disk beside this file (numba's
``cache=True``), so a new process loads them instead of compiling.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

__all__ = ["compiled_ot"]


@njit(cache=True, nogil=True)
def _forward(cost, k, a, b, eps, caps, tols, marginal, every, us, vs, ss, rs, n_done, value):
    p, n, m = k.shape
    for q in range(p):
        kq = k[q]
        for i in range(n):
            us[q, 0, i] = 1.0
        done = 0
        for it in range(caps[q]):
            u = us[q, it]
            r = rs[q, it]
            for j in range(m):
                r[j] = 0.0
            for i in range(n):
                ui = u[i]
                for j in range(m):
                    r[j] += kq[i, j] * ui
            v = vs[q, it]
            for j in range(m):
                v[j] = b[q, j] / r[j]
            s = ss[q, it]
            u_new = us[q, it + 1]
            for i in range(n):
                acc = kq[i, 0] * v[0]
                for j in range(1, m):
                    acc += kq[i, j] * v[j]
                s[i] = acc
                u_new[i] = a[q, i] / acc
            done = it + 1
            if done % every == 0:
                err = 0.0
                if marginal:  # L1 error of the Q-side marginal V (K^T U)
                    for j in range(m):
                        col = kq[0, j] * u_new[0]
                        for i in range(1, n):
                            col += kq[i, j] * u_new[i]
                        err += abs(v[j] * col - b[q, j])
                else:  # sum_j |g_j - g_j^prev| with g = eps log V (V = 1 before the first)
                    for j in range(m):
                        before = np.log(vs[q, it - 1, j]) if it > 0 else 0.0
                        err += eps[q] * abs(np.log(v[j]) - before)
                if err < tols[q]:
                    break
        n_done[q] = done
        u = us[q, done]
        total = 0.0
        v = vs[q, done - 1]
        for i in range(n):
            for j in range(m):
                total += cost[q, i, j] * (u[i] * kq[i, j] * v[j])
        value[q] = total


@njit(cache=True, nogil=True)
def _backward(g, cost, k, eps, us, vs, ss, rs, n_done, grad_cost, a_bar, b_bar):
    p, n, m = k.shape
    u_bar = np.empty(n, dtype=us.dtype)
    vt0 = np.empty(m, dtype=vs.dtype)
    w = np.empty(n, dtype=us.dtype)
    z = np.empty(m, dtype=vs.dtype)
    k_bar = np.empty((n, m), dtype=k.dtype)
    for q in range(p):
        kq, cq, gq = k[q], cost[q], g[q]
        last = n_done[q]
        u_last, v_last = us[q, last], vs[q, last - 1]
        # the plan T = diag(u) K diag(v) and <C, T>: the direct terms
        for i in range(n):
            u_bar[i] = 0.0
        for j in range(m):
            vt0[j] = 0.0
        for i in range(n):
            for j in range(m):
                vj = v_last[j]
                tb = gq * cq[i, j]
                grad_cost[q, i, j] = gq * u_last[i] * vj * kq[i, j]
                k_bar[i, j] = tb * u_last[i] * vj
                tk = tb * kq[i, j]
                u_bar[i] += tk * vj
                vt0[j] -= tk * u_last[i]
        for i in range(n):
            a_bar[q, i] = 0.0
        for j in range(m):
            b_bar[q, j] = 0.0
        # iteration t: r = K^T u_t, v = b / r, s = K v, u_{t+1} = a / s, reversed
        for t in range(last - 1, -1, -1):
            u_after = us[q, t + 1]
            s = ss[q, t]
            for i in range(n):
                qi = u_bar[i] / s[i]
                a_bar[q, i] += qi
                w[i] = qi * u_after[i]
            r, v, u_before = rs[q, t], vs[q, t], us[q, t]
            for j in range(m):
                acc = kq[0, j] * w[0]
                for i in range(1, n):
                    acc += kq[i, j] * w[i]
                if t == last - 1:
                    acc += vt0[j]
                pj = acc / r[j]
                b_bar[q, j] -= pj
                z[j] = pj * v[j]
            for i in range(n):
                acc = kq[i, 0] * z[0]
                for j in range(1, m):
                    acc += kq[i, j] * z[j]
                u_bar[i] = acc
                wi, ui = w[i], u_before[i]
                for j in range(m):
                    k_bar[i, j] += ui * z[j] - wi * v[j]
        for i in range(n):
            for j in range(m):
                grad_cost[q, i, j] -= k_bar[i, j] * kq[i, j] / eps[q]


def _solve(cost, a, b, eps, caps, tols, marginal: bool, every: int):
    p, n, m = cost.shape
    dt = cost.dtype
    k = np.exp(-cost / eps[:, None, None])
    most = int(caps.max()) if p else 0
    us = np.empty((p, most + 1, n), dtype=dt)
    vs, ss, rs = (np.empty((p, most, d), dtype=dt) for d in (m, n, m))
    n_done = np.zeros(p, dtype=np.int64)
    value = np.empty(p, dtype=dt)
    _forward(cost, k, a, b, eps, caps, tols, marginal, every, us, vs, ss, rs, n_done, value)
    return value, (k, us, vs, ss, rs, n_done)


class _CompiledOT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, a, b, eps, caps, tols, marginal, every):
        arrays = [np.ascontiguousarray(x.detach().numpy()) for x in (cost, a, b)]
        eps_np = np.ascontiguousarray(eps, dtype=arrays[0].dtype)
        value, saved = _solve(*arrays, eps_np, caps, tols, marginal, every)
        ctx.replay, ctx.eps = saved, eps_np
        ctx.save_for_backward(cost, a, b)
        return torch.from_numpy(value)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        cost, _, _ = ctx.saved_tensors
        c = np.ascontiguousarray(cost.detach().numpy())
        k, us, vs, ss, rs, n_done = ctx.replay
        ctx.replay = None
        grad_cost = np.empty_like(c)
        a_bar = np.empty(c.shape[:2], dtype=c.dtype)
        b_bar = np.empty((c.shape[0], c.shape[2]), dtype=c.dtype)
        g = np.ascontiguousarray(grad_out.numpy(), dtype=c.dtype)
        _backward(g, c, k, ctx.eps, us, vs, ss, rs, n_done, grad_cost, a_bar, b_bar)
        grads = (grad_cost, a_bar, b_bar)
        return (
            *(
                torch.from_numpy(x) if need else None
                for x, need in zip(grads, ctx.needs_input_grad[:3], strict=True)
            ),
            *([None] * 5),
        )


def compiled_ot(cost, a, b, *, eps, caps, tols, stop: str = "marginal", check_every: int = 1):
    """``<C_q, T_q>`` for a stack of CPU problems (``cost [P, N, M]``, ``a [P, N]``,
    ``b [P, M]``), each after its own iterations: ``caps[q]`` at most, ending early at a check
    (every ``check_every`` iterations) where its statistic under ``stop`` is below ``tols[q]``
    (``-inf``: never). Differentiable in ``cost``, ``a`` and ``b`` (the unrolled gradient)."""
    caps = np.ascontiguousarray(caps, dtype=np.int64)
    if caps.size and caps.min() < 1:
        raise ValueError("every iteration cap must be >= 1")
    tols = np.ascontiguousarray(tols, dtype=np.float64)
    return _CompiledOT.apply(cost, a, b, eps, caps, tols, stop == "marginal", int(check_every))
