"""The OT loss of P independent problems with P different solver settings, in one call.

A population of stage-2 settings (``trainables.population``) solves one ``[B, M]`` problem per
member at every step, each with its own ``eps`` (lambda), iteration cap and tolerance. This
module solves them together: member ``m`` gets exactly the iterates, value and gradient that
:func:`.sinkhorn.ot_loss` (``grad="unrolled"``) gives for its problem alone with its settings.

How different caps and tolerances share one loop: every member runs the same iteration body,
and a member that has reached its cap, or met its stopping rule at a check, is *frozen*: its
scalings (potentials) keep their values, so its plan is the one its own loop would have stopped
at. The fused path drops frozen members from its arrays (the running ones are gathered into
compact arrays, again each time one stops) and its reverse pass runs each member back from its
own last iteration; the log-domain paths mask frozen members (``where(active, new, old)``; the
reverse pass gets the same from autograd through ``torch.where`` or by hand). The loop ends when
every member is frozen. Each stopping rule is evaluated per member (``"marginal"``: the member's L1
error of its Q-side marginal; ``"potential_change"``: its ``sum_j |g_j - g_j^prev|``), which is
what :func:`.sinkhorn.sinkhorn` computes for a single problem.

Which path: as ``ot_loss(impl="auto")`` decides per call, each member takes the scaling-domain
path when ``max |C_m| / eps_m`` is in the dtype's
safe range (a float32 member beyond float32's range but inside float64's: fused in float64),
else the log-domain loop (in NumPy with a hand-written reverse pass on the CPU, under autograd
elsewhere); each group is solved in one call. On the CPU, for problems under
``fused.COMPILED_MAX_ENTRIES`` entries, every member runs the compiled loops of :mod:`.compiled`
(scaling or log domain), one member after another inside one call, each exactly its own
iterations (the freezing above is then not needed); the shared loops with freezing run in
torch elsewhere (or in NumPy on request).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .fused import _LIMIT, _XP, COMPILED_MAX_ENTRIES
from .sinkhorn import STOP_RULES

__all__ = ["batched_ot_loss"]


def _stats(xp, rule: str, eps, kt, u, v, v_before, b):
    """Each member's stopping statistic (``[P]``), as :func:`.fused._stop_error` computes it
    for one problem."""
    if rule == "marginal":
        return xp.abs(v * xp.mv(kt, u) - b).sum(axis=-1)
    change = xp.log(v) if v_before is None else xp.log(v) - xp.log(v_before)
    return (eps[:, None] * xp.abs(change)).sum(axis=-1)


@dataclass
class _Segment:
    """Iterations ``start..end-1`` of the members ``idx`` (the ones still running), in compact
    arrays with the iteration first: ``us[j]`` the u before iteration ``start + j`` (``us[T]``
    after the last), ``vs``, ``ss``, ``rs`` the v, ``K v`` and ``K^T u`` of each iteration
    (allocated for the most iterations the members may run; the first ``end - start`` used)."""

    idx: np.ndarray
    start: int
    end: int
    us: object
    vs: object
    ss: object
    rs: object


def _fused_forward(xp, cost, a, b, eps, caps: np.ndarray, tols: np.ndarray, rule, every):
    """The scaling-domain iterations with freezing; returns the values and the replay.

    The running members are gathered into compact arrays, which run without masking until one
    of them stops (its cap, or its stopping rule at a check); then the stopped members' final
    scalings are written back and the rest are gathered again: a segment per change of the
    running set (at most one per member), not a mask per iteration."""
    k = xp.exp(-cost / eps[:, None, None])
    kt = xp.t(k)
    u = xp.ones_like(a)
    v = xp.ones_like(b)
    n_done = np.zeros_like(caps)
    alive = np.flatnonzero(caps > 0)
    segments: list[_Segment] = []
    it = 0
    while alive.size:
        ii = xp.index(alive, a)
        kc, ktc, ac, bc, epsc = k[ii], kt[ii], a[ii], b[ii], eps[ii]
        n, most = alive.size, int(caps[alive].max()) - it
        us = xp.empty((most + 1, n, a.shape[-1]), a)
        vs = xp.empty((most, n, b.shape[-1]), b)
        ss = xp.empty((most, n, a.shape[-1]), a)
        rs = xp.empty((most, n, b.shape[-1]), b)
        us[0] = u[ii]
        vc = v[ii]
        first_cap = int(caps[alive].min())
        j = 0
        while True:
            r = xp.mv(ktc, us[j])
            v_new = bc / r
            s = xp.mv(kc, v_new)
            us[j + 1] = ac / s
            v_before = vc if it else None
            vc = v_new
            vs[j] = vc
            ss[j] = s
            rs[j] = r
            it += 1
            j += 1
            check = it % every == 0
            if it < first_cap and not check:
                continue
            stops = it >= caps[alive]
            if check:
                err = xp.to_host(_stats(xp, rule, epsc, ktc, us[j], vc, v_before, bc))
                stops |= err < tols[alive]
            if stops.any():
                break
        segments.append(_Segment(alive, it - j, it, us, vs, ss, rs))
        u[ii] = us[j]
        v[ii] = vc
        n_done[alive[stops]] = it
        alive = alive[~stops]
    plan = u[..., :, None] * k * v[..., None, :]
    return (cost * plan).sum(axis=(-2, -1)), (k, kt, eps, u, v, segments, n_done)


def _fused_backward(xp, g, cost, saved):
    """The reverse pass, segment by segment from the last: a member's adjoints start at its
    own last iteration (the plan's direct terms) and run back through its segments."""
    k, kt, eps, u_last, v_last, segments, n_done = saved
    g = g[..., None, None]
    uv = u_last[..., :, None] * v_last[..., None, :]
    t_bar = g * cost
    grad_cost = g * uv * k
    k_bar = t_bar * uv
    tk = t_bar * k
    u_bar = xp.mv(tk, v_last)  # each member's, until its segments replace it
    vt0 = -xp.mv(xp.t(tk), u_last)
    a_bar, b_bar = xp.zeros_like(u_last), xp.zeros_like(v_last)
    for seg in reversed(segments):
        ii = xp.index(seg.idx, u_last)
        kc, ktc = k[ii], kt[ii]
        steps = seg.end - seg.start
        ws = xp.empty(seg.ss[:steps].shape, u_last)  # [T, n, N]
        ps = xp.empty(seg.vs[:steps].shape, v_last)  # [T, n, M]
        zs = xp.empty(seg.vs[:steps].shape, v_last)
        q_sum = xp.zeros_like(u_last[ii])
        ends_here = xp.asarray(n_done[seg.idx] == seg.end, u_last)[:, None]
        ub = u_bar[ii]
        for j in range(steps - 1, -1, -1):
            q = ub / seg.ss[j]
            ws[j] = q * seg.us[j + 1]
            vt = xp.mv(ktc, ws[j])
            if j == steps - 1:  # the direct term, for the members whose last step it is
                vt = vt + vt0[ii] * ends_here
            ps[j] = vt / seg.rs[j]
            zs[j] = ps[j] * seg.vs[j]
            ub = xp.mv(kc, zs[j])
            q_sum = q_sum + q
        u_bar[ii] = ub
        a_bar[ii] = a_bar[ii] + q_sum
        b_bar[ii] = b_bar[ii] - ps.sum(axis=0)
        # sum over the segment's iterations of the outer products, member by member
        w_v = xp.bmm_t(ws, seg.vs[:steps])  # [n, N, M]
        u_z = xp.bmm_t(seg.us[:steps], zs)
        k_bar[ii] = k_bar[ii] - w_v + u_z
    return grad_cost - k_bar * k / eps[:, None, None], a_bar, b_bar


class _BatchedFused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, a, b, eps, caps, tols, rule, every, backend):
        xp = _XP[backend]
        value, saved = _fused_forward(
            xp, *(xp.wrap(x) for x in (cost, a, b, eps)), caps, tols, rule, every
        )
        ctx.xp, ctx.replay = xp, saved
        ctx.save_for_backward(cost, a, b)
        return xp.unwrap(value, cost)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        cost, _, _ = ctx.saved_tensors
        xp = ctx.xp
        grads = _fused_backward(xp, xp.wrap(grad_out), xp.wrap(cost), ctx.replay)
        return (
            *(
                xp.unwrap(g, cost) if need else None
                for g, need in zip(grads, ctx.needs_input_grad[:3], strict=True)
            ),
            *([None] * 6),
        )


