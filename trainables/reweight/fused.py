"""A faster exact path for the paper's OT loss: a fixed number of Sinkhorn iterations in the
scaling (plain) domain with the reverse-mode derivative of those iterations written by hand.

It computes the same iterates as the log-domain loop of :func:`sinkhorn` started from zero
potentials (``U = exp(u)``, ``V = exp(v)``, ``K = exp(-C/eps)``), so its value and gradient are
those of the "unrolled" reference up to rounding. Per iteration it runs two matrix-vector
products and two divisions instead of two log-sum-exps, and builds no autograd graph: the
backward pass replays the stored scalings (``O(iterations * (N + M))`` memory) and forms the
gradient with respect to ``K`` as one matrix product at the end.

The scaling domain is exact only while ``exp(-C/eps)`` neither overflows nor underflows;
:func:`fused_applicable` checks that (``max |C| / eps`` against the dtype's range).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fused_applicable", "fused_unrolled_ot"]

# exp(+-LIMIT) and the scalings built from them stay normal numbers, with a margin for the
# marginals (>= 1e-6) and the sums over N or M entries.
_LIMIT = {torch.float32: 30.0, torch.float64: 300.0}


def fused_applicable(cost: Tensor, eps: float) -> bool:
    """True when the scaling domain is safe for ``cost / eps`` (one host sync)."""
    limit = _LIMIT.get(cost.dtype)
    if limit is None:
        return False
    return bool((cost.detach().abs().amax() / eps) <= limit)


def _mv(k: Tensor, x: Tensor) -> Tensor:
    """K x over the last dim (torch.mv for one problem: the loop is launch-bound)."""
    return torch.mv(k, x) if k.dim() == 2 else (k @ x.unsqueeze(-1)).squeeze(-1)


def _t(k: Tensor) -> Tensor:
    return k.transpose(-1, -2).contiguous()


class _FusedUnrolled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iter: int) -> Tensor:
        k = torch.exp(-cost / eps)
        kt = _t(k)
        u = torch.ones_like(a)
        us, vs, ss, rs = [], [], [], []
        for _ in range(n_iter):
            us.append(u)
            r = _mv(kt, u)
            v = b / r
            s = _mv(k, v)
            u = a / s
            rs.append(r)
            vs.append(v)
            ss.append(s)
        plan = u.unsqueeze(-1) * k * v.unsqueeze(-2)
        ctx.eps = eps
        ctx.n_iter = n_iter
        ctx.save_for_backward(cost, k, kt, u, *us, *vs, *ss, *rs)
        return (cost * plan).sum((-2, -1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        cost, k, kt, u_last, *hist = ctx.saved_tensors
        n = ctx.n_iter
        us, vs, ss, rs = hist[:n], hist[n : 2 * n], hist[2 * n : 3 * n], hist[3 * n :]
        eps = ctx.eps
        g = grad_out.unsqueeze(-1).unsqueeze(-1)
        v_last = vs[-1]
        uv = u_last.unsqueeze(-1) * v_last.unsqueeze(-2)
        t_bar = g * cost  # dL/dT for L = <C, T>, T = diag(U) K diag(V)
        grad_cost = g * uv * k  # the direct term, g * T
        k_bar = t_bar * uv
        tk = t_bar * k
        u_bar = _mv(tk, v_last)
        v_bar = _mv(_t(tk), u_last)
        # Iteration t: r = K^T u_{t-1}, v = b / r, s = K v, u_t = a / s. Reverse it with
        # q = u_bar / s (-> a_bar), w = q u_t (s_bar = -w), v_bar += -K^T w, p = -v_bar / r
        # (-> b_bar = -p), z = p v (r_bar = z), u_bar_{t-1} = K z. Signs are folded: vt holds
        # -v_bar.
        qs, ws, ps, zs = [], [], [], []
        u = u_last
        vt = -v_bar
        for t in range(n - 1, -1, -1):
            q = u_bar / ss[t]
            w = q * u
            vt = vt + _mv(kt, w) if t == n - 1 else _mv(kt, w)
            p = vt / rs[t]
            z = p * vs[t]
            u_bar = _mv(k, z)
            u = us[t]
            qs.append(q)
            ws.append(w)
            ps.append(p)
            zs.append(z)
        a_bar = torch.stack(qs).sum(0)
        b_bar = -torch.stack(ps).sum(0)
        # K_bar += sum_t (s_bar_t v_t^T + u_{t-1} r_bar_t^T), as two products over iterations
        w_hist = torch.stack(ws[::-1], dim=-1)  # [..., N, n]
        z_hist = torch.stack(zs[::-1], dim=-2)  # [..., n, M]
        v_hist = torch.stack(vs, dim=-2)  # [..., n, M]
        u_hist = torch.stack(us, dim=-1)  # [..., N, n]
        k_bar = k_bar - w_hist @ v_hist + u_hist @ z_hist
        grad_cost = grad_cost - k_bar * k / eps
        return (
            grad_cost if ctx.needs_input_grad[0] else None,
            a_bar if ctx.needs_input_grad[1] else None,
            b_bar if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


def fused_unrolled_ot(cost: Tensor, a: Tensor, b: Tensor, *, eps: float, n_iter: int) -> Tensor:
    """``<C, T_n>`` after exactly ``n_iter`` iterations from zero potentials, with the
    unrolled gradient; the caller checks :func:`fused_applicable` first."""
    return _FusedUnrolled.apply(cost, a, b, eps, n_iter)
