"""The scaling-domain Sinkhorn loop and its reverse pass, compiled (numba) for the CPU.

At the sizes stage 2 solves (a batch of 16 against K classes, up to a few hundred iterations)
the NumPy loop of :mod:`.fused` is bound by its calls (about ten per iteration, of a few
microseconds each), not by its arithmetic (a few hundred multiply-adds). Here the whole loop of
one problem is one compiled function: the same iterates (``r = K^T u``, ``v = b / r``,
``s = K v``, ``u = a / s`` from ``u = 1``), the same stopping rules checked at the same
iterations, and the same reverse replay, in the problem's dtype; only the order of the sums
inside a matrix-vector product differs from NumPy's (rounding).

Problems beyond float64's scaling range run the log-domain loop of :func:`.sinkhorn.sinkhorn`
compiled the same way (each log-sum-exp shifted by its maximum), with a reverse pass that
re-forms each log-sum-exp's softmax from the stored potentials.

Problems come as a stack ``[P, N, M]``, each with its own ``eps``, iteration cap and tolerance,
and each runs exactly its own iterations (no shared loop, no freezing): a member of a population
(:mod:`.batched`) gets bit for bit what the same problem gets alone through
:func:`.fused.fused_unrolled_ot`. From ``LANES_FROM`` scaling-domain problems of one dtype on,
they share SIMD lanes (:mod:`.lanes`: the same operations in the same order per lane, so the
same numbers bit for bit, several problems per vector instruction). Compiled functions are
cached on disk beside this file (numba's ``cache=True``), so a new process loads them instead
of compiling.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from . import lanes
from .scaling_steps import close_grad, direct_terms, plan_cost, stop_error

__all__ = ["compiled_ot"]

LANES_FROM = 3  # problems of one group from which they share vector lanes (.lanes)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rows_dot(x, y, out):
    """``out_j = sum_i x_ij y_i`` as a sum of scaled rows, terms added in ``i`` order (the
    rounding of a dot product); the inner loop over independent outputs vectorises. Inlined
    into each loop (called, it measured 12-15% slower: the compiler no longer specialised it)."""
    n, m = x.shape
    y0 = y[0]
    for j in range(m):
        out[j] = x[0, j] * y0
    for i in range(1, n):
        yi = y[i]
        for j in range(m):
            out[j] += x[i, j] * yi


@njit(cache=True, nogil=True, error_model="numpy")
def _forward(todo, cost, k, a, b, eps, caps, tols, marginal, every, us, vs, ss, rs, n_done, value):
    # Every product is written as a sum of scaled rows (K^T u over K's rows, K v over the rows
    # of K^T): the inner loop runs over independent outputs, which the compiler vectorises,
    # and each output still adds its terms in index order (the same rounding as a dot product).
    n, m = k.shape[1:]
    kt = np.empty((m, n), dtype=k.dtype)
    col = np.empty(m, dtype=k.dtype)
    for slot in range(todo.shape[0]):  # the problems to solve; state by slot
        q = todo[slot]
        kq = k[q]
        for i in range(n):
            for j in range(m):
                kt[j, i] = kq[i, j]
        for i in range(n):
            us[slot, 0, i] = 1.0
        done = 0
        for it in range(caps[q]):
            u = us[slot, it]
            r = rs[slot, it]
            _rows_dot(kq, u, r)
            v = vs[slot, it]
            for j in range(m):
                v[j] = b[q, j] / r[j]
            s = ss[slot, it]
            u_new = us[slot, it + 1]
            _rows_dot(kt, v, s)
            for i in range(n):
                u_new[i] = a[q, i] / s[i]
            done = it + 1
            if done % every == 0:
                if marginal:  # the Q-side marginal V (K^T U)
                    _rows_dot(kq, u_new, col)
                err = stop_error(marginal, v, col, vs[slot, it - 1], it == 0, b[q], eps[q])
                if err < tols[q]:
                    break
        n_done[slot] = done
        value[q] = plan_cost(cost[q], kq, us[slot, done], vs[slot, done - 1])


@njit(cache=True, nogil=True, error_model="numpy")
def _backward(todo, g, cost, k, eps, us, vs, ss, rs, n_done, grad_cost, a_bar, b_bar):
    n, m = k.shape[1:]
    u_bar = np.empty(n, dtype=us.dtype)
    vt0 = np.empty(m, dtype=vs.dtype)
    w = np.empty(n, dtype=us.dtype)
    z = np.empty(m, dtype=vs.dtype)
    acc = np.empty(m, dtype=vs.dtype)
    k_bar = np.empty((n, m), dtype=k.dtype)
    kt = np.empty((m, n), dtype=k.dtype)
    for slot in range(todo.shape[0]):  # the problems to solve; state by slot
        q = todo[slot]
        kq, cq, gq = k[q], cost[q], g[q]
        for i in range(n):
            for j in range(m):
                kt[j, i] = kq[i, j]
        last = n_done[slot]
        u_last, v_last = us[slot, last], vs[slot, last - 1]
        direct_terms(gq, cq, kq, u_last, v_last, grad_cost[q], k_bar, u_bar, vt0)
        for i in range(n):
            a_bar[q, i] = 0.0
        for j in range(m):
            b_bar[q, j] = 0.0
        # iteration t: r = K^T u_t, v = b / r, s = K v, u_{t+1} = a / s, reversed
        for t in range(last - 1, -1, -1):
            u_after = us[slot, t + 1]
            s = ss[slot, t]
            for i in range(n):
                qi = u_bar[i] / s[i]
                a_bar[q, i] += qi
                w[i] = qi * u_after[i]
            r, v, u_before = rs[slot, t], vs[slot, t], us[slot, t]
            _rows_dot(kq, w, acc)
            if t == last - 1:
                for j in range(m):
                    acc[j] += vt0[j]
            for j in range(m):
                pj = acc[j] / r[j]
                b_bar[q, j] -= pj
                z[j] = pj * v[j]
            _rows_dot(kt, z, u_bar)
            for i in range(n):
                wi, ui = w[i], u_before[i]
                for j in range(m):
                    k_bar[i, j] += ui * z[j] - wi * v[j]
        close_grad(grad_cost[q], k_bar, kq, eps[q])


@njit(cache=True, nogil=True, error_model="numpy")
def _log_forward(todo, cost, a, b, eps, caps, tols, marginal, every, us, vs, n_done, value):
    # The log-domain loop of :func:`.sinkhorn.sinkhorn`: v = log b - LSE_i(u_i + N_ij),
    # u = log a - LSE_j(v_j + N_ij) with N = -C / eps, each log-sum-exp shifted by its maximum
    # (0 where that is not finite), from u = 0; the same stopping rules.
    n, m = cost.shape[1:]
    neg = np.empty((n, m), dtype=cost.dtype)
    mx = np.empty(m, dtype=cost.dtype)
    acc = np.empty(m, dtype=cost.dtype)
    la = np.empty(n, dtype=cost.dtype)
    lb = np.empty(m, dtype=cost.dtype)
    for slot in range(todo.shape[0]):
        q = todo[slot]
        e = eps[q]
        for i in range(n):
            la[i] = np.log(a[q, i])  # once per problem, not per iteration (the same values)
            for j in range(m):
                neg[i, j] = -cost[q, i, j] / e
        for j in range(m):
            lb[j] = np.log(b[q, j])
        for i in range(n):
            us[slot, 0, i] = 0.0
        done = 0
        for it in range(caps[q]):
            u, v, u_new = us[slot, it], vs[slot, it], us[slot, it + 1]
            _col_lse(u, neg, mx, acc)
            for j in range(m):
                v[j] = lb[j] - acc[j]
            for i in range(n):
                top = v[0] + neg[i, 0]
                for j in range(1, m):
                    t = v[j] + neg[i, j]
                    if t > top:
                        top = t
                if not np.isfinite(top):
                    top = 0.0
                total = 0.0
                for j in range(m):
                    total += np.exp(v[j] + neg[i, j] - top)
                u_new[i] = la[i] - (np.log(total) + top)
            done = it + 1
            if done % every == 0:
                err = 0.0
                if marginal:  # L1 error of the Q-side marginal exp(LSE_i(u_i + N_ij) + v_j)
                    _col_lse(u_new, neg, mx, acc)
                    for j in range(m):
                        err += abs(np.exp(acc[j] + v[j]) - b[q, j])
                else:  # sum_j |eps (v_j - v_j^prev)| (v = 0 before the first)
                    for j in range(m):
                        before = vs[slot, it - 1, j] if it > 0 else 0.0
                        err += abs(e * (v[j] - before))
                if err < tols[q]:
                    break
        n_done[slot] = done
        u, v = us[slot, done], vs[slot, done - 1]
        total = 0.0
        for i in range(n):
            for j in range(m):
                total += cost[q, i, j] * np.exp(u[i] + v[j] + neg[i, j])
        value[q] = total


@njit(cache=True, nogil=True, error_model="numpy")
def _col_lse(u, neg, mx, acc):
    """acc_j = LSE_i(u_i + neg_ij), shifted by the column's maximum (0 where not finite)."""
    n, m = neg.shape
    for j in range(m):
        mx[j] = u[0] + neg[0, j]
    for i in range(1, n):
        ui = u[i]
        for j in range(m):
            t = ui + neg[i, j]
            if t > mx[j]:
                mx[j] = t
    for j in range(m):
        if not np.isfinite(mx[j]):
            mx[j] = 0.0
        acc[j] = 0.0
    for i in range(n):
        ui = u[i]
        for j in range(m):
            acc[j] += np.exp(ui + neg[i, j] - mx[j])
    for j in range(m):
        acc[j] = np.log(acc[j]) + mx[j]