def _lse(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m).squeeze(axis)


def _log_forward(cost, a, b, eps, caps: np.ndarray, tols: np.ndarray, rule, every):
    """The log-domain iterations of :func:`.sinkhorn.sinkhorn` with freezing, in NumPy; returns
    the values and what the reverse pass replays (the potentials of every iteration)."""
    neg_c = -cost / eps[:, None, None]
    la, lb = np.log(a), np.log(b)
    u, v = np.zeros_like(a), np.zeros_like(b)
    active = caps > 0
    us, vs, acts = [u], [], []
    for it in range(int(caps.max())):
        act = active & (it < caps)
        if not act.any():
            break
        v_prev = v
        v_new = lb - _lse(u[:, :, None] + neg_c, 1)
        u_new = la - _lse(v_new[:, None, :] + neg_c, 2)
        u = np.where(act[:, None], u_new, u)
        v = np.where(act[:, None], v_new, v)
        us.append(u)
        vs.append(v)
        acts.append(act)
        active = act & (it + 1 < caps)
        if (it + 1) % every == 0:
            if rule == "marginal":
                col = _lse(u[:, :, None] + neg_c, 1) + v
                err = np.abs(np.exp(col) - b).sum(-1)
            else:
                err = np.abs(eps[:, None] * (v - v_prev)).sum(-1)
            active &= ~(err < tols)
    plan = np.exp(u[:, :, None] + v[:, None, :] + neg_c)
    n_done = np.sum(np.stack(acts, 0), 0)
    return (cost * plan).sum(axis=(-2, -1)), (neg_c, la, lb, eps, plan, us, vs, acts, n_done)


