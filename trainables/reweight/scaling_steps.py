"""The per-problem steps the compiled scaling-domain loops share: the one-problem loop of
:mod:`.compiled` and the lanes of :mod:`.lanes` call the same functions (inlined), so a
problem's stopping statistic, value and the reverse pass's direct terms are written once and
round the same in both (which is what makes a lane bit for bit its problem alone)."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["close_grad", "direct_terms", "plan_cost", "stop_error"]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def stop_error(marginal, v, col, before, first, bq, e):
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


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def plan_cost(cq, kq, u, v):
    """``<C, diag(u) K diag(v)>``, summed in float64 in index order."""
    total = 0.0
    for i in range(cq.shape[0]):
        for j in range(cq.shape[1]):
            total += cq[i, j] * (u[i] * kq[i, j] * v[j])
    return total


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def direct_terms(gq, cq, kq, u, v, grad_q, k_bar, u_bar, vt0):
    """The reverse pass through ``<C, T>`` with ``T = diag(u) K diag(v)`` (upstream ``gq``):
    ``grad_q`` the direct gradient in ``C``; ``k_bar`` the gradient in ``K`` so far; ``u_bar``
    and ``vt0`` (set here) those in the last ``u`` and, through it, the last ``v``."""
    n, m = cq.shape
    for i in range(n):
        u_bar[i] = 0.0
    for j in range(m):
        vt0[j] = 0.0
    for i in range(n):
        for j in range(m):
            vj = v[j]
            tb = gq * cq[i, j]
            grad_q[i, j] = gq * u[i] * vj * kq[i, j]
            k_bar[i, j] = tb * u[i] * vj
            tk = tb * kq[i, j]
            u_bar[i] += tk * vj
            vt0[j] -= tk * u[i]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def close_grad(grad_q, k_bar, kq, e):
    """The gradient in ``K`` taken to ``C`` (``K = exp(-C / eps)``) and added."""
    for i in range(grad_q.shape[0]):
        for j in range(grad_q.shape[1]):
            grad_q[i, j] -= k_bar[i, j] * kq[i, j] / e