@njit(cache=True, nogil=True, error_model="numpy")
def _log_backward(todo, g, cost, a, b, eps, us, vs, n_done, grad_cost, a_bar, b_bar):
    # Reverse pass of _log_forward: each log-sum-exp's Jacobian is a softmax, re-formed from
    # the stored potentials (rows: u's over j, cols: v's over i).
    n, m = cost.shape[1:]
    dt = cost.dtype
    neg = np.empty((n, m), dtype=dt)
    n_bar = np.empty((n, m), dtype=dt)
    la = np.empty(n, dtype=dt)
    lb = np.empty(m, dtype=dt)
    u_bar = np.empty(n, dtype=dt)
    v_bar = np.empty(m, dtype=dt)
    vb = np.empty(m, dtype=dt)
    for slot in range(todo.shape[0]):
        q = todo[slot]
        e, gq = eps[q], g[q]
        last = n_done[slot]
        for i in range(n):
            la[i] = np.log(a[q, i])
            for j in range(m):
                neg[i, j] = -cost[q, i, j] / e
        for j in range(m):
            lb[j] = np.log(b[q, j])
        u, v = us[slot, last], vs[slot, last - 1]
        for i in range(n):
            u_bar[i] = 0.0
        for j in range(m):
            v_bar[j] = 0.0
        for i in range(n):
            for j in range(m):
                plan = np.exp(u[i] + v[j] + neg[i, j])
                grad_cost[q, i, j] = gq * plan  # the direct term
                nb = gq * cost[q, i, j] * plan  # through the plan's exponent
                n_bar[i, j] = nb
                u_bar[i] += nb
                v_bar[j] += nb
        for i in range(n):
            a_bar[q, i] = 0.0
        for j in range(m):
            b_bar[q, j] = 0.0
        for t in range(last - 1, -1, -1):
            u_t, v_t, u_prev = us[slot, t + 1], vs[slot, t], us[slot, t]
            for j in range(m):
                vb[j] = v_bar[j] if t == last - 1 else 0.0
            for i in range(n):
                ub = u_bar[i]
                a_bar[q, i] += ub
                for j in range(m):
                    rows = np.exp(v_t[j] + neg[i, j] + u_t[i] - la[i])
                    vb[j] -= ub * rows
                    n_bar[i, j] -= ub * rows
            for j in range(m):
                b_bar[q, j] += vb[j]
            for i in range(n):
                acc = 0.0
                for j in range(m):
                    cols = np.exp(u_prev[i] + neg[i, j] + v_t[j] - lb[j])
                    n_bar[i, j] -= vb[j] * cols
                    acc += cols * vb[j]
                u_bar[i] = -acc
        for i in range(n):
            a_bar[q, i] /= a[q, i]
            for j in range(m):
                grad_cost[q, i, j] -= n_bar[i, j] / e
        for j in range(m):
            b_bar[q, j] /= b[q, j]


