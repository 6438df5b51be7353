"""Log-domain Sinkhorn and the differentiable OT loss of the paper (Eq. 10).

Conventions (paper Sec. 4): rows are the weighted training samples P(w) with mass ``a``,
columns are the meta distribution Q with mass ``b``; ``cost`` is ``[..., N, M]``. Any leading
dimensions are independent problems solved together.

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

__all__ = ["GRAD_MODES", "IMPLS", "STOP_RULES", "SinkhornResult", "ot_loss", "sinkhorn"]

GRAD_MODES = ("unrolled", "implicit", "envelope")
IMPLS = ("auto", "reference", "fused")
STOP_RULES = ("marginal", "potential_change")


@dataclass(frozen=True)
class SinkhornResult:
    """Output of :func:`sinkhorn`.

    plan: ``[..., N, M]`` transport plan.
    f: ``[..., N]`` sample-side potential (cost units).
    g: ``[..., M]`` Q-side potential (cost units).
    n_iter: iterations run.
    marginal_error: ``[...]`` L1 distance of the plan's marginals to ``(a, b)``, summed.
    """

    plan: Tensor
    f: Tensor
    g: Tensor
    n_iter: int
    marginal_error: Tensor


def _check_inputs(cost: Tensor, a: Tensor, b: Tensor, eps: float, max_iter: int) -> None:
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
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")


def _check_stop(stop: str, check_every: int) -> None:
    if stop not in STOP_RULES:
        raise ValueError(f"stop must be one of {STOP_RULES}, got {stop!r}")
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")


def _marginal_errors(log_plan: Tensor, a: Tensor, b: Tensor) -> Tensor:
    plan = log_plan.exp()
    return (plan.sum(-1) - a).abs().sum(-1) + (plan.sum(-2) - b).abs().sum(-1)


def sinkhorn(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    eps: float,
    max_iter: int,
    tol: float | None = None,
    check_every: int = 10,
    stop: str = "marginal",
    init: tuple[Tensor, Tensor] | None = None,
) -> SinkhornResult:
    """Entropic OT ``min_T <C, T> - eps H(T)`` over ``T 1 = a, T^T 1 = b`` (log domain).

    Stopping:
      * ``tol=None``: exactly ``max_iter`` iterations (no host synchronisation at all).
      * ``stop="marginal"``: stop when the largest (over the batch) L1 error of the Q-side
        marginal is below ``tol``; checked every ``check_every`` iterations, so the host waits
        on the device only at the checks.
      * ``stop="potential_change"``: the released code's rule, stop when the batch mean of
        ``sum_j |g_j - g_j^prev|`` (cost units) is below ``tol``; the released code uses
        ``tol=0.1, check_every=1`` and stops after 3-5 iterations in practice.

    ``init=(f, g)`` warm-starts from the potentials of an earlier solve (e.g. the previous
    batch against the same prototypes). The loop begins with the g-update, so only ``f`` is
    read; the pair is accepted so a ``SinkhornResult``'s ``(f, g)`` can be passed back as is.

    Autograd runs through the iterations when the inputs require grad (the "unrolled"
    gradient); wrap in ``torch.no_grad()`` to avoid storing them.
    """
    _check_inputs(cost, a, b, eps, max_iter)
    _check_stop(stop, check_every)

    neg_c = -cost / eps
    log_a = torch.log(a)
    log_b = torch.log(b)
    if init is None:
        u = torch.zeros_like(a)
    else:
        f0, _g0 = init
        if f0.shape != a.shape:
            raise ValueError(f"init f must have shape {tuple(a.shape)}, got {tuple(f0.shape)}")
        u = f0.to(cost.dtype) / eps
    v = torch.zeros_like(b)

    n_iter = 0
    for it in range(max_iter):
        check = tol is not None and (it + 1) % check_every == 0
        v_prev = v
        # v_j = log b_j - LSE_i(u_i - C_ij / eps); u_i = log a_i - LSE_j(v_j - C_ij / eps)
        v = log_b - torch.logsumexp(u.unsqueeze(-1) + neg_c, dim=-2)
        u = log_a - torch.logsumexp(v.unsqueeze(-2) + neg_c, dim=-1)
        n_iter = it + 1
        if check:
            if stop == "marginal":
                col = torch.logsumexp(u.unsqueeze(-1) + neg_c, dim=-2) + v
                err = (col.exp() - b).abs().sum(-1).max()
            else:
                err = (eps * (v - v_prev)).abs().sum(-1).mean()
            if float(err.detach()) < tol:
                break

    log_plan = u.unsqueeze(-1) + v.unsqueeze(-2) + neg_c
    with torch.no_grad():
        merr = _marginal_errors(log_plan, a, b)
    return SinkhornResult(
        plan=log_plan.exp(), f=eps * u, g=eps * v, n_iter=n_iter, marginal_error=merr
    )


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


class _ImplicitOT(torch.autograd.Function):
    """<C, T*> with the exact gradient at the converged plan (implicit function theorem)."""

    @staticmethod
    def forward(ctx, cost, a, b, eps, kwargs):
        with torch.no_grad():
            res = sinkhorn(cost, a, b, eps=eps, **kwargs)
        ctx.eps = eps
        ctx.save_for_backward(cost, res.plan, res.g)
        return (cost * res.plan).sum((-2, -1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        cost, plan, g = ctx.saved_tensors
        eps = ctx.eps
        rows = torch.softmax((g.unsqueeze(-2) - cost) / eps, dim=-1)
        p, q = _solve_adjoint(plan, rows, cost, (plan * cost).sum(-2))
        p, q = _center_pair(p, q)
        go = grad_out.unsqueeze(-1)
        grad_a = p * go
        grad_b = q * go
        grad_c = None
        if ctx.needs_input_grad[0]:
            inner = 1.0 + (p.unsqueeze(-1) + q.unsqueeze(-2) - cost) / eps
            grad_c = plan * inner * go.unsqueeze(-1)
        return (
            grad_c,
            grad_a if ctx.needs_input_grad[1] else None,
            grad_b if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


class _EnvelopeOT(torch.autograd.Function):
    """Entropic value <C, T> - eps H(T) with the dual-potential (Danskin) gradient."""

    @staticmethod
    def forward(ctx, cost, a, b, eps, kwargs):
        with torch.no_grad():
            res = sinkhorn(cost, a, b, eps=eps, **kwargs)
            log_plan = (res.f.unsqueeze(-1) + res.g.unsqueeze(-2) - cost) / eps
            # T log T is 0 where T is (a row of zero mass: log T is -inf there)
            t_log_t = torch.where(res.plan > 0, res.plan * log_plan, 0.0)
            value = (res.plan * cost).sum((-2, -1)) + eps * t_log_t.sum((-2, -1))
        ctx.save_for_backward(res.plan, res.f, res.g)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        plan, f, g = ctx.saved_tensors
        # a zero-mass entry's potential is -inf (the entropy's slope at 0): its gradient is
        # that, and the centring is over the others so it never reaches them
        f, g = _center_finite(f), _center_finite(g)
        go = grad_out.unsqueeze(-1)
        grad_c = plan * go.unsqueeze(-1) if ctx.needs_input_grad[0] else None
        return (
            grad_c,
            f * go if ctx.needs_input_grad[1] else None,
            g * go if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


def _compiled_log(cost: Tensor, impl: str) -> bool:
    """Whether a problem beyond the scaling domain's range runs the compiled log-domain loop
    (:mod:`.compiled`: the same iterations as :func:`sinkhorn`, with a hand-written reverse
    pass): one small problem on the CPU under ``impl="auto"``; ``"reference"`` keeps the loop
    under autograd."""
    from .fused import COMPILED_MAX_ENTRIES

    return (
        impl == "auto"
        and cost.device.type == "cpu"
        and cost.dim() == 2
        and cost.shape[0] * cost.shape[1] < COMPILED_MAX_ENTRIES
    )


def ot_loss(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    eps: float,
    max_iter: int,
    tol: float | None = None,
    grad: str = "unrolled",
    check_every: int = 10,
    stop: str = "marginal",
    init: tuple[Tensor, Tensor] | None = None,
    impl: str = "auto",
) -> Tensor:
    """The OT loss of paper Eq. 10, ``<C, T*_eps(a, b)>``, one value per problem.

    Returns a scalar for a single ``[N, M]`` problem and ``[...]`` for batched costs.
    Gradients flow to ``a``, ``b`` and ``cost``; on the simplex the gradients to ``a`` and
    ``b`` are defined up to a constant and are reported zero-mean (implicit, envelope).

    grad:
      * ``"unrolled"``: autograd through the Sinkhorn iterations, as the paper and the
        released code do. Memory grows with the iterations; exact for the truncated loop.
      * ``"implicit"``: the exact gradient of ``<C, T*>`` at the plan the loop reached, from
        the optimality conditions (one small linear solve); memory independent of iterations.
        Exact when the loop has converged (use ``tol``).
      * ``"envelope"``: returns and differentiates a *different objective*, the entropic value
        ``<C, T*> - eps H(T*)``, whose gradient is the dual potential (``f`` for ``a``,
        ``g`` for ``b``, ``T*`` for ``cost``). Cheapest; biased for Eq. 10.

    A sample of zero mass (``a_i = 0``): ``"implicit"`` gives every entry the limit of its
    gradient as that mass goes to 0 (its row of the plan read as ``softmax((g - C) / eps)``,
    never divided by the mass); ``"envelope"`` gives that entry ``-inf`` (the entropy's slope
    at 0) and the others their finite gradient. Where the plan is nearly a deterministic map
    (``eps`` small against the cost differences) the implicit gradient is not determined in
    floating point: FloatingPointError, in one line naming the remedy.

    impl (``grad="unrolled"`` only): ``"fused"`` runs the same iterations in the scaling domain
    with a hand-written backward (:mod:`.fused`; equal value and gradient up to rounding): in
    NumPy on a CPU (8-11x faster than the reference on 2 cores), as Triton kernels on CUDA
    for float32 problems of up to 256 rows (:mod:`.triton_ot`), else in torch.
    ``"reference"`` is the log-domain loop under autograd. ``"auto"`` picks ``fused`` whenever
    it is exact: no warm start (``init=None``) and ``max |C| / eps`` inside the dtype's safe
    range (checked once per call); a float32 problem beyond float32's range but inside
    float64's is solved fused in float64 and its value and gradients returned in float32.
    Beyond float64's range too, one small CPU problem (without a warm start) runs the
    log-domain loop compiled with a hand-written reverse pass (:mod:`.compiled`; the same
    iterations), anything else the reference. With a ``tol`` it stops by the same rule at the
    same checks (on CUDA the Triton kernels decide on chip for a single problem that fits one
    tile). ``"fused"`` asked for beyond float64's range (``max |C| / eps`` over 300) is a
    ValueError in one line: the scaling domain would return NaN there.
    """
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    kwargs = dict(max_iter=max_iter, tol=tol, check_every=check_every, stop=stop, init=init)
    if grad == "unrolled" and impl != "reference":
        from .fused import fused_dtype, fused_unrolled_ot

        if impl == "fused" and init is not None:
            raise ValueError("impl='fused' starts from zero potentials: needs init=None")
        if init is None:
            _check_inputs(cost, a, b, eps, max_iter)
            _check_stop(stop, check_every)
            dtype = fused_dtype(cost, eps)
            if impl == "fused" and dtype is None:
                # exp(-C/eps) leaves float64's range: the scaling domain would return NaN
                ratio = float(cost.detach().abs().max()) / eps
                raise ValueError(
                    f"impl='fused' runs in the scaling domain, which max|C|/eps = {ratio:.3g} "
                    "leaves even in float64; use impl='auto' (it changes domain there) or "
                    "impl='reference'"
                )
            if dtype is not None:
                rule = None if tol is None else (stop, tol, check_every)
                args = (cost, a, b) if dtype == cost.dtype else (x.to(dtype) for x in (cost, a, b))
                out = fused_unrolled_ot(*args, eps=eps, n_iter=max_iter, stop=rule)
                return out.to(cost.dtype)
            if _compiled_log(cost, impl):
                from .compiled import LOG, compiled_ot

                out = compiled_ot(
                    cost[None], a[None], b[None], eps=[float(eps)], caps=[max_iter],
                    tols=[-np.inf if tol is None else tol], stop=stop, check_every=check_every,
                    path=[LOG],
                )  # fmt: skip
                return out[0]
    if grad == "unrolled":
        res = sinkhorn(cost, a, b, eps=eps, **kwargs)
        return (cost * res.plan).sum((-2, -1))
    _check_inputs(cost, a, b, eps, max_iter)
    fn = _ImplicitOT if grad == "implicit" else _EnvelopeOT
    return fn.apply(cost, a, b, eps, kwargs)