def _log_backward(g, cost, a, b, saved):
    """Reverse pass of :func:`_log_forward` (the softmax Jacobians of each log-sum-exp, formed
    from the stored potentials), times ``g``; returns the gradients for cost, a and b."""
    neg_c, la, lb, eps, plan, us, vs, acts, n_done = saved
    g3 = g[:, None, None]
    n_bar = g3 * cost * plan  # through the plan's exponent
    grad_c = g3 * plan  # the direct term
    u_bar = n_bar.sum(-1)
    v0 = n_bar.sum(-2)
    v_bar = v0
    la_bar, lb_bar = np.zeros_like(la), np.zeros_like(lb)
    for t in range(len(acts) - 1, -1, -1):
        act = acts[t][:, None]
        first = (n_done == t + 1)[:, None]
        u_t, v_t, u_prev = us[t + 1], vs[t], us[t]
        # u_t = la - LSE_j(v_t + N): row softmax B; v_t = lb - LSE_i(u_prev + N): column softmax A
        rows = np.exp(v_t[:, None, :] + neg_c + u_t[:, :, None] - la[:, :, None])
        ub = np.where(act, u_bar, 0.0)
        la_bar += ub
        vb = np.where(first, v_bar, 0.0) - (ub[:, :, None] * rows).sum(1)
        vb = np.where(act, vb, 0.0)
        cols = np.exp(u_prev[:, :, None] + neg_c + v_t[:, None, :] - lb[:, None, :])
        lb_bar += vb
        n_bar -= ub[:, :, None] * rows + vb[:, None, :] * cols
        u_bar = np.where(act, -(cols * vb[:, None, :]).sum(2), u_bar)
    return grad_c - n_bar / eps[:, None, None], la_bar / a, lb_bar / b