def _solve(todo, cost, a, b, eps, caps, tols, marginal: bool, every: int):
    """The scaling-domain problems ``todo``: their values, and the function that runs their
    reverse pass (``back(g, grad_cost, a_bar, b_bar)``). From ``LANES_FROM`` problems on,
    they share the vector lanes of :mod:`.lanes` (the same numbers, bit for bit)."""
    n, m = cost.shape[1:]
    dt = cost.dtype
    if todo.size == cost.shape[0]:
        k = np.exp(-cost / eps[:, None, None])
    else:
        k = np.empty_like(cost)
        k[todo] = np.exp(-cost[todo] / eps[todo, None, None])
    value = np.zeros(cost.shape[0], dtype=dt)
    if todo.size >= LANES_FROM:
        return value, lanes.solve(todo, cost, k, a, b, eps, caps, tols, marginal, every, value)
    slots = todo.size
    most = int(caps[todo].max()) if slots else 0
    us = np.empty((slots, most + 1, n), dtype=dt)
    vs, ss, rs = (np.empty((slots, most, d), dtype=dt) for d in (m, n, m))
    n_done = np.zeros(slots, dtype=np.int64)
    _forward(todo, cost, k, a, b, eps, caps, tols, marginal, every, us, vs, ss, rs, n_done, value)

    def back(g, *out):
        _backward(todo, g, cost, k, eps, us, vs, ss, rs, n_done, *out)

    return value, back


