"""The Sinkhorn loop and its reverse pass compiled (numba) for the CPU: the package's fast path
there, for one problem or a stack of them.

At the sizes stage 2 solves (a batch of 16 against K classes, up to a few hundred iterations)
a loop of array calls is bound by its calls (about ten per iteration, of a few microseconds
each), not by its arithmetic (a few hundred multiply-adds). Here the whole loop of a problem is
one compiled function, with its reverse pass written by hand (``O(iterations * (N + M))``
memory, no autograd graph). Each problem runs on one of three paths (``path``, chosen by
:func:`.ot.ot_loss` from ``max |C| / eps``):

* ``SCALING``: the iterates of :func:`.sinkhorn.sinkhorn` in the scaling domain
  (``U = exp(u)``, ``V = exp(v)``, ``K = exp(-C/eps)``: ``r = K^T U``, ``V = b / r``,
  ``s = K V``, ``U = a / s`` from ``U = 1``), in the problem's dtype: two products and two
  divisions per iteration instead of two log-sum-exps, each product a plain loop (on one
  thread it beat NumPy's BLAS calls up to B128 K1000, where the two were even);
* ``SCALING64``: the same in float64, for a float32 problem beyond float32's scaling range
  (the value and gradients rounded back);
* ``LOG``: beyond float64's too, the log-domain loop itself (each log-sum-exp shifted by its
  maximum), whose reverse pass re-forms each log-sum-exp's softmax from the stored potentials.

Problems come as a stack ``[P, N, M]``, each with its own ``eps``, iteration cap and tolerance,
and each runs exactly its own iterations: a member of a population gets bit for bit what its
problem gets alone. Compiled functions are cached on disk beside this file (numba's
``cache=True``), so a new process loads them instead of compiling.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

__all__ = ["LOG", "SCALING", "SCALING64", "compiled_ot"]

LOG, SCALING, SCALING64 = 0, 1, 2

_JIT = dict(cache=True, nogil=True, error_model="numpy")


@njit(inline="always", **_JIT)
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


@njit(inline="always", **_JIT)
def _stop_error(marginal, v, col, before, first, bq, e):
    """The statistic at a check: with ``marginal`` the L1 error of the Q-side marginal,
    ``sum_j |v_j col_j - b_j|`` (``col = K^T u``); else ``sum_j |g_j - g_j^prev|`` with
    ``g = eps log v`` (``before``: the previous iteration's ``v``; 1 at the ``first``)."""
    err = 0.0
    if marginal:
        for j in range(v.shape[0]):
            err += abs(v[j] * col[j] - bq[j])
    else:
        for j in range(v.shape[0]):
            prev = np.log(before[j]) if not first else 0.0
            err += e * abs(np.log(v[j]) - prev)
    return err


@njit(**_JIT)
def _forward(todo, cost, k, a, b, eps, caps, tols, marginal, every, us, vs, ss, rs, n_done, value):
    n, m = k.shape[1:]
    kt = np.empty((m, n), dtype=k.dtype)
    col = np.empty(m, dtype=k.dtype)
    for slot in range(todo.shape[0]):  # the problems to solve; state by slot
        q = todo[slot]
        kq = k[q]
        kt[:] = kq.T
        us[slot, 0] = 1.0
        done = 0
        for it in range(caps[q]):
            u, r, v, s = us[slot, it], rs[slot, it], vs[slot, it], ss[slot, it]
            u_new = us[slot, it + 1]
            _rows_dot(kq, u, r)
            for j in range(m):
                v[j] = b[q, j] / r[j]
            _rows_dot(kt, v, s)
            for i in range(n):
                u_new[i] = a[q, i] / s[i]
            done = it + 1
            if done % every == 0:
                if marginal:  # the Q-side marginal V (K^T U)
                    _rows_dot(kq, u_new, col)
                err = _stop_error(marginal, v, col, vs[slot, it - 1], it == 0, b[q], eps[q])
                if err < tols[q]:
                    break
        n_done[slot] = done
        u, v = us[slot, done], vs[slot, done - 1]
        total = 0.0  # <C, diag(u) K diag(v)>, summed in float64 in index order
        for i in range(n):
            for j in range(m):
                total += cost[q, i, j] * (u[i] * kq[i, j] * v[j])
        value[q] = total


@njit(inline="always", **_JIT)
def _direct_terms(gq, cq, kq, u, v, grad_q, k_bar, u_bar, vt0):
    """The reverse pass through ``<C, T>`` with ``T = diag(u) K diag(v)`` (upstream ``gq``):
    ``grad_q`` the direct gradient in ``C``; ``k_bar`` the gradient in ``K`` so far; ``u_bar``
    and ``vt0`` (set here) those in the last ``u`` and, through it, the last ``v``."""
    n, m = cq.shape
    u_bar[:] = 0.0
    vt0[:] = 0.0
    for i in range(n):
        for j in range(m):
            vj = v[j]
            tb = gq * cq[i, j]
            grad_q[i, j] = gq * u[i] * vj * kq[i, j]
            k_bar[i, j] = tb * u[i] * vj
            tk = tb * kq[i, j]
            u_bar[i] += tk * vj
            vt0[j] -= tk * u[i]


@njit(**_JIT)
def _backward(todo, g, cost, k, eps, us, vs, ss, rs, n_done, grad_cost, a_bar, b_bar):
    n, m = k.shape[1:]
    dt = k.dtype
    u_bar, w = np.empty(n, dtype=dt), np.empty(n, dtype=dt)
    vt0, z, acc = np.empty(m, dtype=dt), np.empty(m, dtype=dt), np.empty(m, dtype=dt)
    k_bar = np.empty((n, m), dtype=dt)
    kt = np.empty((m, n), dtype=dt)
    for slot in range(todo.shape[0]):  # the problems to solve; state by slot
        q = todo[slot]
        kq = k[q]
        kt[:] = kq.T
        last = n_done[slot]
        _direct_terms(g[q], cost[q], kq, us[slot, last], vs[slot, last - 1], grad_cost[q],
                      k_bar, u_bar, vt0)  # fmt: skip
        a_bar[q] = 0.0
        b_bar[q] = 0.0
        # iteration t: r = K^T u_t, v = b / r, s = K v, u_{t+1} = a / s, reversed
        for t in range(last - 1, -1, -1):
            u_after, s = us[slot, t + 1], ss[slot, t]
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
        for i in range(n):  # the gradient in K taken to C (K = exp(-C / eps)) and added
            for j in range(m):
                grad_cost[q, i, j] -= k_bar[i, j] * kq[i, j] / eps[q]


@njit(inline="always", **_JIT)
def _lse(other, neg, x, by_column):
    """``LSE_y(other_y + neg[y, x])`` (``by_column``) or ``LSE_y(other_y + neg[x, y])``, shifted
    by its maximum (0 where that is not finite)."""
    top = -np.inf
    for y in range(other.shape[0]):
        top = max(top, other[y] + (neg[y, x] if by_column else neg[x, y]))
    top = top if np.isfinite(top) else 0.0
    total = 0.0
    for y in range(other.shape[0]):
        total += np.exp(other[y] + (neg[y, x] if by_column else neg[x, y]) - top)
    return np.log(total) + top


@njit(inline="always", **_JIT)
def _log_setup(cq, aq, bq, e, neg, la, lb):
    """``N = -C / eps``, ``log a``, ``log b`` of one problem (once, not per iteration)."""
    n, m = cq.shape
    for i in range(n):
        la[i] = np.log(aq[i])
        for j in range(m):
            neg[i, j] = -cq[i, j] / e
    for j in range(m):
        lb[j] = np.log(bq[j])


@njit(**_JIT)
def _log_forward(todo, cost, a, b, eps, caps, tols, marginal, every, us, vs, n_done, value):
    # The log-domain loop of :func:`.sinkhorn.sinkhorn`: v = log b - LSE_i(u_i + N_ij),
    # u = log a - LSE_j(v_j + N_ij) with N = -C / eps, from u = 0; the same stopping rules.
    n, m = cost.shape[1:]
    dt = cost.dtype
    neg, la, lb = np.empty((n, m), dt), np.empty(n, dt), np.empty(m, dt)
    for slot in range(todo.shape[0]):
        q = todo[slot]
        e = eps[q]
        _log_setup(cost[q], a[q], b[q], e, neg, la, lb)
        us[slot, 0] = 0.0
        done = 0
        for it in range(caps[q]):
            u, v, u_new = us[slot, it], vs[slot, it], us[slot, it + 1]
            for j in range(m):
                v[j] = lb[j] - _lse(u, neg, j, True)
            for i in range(n):
                u_new[i] = la[i] - _lse(v, neg, i, False)
            done = it + 1
            if done % every == 0:
                err = 0.0
                for j in range(m):
                    if marginal:  # the Q-side marginal exp(LSE_i(u_i + N_ij) + v_j)
                        err += abs(np.exp(_lse(u_new, neg, j, True) + v[j]) - b[q, j])
                    else:  # |eps (v_j - v_j^prev)| (v = 0 before the first)
                        err += abs(e * (v[j] - (vs[slot, it - 1, j] if it > 0 else 0.0)))
                if err < tols[q]:
                    break
        n_done[slot] = done
        u, v = us[slot, done], vs[slot, done - 1]
        total = 0.0
        for i in range(n):
            for j in range(m):
                total += cost[q, i, j] * np.exp(u[i] + v[j] + neg[i, j])
        value[q] = total


@njit(**_JIT)
def _log_backward(todo, g, cost, a, b, eps, us, vs, n_done, grad_cost, a_bar, b_bar):
    # Reverse pass of _log_forward: each log-sum-exp's Jacobian is a softmax, re-formed from
    # the stored potentials (rows: u's over j, cols: v's over i). Each log-sum-exp is read back
    # as log mass - potential; where that is not a number (a zero mass: -inf - -inf) it is
    # formed again, so a zero-mass entry's softmax stays finite and its NaN gradient (d log a
    # / da at 0) never reaches the others.
    n, m = cost.shape[1:]
    dt = cost.dtype
    neg, n_bar = np.empty((n, m), dt), np.empty((n, m), dt)
    la, u_bar, lr = np.empty(n, dt), np.empty(n, dt), np.empty(n, dt)
    lb, v_bar, vb, lc = np.empty(m, dt), np.empty(m, dt), np.empty(m, dt), np.empty(m, dt)
    for slot in range(todo.shape[0]):
        q = todo[slot]
        e, gq = eps[q], g[q]
        last = n_done[slot]
        _log_setup(cost[q], a[q], b[q], e, neg, la, lb)
        u, v = us[slot, last], vs[slot, last - 1]
        u_bar[:] = 0.0
        v_bar[:] = 0.0
        for i in range(n):
            for j in range(m):
                plan = np.exp(u[i] + v[j] + neg[i, j])
                grad_cost[q, i, j] = gq * plan  # the direct term
                nb = gq * cost[q, i, j] * plan  # through the plan's exponent
                n_bar[i, j] = nb
                u_bar[i] += nb
                v_bar[j] += nb
        a_bar[q] = 0.0
        b_bar[q] = 0.0
        for t in range(last - 1, -1, -1):
            u_t, v_t, u_prev = us[slot, t + 1], vs[slot, t], us[slot, t]
            for i in range(n):
                lr[i] = la[i] - u_t[i]
                lr[i] = lr[i] if np.isfinite(lr[i]) else _lse(v_t, neg, i, False)
            for j in range(m):
                lc[j] = lb[j] - v_t[j]
                lc[j] = lc[j] if np.isfinite(lc[j]) else _lse(u_prev, neg, j, True)
                vb[j] = v_bar[j] if t == last - 1 else 0.0
            for i in range(n):
                ub = u_bar[i]
                a_bar[q, i] += ub
                for j in range(m):
                    rows = np.exp(v_t[j] + neg[i, j] - lr[i])
                    vb[j] -= ub * rows
                    n_bar[i, j] -= ub * rows
            for j in range(m):
                b_bar[q, j] += vb[j]
            for i in range(n):
                acc = 0.0
                for j in range(m):
                    cols = np.exp(u_prev[i] + neg[i, j] - lc[j])
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
    reverse pass (``back(g, grad_cost, a_bar, b_bar)``)."""
    n, m = cost.shape[1:]
    dt = cost.dtype
    if todo.size == cost.shape[0]:
        k = np.exp(-cost / eps[:, None, None])
    else:
        k = np.empty_like(cost)
        k[todo] = np.exp(-cost[todo] / eps[todo, None, None])
    value = np.zeros(cost.shape[0], dtype=dt)
    most = int(caps[todo].max())
    us = np.empty((todo.size, most + 1, n), dtype=dt)
    vs, ss, rs = (np.empty((todo.size, most, d), dtype=dt) for d in (m, n, m))
    n_done = np.zeros(todo.size, dtype=np.int64)
    _forward(todo, cost, k, a, b, eps, caps, tols, marginal, every, us, vs, ss, rs, n_done, value)

    def back(g, *out):
        _backward(todo, g, cost, k, eps, us, vs, ss, rs, n_done, *out)

    return value, back


def _solve_log(todo, cost, a, b, eps, caps, tols, marginal: bool, every: int):
    n, m = cost.shape[1:]
    dt = cost.dtype
    most = int(caps[todo].max())
    us = np.empty((todo.size, most + 1, n), dtype=dt)
    vs = np.empty((todo.size, most, m), dtype=dt)
    n_done = np.zeros(todo.size, dtype=np.int64)
    value = np.zeros(cost.shape[0], dtype=dt)
    # a zero weight is -inf in the log domain (IEEE arithmetic: no exception)
    _log_forward(todo, cost, a, b, eps, caps, tols, marginal, every, us, vs, n_done, value)

    def back(g, *out):
        _log_backward(todo, g, cost, a, b, eps, us, vs, n_done, *out)

    return value, back


class _CompiledOT(torch.autograd.Function):
    """The problems of a stack in up to three groups by ``path`` (module doc), each problem
    exactly as it is solved alone on its path."""

    @staticmethod
    def forward(ctx, cost, a, b, eps, caps, tols, marginal, every, path):
        arrays = [np.ascontiguousarray(x.detach().numpy()) for x in (cost, a, b)]
        dt = arrays[0].dtype
        value = np.zeros(cost.shape[0], dtype=dt)
        ctx.groups = []
        kinds = set(path.tolist())
        for kind, gdt in ((SCALING, dt), (SCALING64, np.dtype(np.float64)), (LOG, dt)):
            if kind not in kinds:
                continue
            idx = np.arange(path.size) if len(kinds) == 1 else np.flatnonzero(path == kind)
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
            g = np.ascontiguousarray(grad_out.numpy(), dtype=gdt)
            out = grads if gdt == dt else [np.empty(x.shape, gdt) for x in grads]
            back(g, *out)  # each group writes its own problems' rows
            if out is not grads:
                for full, part in zip(grads, out, strict=True):
                    full[idx] = part[idx]
        return (
            *(
                torch.from_numpy(x) if need else None
                for x, need in zip(grads, ctx.needs_input_grad[:3], strict=True)
            ),
            *([None] * 6),
        )


def compiled_ot(cost, a, b, *, eps, caps, tols, stop, check_every, path) -> torch.Tensor:
    """``<C_q, T_q>`` (``[P]``) for a stack of CPU problems (``cost [P, N, M]``, ``a [P, N]``,
    ``b [P, M]``, one float dtype), each after its own iterations: ``caps[q]`` at most, ending
    early at a check (every ``check_every`` iterations) where its statistic under ``stop`` is
    below ``tols[q]`` (``-inf``: never), on its ``path[q]``. Differentiable in ``cost``, ``a``
    and ``b`` (the unrolled gradient). ``eps``: float64 values, rounded to each path's dtype."""
    return _CompiledOT.apply(
        cost, a, b, np.asarray(eps, dtype=np.float64),
        np.ascontiguousarray(caps, dtype=np.int64), np.ascontiguousarray(tols, dtype=np.float64),
        stop == "marginal", int(check_every), np.asarray(path, dtype=np.int64),
    )  # fmt: skip
