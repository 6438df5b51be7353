"""Log-domain Sinkhorn and the paper's OT loss (Eq. 10) under autograd: the reference.

Every other implementation (:mod:`.compiled` on the CPU, :mod:`.triton_ot` on CUDA) computes
these iterates and is tested against this module; it imports none of them. The one entry
point that picks among them is :func:`.ot.ot_loss`.

Conventions (paper Sec. 4): rows are the weighted training samples P(w) with mass ``a``,
columns are the meta distribution Q with mass ``b``; ``cost`` is ``[..., N, M]``. Any leading
dimensions are independent problems, each with its own ``eps``, iteration cap and tolerance
(one value for all, or one per problem), and each stops by its own statistic: a problem that
has stopped keeps its potentials while the others go on (the same iterates it gets alone).

The plan is parametrised by potentials in cost units,
``T_ij = exp((f_i + g_j - C_ij) / eps)``. Each iteration updates ``g`` (the Q side) first and
``f`` (the sample side) second, as the released code does (u on the prototypes, then v on the
batch), so the sample-side marginal ``T 1 = a`` is exact after every iteration and the error
sits on the Q side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "GRAD_MODES",
    "STOP_RULES",
    "Settings",
    "SinkhornResult",
    "check_inputs",
    "reference_ot",
    "sinkhorn",
]

GRAD_MODES = ("unrolled", "implicit", "envelope")
STOP_RULES = ("marginal", "potential_change")


@dataclass(frozen=True)
class SinkhornResult:
    """Output of :func:`sinkhorn`.

    plan: ``[..., N, M]`` transport plan.
    f: ``[..., N]`` sample-side potential (cost units).
    g: ``[..., M]`` Q-side potential (cost units).
    n_iter: iterations run (the most of any problem).
    marginal_error: ``[...]`` L1 distance of the plan's marginals to ``(a, b)``, summed.
    """

    plan: Tensor
    f: Tensor
    g: Tensor
    n_iter: int
    marginal_error: Tensor


@dataclass(frozen=True)
class Settings:
    """Per-problem solver settings over the leading shape ``lead`` of a cost: ``eps`` (float64),
    ``caps`` (int64) and ``tols`` (float64, ``-inf``: run to the cap), each ``lead``-shaped."""

    eps: np.ndarray
    caps: np.ndarray
    tols: np.ndarray
    stop: str
    check_every: int

    @staticmethod
    def of(lead, eps, max_iter, tol, stop: str = "marginal", check_every: int = 10) -> Settings:
        """One value for every problem or one per problem (a sequence of ``lead``'s shape);
        a tol of None never stops. A bad value is a ValueError in one line."""
        if tol is None:
            tol = -np.inf
        elif isinstance(tol, (list, tuple)) and None in tol:
            tol = [-np.inf if t is None else t for t in tol]
        lead = tuple(lead)
        named = ((eps, "eps"), (tol, "tol"), (max_iter, "max_iter"))
        eps, tol, caps = (_spread(x, lead, name) for x, name in named)
        whole = caps.astype(np.int64)
        out = Settings(eps, whole, tol, stop, int(check_every))
        if not (eps > 0).all():
            raise ValueError(f"eps must be > 0, got {_show(eps)}")
        if not ((caps >= 1) & (whole == caps)).all():
            raise ValueError(f"max_iter must be whole numbers >= 1, got {_show(caps)}")
        if stop not in STOP_RULES:
            raise ValueError(f"stop must be one of {STOP_RULES}, got {stop!r}")
        if out.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        return out

    def kwargs(self) -> dict:
        """These settings as :func:`sinkhorn`'s keyword arguments."""
        s = self
        return dict(eps=s.eps, max_iter=s.caps, tol=s.tols, stop=s.stop, check_every=s.check_every)

    def take(self, idx: np.ndarray) -> Settings:
        """The settings of the problems ``idx`` (of a ``[P]`` stack)."""
        return Settings(self.eps[idx], self.caps[idx], self.tols[idx], self.stop, self.check_every)

    @property
    def checks(self) -> bool:
        """Whether any problem can stop before its cap."""
        return bool(np.isfinite(self.tols).any())


def _spread(value, lead: tuple, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(lead, float(arr))
    if arr.shape != lead and not (arr.ndim == 1 and arr.size == int(np.prod(lead))):
        raise ValueError(f"{name} must be one value or one per problem {lead}, got {arr.shape}")
    return arr.reshape(lead)


def _show(x: np.ndarray):
    return x.item() if x.size == 1 else x.tolist()


def check_inputs(cost: Tensor, a: Tensor, b: Tensor) -> None:
    if cost.dim() < 2:
        raise ValueError(f"cost must be [..., N, M], got shape {tuple(cost.shape)}")
    if a.shape != cost.shape[:-1]:
        raise ValueError(f"a must have shape {tuple(cost.shape[:-1])}, got {tuple(a.shape)}")
    if b.shape != cost.shape[:-2] + cost.shape[-1:]:
        raise ValueError(
            f"b must have shape {tuple(cost.shape[:-2] + cost.shape[-1:])}, got {tuple(b.shape)}"
        )
    if not (a.dtype == b.dtype == cost.dtype):
        # Mixed dtypes would promote silently (often to float64); make the caller choose.
        raise TypeError(
            f"cost, a and b must share one dtype, got {cost.dtype}, {a.dtype}, {b.dtype}"
        )
    if not cost.dtype.is_floating_point:
        raise TypeError(f"cost must be floating point, got {cost.dtype}")


def _eps_like(s: Settings, cost: Tensor) -> Tensor:
    """eps as ``[..., 1, 1]`` in cost's dtype (rounded once, as a Python float would be)."""
    return torch.as_tensor(s.eps, dtype=cost.dtype, device=cost.device)[..., None, None]


def _statistic(s: Settings, e: Tensor, neg_c, u, v, v_prev, b) -> np.ndarray:
    """Each problem's stopping statistic: the L1 error of its Q-side marginal ("marginal"), or
    ``sum_j |g_j - g_j^prev|`` in cost units ("potential_change", the released code's)."""
    with torch.no_grad():
        if s.stop == "marginal":
            col = torch.logsumexp(u.unsqueeze(-1) + neg_c, dim=-2) + v
            err = (col.exp() - b).abs().sum(-1)
        else:
            err = (e[..., 0] * (v - v_prev)).abs().sum(-1)
    return err.cpu().numpy()


def sinkhorn(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    eps,
    max_iter,
    tol=None,
    check_every: int = 10,
    stop: str = "marginal",
    init: tuple[Tensor, Tensor] | None = None,
) -> SinkhornResult:
    """Entropic OT ``min_T <C, T> - eps H(T)`` over ``T 1 = a, T^T 1 = b`` (log domain).

    ``eps``, ``max_iter`` and ``tol``: one value, or one per problem of the leading shape.
    Stopping, each problem on its own:
      * ``tol=None``: exactly ``max_iter`` iterations (no host synchronisation at all).
      * ``stop="marginal"``: stop when the L1 error of the Q-side marginal is below ``tol``;
        checked every ``check_every`` iterations, so the host waits on the device only at the
        checks.
      * ``stop="potential_change"``: the released code's rule, stop when
        ``sum_j |g_j - g_j^prev|`` (cost units) is below ``tol``; the released code uses
        ``tol=0.1, check_every=1`` and stops after 3-5 iterations in practice.

    ``init=(f, g)`` warm-starts from the potentials of an earlier solve (e.g. the previous
    batch against the same prototypes). The loop begins with the g-update, so only ``f`` is
    read; the pair is accepted so a ``SinkhornResult``'s ``(f, g)`` can be passed back as is.

    Autograd runs through the iterations when the inputs require grad (the "unrolled"
    gradient); wrap in ``torch.no_grad()`` to avoid storing them.
    """
    check_inputs(cost, a, b)
    s = Settings.of(cost.shape[:-2], eps, max_iter, tol, stop, check_every)
    e = _eps_like(s, cost)
    neg_c = -cost / e
    log_a, log_b = torch.log(a), torch.log(b)
    u = torch.zeros_like(a)
    if init is not None:
        if init[0].shape != a.shape:
            raise ValueError(f"init f must have shape {tuple(a.shape)}, got {tuple(init[0].shape)}")
        u = init[0].to(cost.dtype) / e[..., 0]
    v = torch.zeros_like(b)
    running = np.ones(s.caps.shape, dtype=bool)
    n_iter = 0
    for it in range(int(s.caps.max())):
        active = running & (it < s.caps)
        if not active.any():
            break
        v_prev = v
        # v_j = log b_j - LSE_i(u_i - C_ij / eps); u_i = log a_i - LSE_j(v_j - C_ij / eps)
        v_new = log_b - torch.logsumexp(u.unsqueeze(-1) + neg_c, dim=-2)
        u_new = log_a - torch.logsumexp(v_new.unsqueeze(-2) + neg_c, dim=-1)
        if active.all():
            u, v = u_new, v_new
        else:  # a stopped problem keeps its potentials (and its gradient path) as they were
            on = torch.as_tensor(active, device=cost.device).unsqueeze(-1)
            u, v = torch.where(on, u_new, u), torch.where(on, v_new, v)
        n_iter = it + 1
        running = active
        if s.checks and n_iter % s.check_every == 0:
            running = active & ~(_statistic(s, e, neg_c, u, v, v_prev, b) < s.tols)
    log_plan = u.unsqueeze(-1) + v.unsqueeze(-2) + neg_c
    plan = log_plan.exp()
    with torch.no_grad():
        merr = (plan.sum(-1) - a).abs().sum(-1) + (plan.sum(-2) - b).abs().sum(-1)
    ev = e[..., 0]
    return SinkhornResult(plan=plan, f=ev * u, g=ev * v, n_iter=n_iter, marginal_error=merr)


def _solve_adjoint(plan: Tensor, rows: Tensor, cost: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Solve ``[[diag(a), T], [T^T, diag(b)]] [p; q] = [r; c]`` with ``a = T1, b = T^T 1`` and
    ``r = (T * cost) 1``, given ``rows``: each row of the plan divided by its mass (``T = diag(a)
    rows``, exact after the loop's last update, whose rows are ``softmax((g - C) / eps)``).

    The matrix is the Jacobian of the marginal constraints with respect to the potentials; it
    is PSD with the null vector ``(1, -1)``, and ``sum(r) == sum(c)`` makes the system
    consistent. Each row equation gives ``p_i = sum_j rows_ij (cost_ij - q_j)``, which is
    eliminated (no division by a mass, so a sample of zero mass gets the limit of its gradient
    as its mass goes to 0, and makes nothing singular); the Schur complement on the Q side,
    pinned on its null direction by a rank-one term, is one small dense solve per problem.
    """
    b_hat = plan.sum(-2)
    row_cost = (rows * cost).sum(-1)
    schur = torch.diag_embed(b_hat) - plan.transpose(-1, -2) @ rows
    # rhs is orthogonal to 1, so adding s 11^T leaves the solution on 1-perp (where it is unique).
    s = b_hat.mean(-1, keepdim=True).unsqueeze(-1)
    rhs = c - (plan.transpose(-1, -2) @ row_cost.unsqueeze(-1)).squeeze(-1)
    system = schur + s
    sv = torch.linalg.svdvals(system)
    cond = (sv[..., 0] / sv[..., -1]).max()
    if not cond < 0.01 / torch.finfo(plan.dtype).eps:
        # the plan is (nearly) a deterministic map: the potentials, and so this gradient, are
        # not determined in floating point (eps small against the cost differences)
        raise FloatingPointError(
            f"grad='implicit': the adjoint system is singular in {plan.dtype} (condition "
            f"number {float(cond):.1e}): eps is too small for these costs; use "
            "grad='unrolled' or a larger eps"
        )
    q = torch.linalg.solve(system, rhs)
    p = row_cost - (rows @ q.unsqueeze(-1)).squeeze(-1)
    return p, q


def _center_finite(x: Tensor) -> Tensor:
    """``x`` minus the mean of its finite entries (along the last dimension)."""
    finite = torch.isfinite(x)
    total = torch.where(finite, x, 0.0).sum(-1, keepdim=True)
    return x - total / finite.sum(-1, keepdim=True).clamp_min(1)


def _center_pair(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    # (p + t, q - t) is the same gradient on the feasible set; report the zero-mean p.
    t = p.mean(-1, keepdim=True)
    return p - t, q + t


def _grads(ctx, grad_c, grad_a, grad_b):
    need = ctx.needs_input_grad
    return (grad_c, grad_a if need[1] else None, grad_b if need[2] else None, None)


class _ImplicitOT(torch.autograd.Function):
    """<C, T*> with the exact gradient at the converged plan (implicit function theorem)."""

    @staticmethod
    def forward(ctx, cost, a, b, s):
        with torch.no_grad():
            res = sinkhorn(cost, a, b, **s.kwargs())
        ctx.save_for_backward(cost, res.plan, res.g, _eps_like(s, cost))
        return (cost * res.plan).sum((-2, -1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        cost, plan, g, e = ctx.saved_tensors
        rows = torch.softmax((g.unsqueeze(-2) - cost) / e, dim=-1)
        p, q = _center_pair(*_solve_adjoint(plan, rows, cost, (plan * cost).sum(-2)))
        go = grad_out.unsqueeze(-1)
        grad_c = None
        if ctx.needs_input_grad[0]:
            inner = 1.0 + (p.unsqueeze(-1) + q.unsqueeze(-2) - cost) / e
            grad_c = plan * inner * go.unsqueeze(-1)
        return _grads(ctx, grad_c, p * go, q * go)


class _EnvelopeOT(torch.autograd.Function):
    """Entropic value <C, T> - eps H(T) with the dual-potential (Danskin) gradient."""

    @staticmethod
    def forward(ctx, cost, a, b, s):
        with torch.no_grad():
            res = sinkhorn(cost, a, b, **s.kwargs())
            e = _eps_like(s, cost)
            log_plan = (res.f.unsqueeze(-1) + res.g.unsqueeze(-2) - cost) / e
            # T log T is 0 where T is (a row of zero mass: log T is -inf there)
            t_log_t = torch.where(res.plan > 0, res.plan * log_plan, 0.0)
            value = (res.plan * cost).sum((-2, -1)) + e[..., 0, 0] * t_log_t.sum((-2, -1))
        ctx.save_for_backward(res.plan, res.f, res.g)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        plan, f, g = ctx.saved_tensors
        # a zero-mass entry's potential is -inf (the entropy's slope at 0): its gradient is
        # that, and the centring is over the others so it never reaches them
        go = grad_out.unsqueeze(-1)
        grad_c = plan * go.unsqueeze(-1) if ctx.needs_input_grad[0] else None
        return _grads(ctx, grad_c, _center_finite(f) * go, _center_finite(g) * go)


def reference_ot(cost: Tensor, a: Tensor, b: Tensor, s: Settings, grad: str) -> Tensor:
    """``<C, T>`` per problem (``[...]``) with the gradient ``grad`` (see :func:`.ot.ot_loss`),
    the plan from :func:`sinkhorn` under the settings ``s``."""
    if grad == "unrolled":
        return (cost * sinkhorn(cost, a, b, **s.kwargs()).plan).sum((-2, -1))
    fn = _ImplicitOT if grad == "implicit" else _EnvelopeOT
    return fn.apply(cost, a, b, s)