class _BatchedLog(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, a, b, eps, caps, tols, rule, every):
        arrays = [x.detach().numpy() for x in (cost, a, b, eps)]
        # a zero weight (an underflowed softmax) gives log 0 = -inf and then NaN, as in the
        # reference loop; the member then diverges there, without NumPy's warnings
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            value, saved = _log_forward(*arrays, caps, tols, rule, every)
        ctx.replay = saved
        ctx.save_for_backward(cost, a, b)
        return torch.from_numpy(np.asarray(value, dtype=arrays[0].dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        cost, a, b = ctx.saved_tensors
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            grads = _log_backward(
                grad_out.numpy(), *(x.detach().numpy() for x in (cost, a, b)), ctx.replay
            )
        out = [
            torch.from_numpy(np.asarray(gr, dtype=cost.numpy().dtype)) if need else None
            for gr, need in zip(grads, ctx.needs_input_grad[:3], strict=True)
        ]
        return (*out, *([None] * 5))


def _log_domain(cost, a, b, eps: Tensor, caps: np.ndarray, tols: np.ndarray, rule, every):
    """The log-domain loop of :func:`.sinkhorn.sinkhorn` with freezing, under autograd (off
    the CPU; there :func:`_log_forward` and its hand-written reverse pass run in NumPy)."""
    e = eps[:, None]
    neg_c = -cost / eps[:, None, None]
    log_a, log_b = torch.log(a), torch.log(b)
    u, v = torch.zeros_like(a), torch.zeros_like(b)
    active = caps > 0
    for it in range(int(caps.max())):
        act_np = active & (it < caps)
        if not act_np.any():
            break
        act = torch.as_tensor(act_np, device=cost.device)[:, None]
        v_prev = v
        v_new = log_b - torch.logsumexp(u.unsqueeze(-1) + neg_c, dim=-2)
        u_new = log_a - torch.logsumexp(v_new.unsqueeze(-2) + neg_c, dim=-1)
        u = torch.where(act, u_new, u)
        v = torch.where(act, v_new, v)
        active = act_np & (it + 1 < caps)
        if (it + 1) % every == 0:
            with torch.no_grad():
                if rule == "marginal":
                    col = torch.logsumexp(u.unsqueeze(-1) + neg_c, dim=-2) + v
                    err = (col.exp() - b).abs().sum(-1)
                else:
                    err = (e * (v - v_prev)).abs().sum(-1)
            active &= ~(err.cpu().numpy() < tols)
    plan = (u.unsqueeze(-1) + v.unsqueeze(-2) + neg_c).exp()
    return (cost * plan).sum((-2, -1))


def batched_ot_loss(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    eps: Sequence[float],
    max_iter: Sequence[int],
    tol: Sequence[float | None],
    stop: str = "marginal",
    check_every: int = 10,
    impl: str = "auto",
    backend: str | None = None,
) -> Tensor:
    """``<C_m, T*_m>`` for P problems, ``[P]``, differentiable in ``cost``, ``a`` and ``b``.

    cost ``[P, N, M]``, a ``[P, N]``, b ``[P, M]``; eps, max_iter, tol: one entry per problem
    (``tol`` None: exactly ``max_iter`` iterations). Member m equals
    ``ot_loss(cost[m], a[m], b[m], eps=eps[m], max_iter=max_iter[m], tol=tol[m], stop=stop,
    check_every=check_every, grad="unrolled", impl=impl)`` (up to rounding). ``impl``:
    ``"auto"`` (per member, as ``ot_loss`` decides), ``"fused"`` or ``"reference"``.
    ``backend`` of the scaling-domain members: ``"numba"`` (each member runs its own compiled
    loop, :mod:`.compiled`, and gets bit for bit what ``ot_loss`` gives it alone; the CPU's
    default below ``fused.COMPILED_MAX_ENTRIES`` entries per problem), ``"numpy"`` (the CPU's
    default above), ``"triton"`` (CUDA's default for float32 problems of one tile: the Triton
    kernels of :mod:`.triton_ot`, one program per member, each stopping by its own tol on
    chip; a member gets exactly what ``ot_loss`` gives it alone there; the float64 and
    log-domain members go through torch) or ``"torch"`` (the default elsewhere): one shared
    loop with freezing.
    """
    if cost.dim() != 3:
        raise ValueError(f"cost must be [P, N, M], got shape {tuple(cost.shape)}")
    p = cost.shape[0]
    if a.shape != cost.shape[:2] or b.shape != (p, cost.shape[2]):
        raise ValueError(
            f"a must be {tuple(cost.shape[:2])} and b {(p, cost.shape[2])}, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not (len(eps) == len(max_iter) == len(tol) == p):
        raise ValueError(f"eps, max_iter and tol need one entry per problem ({p})")
    if stop not in STOP_RULES:
        raise ValueError(f"stop must be one of {STOP_RULES}, got {stop!r}")
    if impl not in ("auto", "fused", "reference"):
        raise ValueError(f"impl must be auto, fused or reference, got {impl!r}")
    if min(eps) <= 0 or min(max_iter) < 1 or check_every < 1:
        raise ValueError("every eps must be > 0, every max_iter >= 1, and check_every >= 1")
    caps = np.asarray(max_iter, dtype=np.int64)
    tols = np.asarray([-np.inf if t is None else t for t in tol], dtype=np.float64)
    on_cpu = cost.device.type == "cpu"
    # per member: 0 the log-domain loop, 1 fused in cost's dtype, 2 fused in float64
    limit = _LIMIT.get(cost.dtype)
    if impl == "reference" or limit is None:
        path = np.zeros(p, dtype=np.int64)
    elif impl == "fused":
        path = np.ones(p, dtype=np.int64)
    else:
        if on_cpu:  # in NumPy: the same numbers (an exact maximum, eps in cost's dtype, IEEE /)
            c = cost.detach().numpy()
            ratio = np.abs(c).max(axis=(1, 2)) / np.asarray(eps, dtype=c.dtype)
        else:
            eps_c = torch.as_tensor(list(eps), dtype=cost.dtype, device=cost.device)
            ratio = (cost.detach().abs().amax(dim=(-2, -1)) / eps_c).cpu().numpy()
        path = np.where(ratio <= limit, 1, 0)
        if cost.dtype == torch.float32:
            path = np.where((path == 0) & (ratio <= _LIMIT[torch.float64]), 2, path)
    small = cost.shape[1] * cost.shape[2] < COMPILED_MAX_ENTRIES
    backend = backend or _default_backend(cost, small)
    if backend == "triton":
        _check_triton(cost)
    elif backend not in ("numba", "numpy", "torch") or (backend != "torch" and not on_cpu):
        raise ValueError(
            f"backend must be numba or numpy (CPU), triton (CUDA) or torch, got {backend!r}"
        )
    if backend == "numba":
        return _numba_members(cost, a, b, eps, path, caps, tols, stop, check_every)
    eps_t = torch.as_tensor(list(eps), dtype=cost.dtype, device=cost.device)
    parts, order = [], []
    for kind in (1, 2, 0):
        idx = np.flatnonzero(path == kind)
        if idx.size == 0:
            continue
        sel = torch.as_tensor(idx, device=cost.device)
        args = [cost[sel], a[sel], b[sel], eps_t[sel]]
        if kind == 2:  # eps from the given values, not from its float32 rounding
            eps64 = torch.as_tensor([eps[i] for i in idx], dtype=torch.float64, device=cost.device)
            args = [*(x.double() for x in args[:3]), eps64]
        rest = (caps[idx], tols[idx], stop, check_every)
        if kind == 1 and backend == "triton":
            from .triton_ot import triton_members

            member_eps = [eps[i] for i in idx]
            kw = dict(caps=caps[idx].tolist(), tols=tols[idx].tolist(), stop=stop)
            parts.append(triton_members(*args[:3], eps=member_eps, check_every=check_every, **kw))
        elif kind:
            xp = "torch" if backend == "triton" else backend  # float64: Triton is float32 only
            parts.append(_BatchedFused.apply(*args, *rest, xp).to(cost.dtype))
        elif on_cpu:
            parts.append(_BatchedLog.apply(*args, *rest))
        else:
            parts.append(_log_domain(*args, *rest))
        order.append(idx)
    if len(parts) == 1:
        return parts[0]
    perm = torch.as_tensor(np.argsort(np.concatenate(order)), device=cost.device)
    return torch.cat(parts)[perm]


def _default_backend(cost: Tensor, small: bool) -> str:
    """numba below ``COMPILED_MAX_ENTRIES`` entries per problem on a CPU, else NumPy; on CUDA
    the Triton kernels (one program per member) for float32 problems of one tile, else torch."""
    if cost.device.type == "cpu":
        return "numba" if small else "numpy"
    return "triton" if cost.device.type == "cuda" and _triton_takes(cost) else "torch"


def _triton_takes(cost: Tensor) -> bool:
    from .triton_ot import members_fit

    return members_fit(cost.dtype, tuple(cost.shape))


def _check_triton(cost: Tensor) -> None:
    from .triton_ot import available, interpreted

    if not available():
        raise ValueError("backend='triton' needs the triton package")
    if cost.device.type != "cuda" and not interpreted():
        raise ValueError(
            f"backend must be numba or numpy (CPU), triton (CUDA) or torch, got 'triton' for "
            f"{cost.device} tensors (on a CPU only in Triton's interpreter: TRITON_INTERPRET=1)"
        )
    if not _triton_takes(cost):
        raise ValueError(
            f"backend='triton' takes float32 problems of one tile, got {cost.dtype} "
            f"{tuple(cost.shape)}"
        )


def _numba_members(cost, a, b, eps, path, caps, tols, stop, check_every):
    """Every member in one compiled call on the whole stack, each on its path (no selection:
    each runs its own loop, bit for bit what it gets alone)."""
    from .compiled import compiled_ot

    return compiled_ot(
        cost, a, b, eps=np.asarray(eps, dtype=np.float64), caps=caps, tols=tols, stop=stop,
        check_every=check_every, path=path,
    )  # fmt: skip