def _solve_log(todo, cost, a, b, eps, caps, tols, marginal: bool, every: int):
    n, m = cost.shape[1:]
    dt = cost.dtype
    most = int(caps[todo].max()) if todo.size else 0
    us = np.empty((todo.size, most + 1, n), dtype=dt)
    vs = np.empty((todo.size, most, m), dtype=dt)
    n_done = np.zeros(todo.size, dtype=np.int64)
    value = np.zeros(cost.shape[0], dtype=dt)
    # a zero weight diverges to NaN, as in the reference loop (IEEE arithmetic: no exception)
    _log_forward(todo, cost, a, b, eps, caps, tols, marginal, every, us, vs, n_done, value)

    def back(g, *out):
        _log_backward(todo, g, cost, a, b, eps, us, vs, n_done, *out)

    return value, back


# a member's path (as :mod:`.batched` numbers them): the log domain, the scaling domain in the
# stack's dtype, the scaling domain in float64
LOG, SCALING, SCALING64 = 0, 1, 2


class _CompiledOT(torch.autograd.Function):
    """The problems of a stack in up to three groups by ``path``: the scaling domain in the
    stack's dtype, in float64 (float32 problems beyond float32's scaling range), and the log
    domain (beyond float64's), each problem exactly as it is solved alone on its path;
    problems on no path (``path`` -1) give 0 and no gradient."""

    @staticmethod
    def forward(ctx, cost, a, b, eps, caps, tols, marginal, every, path):
        arrays = [np.ascontiguousarray(x.detach().numpy()) for x in (cost, a, b)]
        dt = arrays[0].dtype
        value = np.zeros(cost.shape[0], dtype=dt)
        ctx.groups = []
        for kind, gdt in ((SCALING, dt), (SCALING64, np.dtype(np.float64)), (LOG, dt)):
            idx = np.flatnonzero(path == kind)
            if idx.size == 0:
                continue
            group = [x.astype(gdt, copy=False) for x in arrays]
            eps_g = np.ascontiguousarray(eps, dtype=gdt)
            solve = _solve_log if kind == LOG else _solve
            got, back = solve(idx, *group, eps_g, caps, tols, marginal, every)
            value[idx] = got[idx]
            ctx.groups.append((idx, group[0].dtype, back))
        ctx.save_for_backward(cost, a, b)
        return torch.from_numpy(value)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        cost, _, _ = ctx.saved_tensors
        dt = cost.numpy().dtype
        p, n, m = cost.shape
        grads = [np.zeros((p, n, m), dt), np.zeros((p, n), dt), np.zeros((p, m), dt)]
        for idx, gdt, back in ctx.groups:
            if gdt == dt:  # each group writes its own problems' rows
                back(np.ascontiguousarray(grad_out.numpy(), dtype=gdt), *grads)
                continue
            out = [np.empty((p, n, m), gdt), np.empty((p, n), gdt), np.empty((p, m), gdt)]
            back(np.ascontiguousarray(grad_out.numpy(), dtype=gdt), *out)
            for full, part in zip(grads, out, strict=True):
                full[idx] = part[idx]
        return (
            *(
                torch.from_numpy(x) if need else None
                for x, need in zip(grads, ctx.needs_input_grad[:3], strict=True)
            ),
            *([None] * 6),
        )


def compiled_ot(
    cost,
    a,
    b,
    *,
    eps,
    caps,
    tols,
    stop: str = "marginal",
    check_every: int = 1,
    path: np.ndarray | None = None,
):
    """``<C_q, T_q>`` for a stack of CPU problems (``cost [P, N, M]``, ``a [P, N]``,
    ``b [P, M]``), each after its own iterations: ``caps[q]`` at most, ending early at a check
    (every ``check_every`` iterations) where its statistic under ``stop`` is below ``tols[q]``
    (``-inf``: never). Differentiable in ``cost``, ``a`` and ``b`` (the unrolled gradient).
    ``eps``: float64 values, rounded to each problem's dtype. ``path`` (``[P]``, default all
    ``SCALING``): ``SCALING`` the scaling domain in the stack's dtype, ``SCALING64`` in float64
    (from float64 casts of the inputs; the value and gradients rounded back), ``LOG`` the log
    domain in the stack's dtype, -1 not solved here (0 and a zero gradient)."""
    p = cost.shape[0]
    caps = np.ascontiguousarray(caps, dtype=np.int64)
    if caps.size and caps.min() < 1:
        raise ValueError("every iteration cap must be >= 1")
    tols = np.ascontiguousarray(tols, dtype=np.float64)
    path = np.full(p, SCALING) if path is None else np.asarray(path, dtype=np.int64)
    eps = np.asarray(eps, dtype=np.float64)
    return _CompiledOT.apply(
        cost, a, b, eps, caps, tols, stop == "marginal", int(check_every), path
    )
