"""A faster exact path for the paper's OT loss: a fixed number of Sinkhorn iterations in the
scaling (plain) domain with the reverse-mode derivative of those iterations written by hand.

It computes the same iterates as the log-domain loop of :func:`sinkhorn` started from zero
potentials (``U = exp(u)``, ``V = exp(v)``, ``K = exp(-C/eps)``), so its value and gradient are
those of the "unrolled" reference up to rounding. Per iteration it runs two matrix-vector
products and two divisions instead of two log-sum-exps, and builds no autograd graph: the
backward pass replays the stored scalings (``O(iterations * (N + M))`` memory) and forms the
gradient with respect to ``K`` as one matrix product at the end.

The loop is written once against a small array namespace and runs on one of two backends:

* ``"numba"`` (CPU tensors, the default there below ``COMPILED_MAX_ENTRIES``;
  :mod:`.compiled`): the whole loop of a problem is one compiled function. At stage 2's sizes
  the loop is bound by its calls, not its arithmetic, so this is an order of magnitude faster
  than NumPy's; a batch of problems with a stopping rule (which stops the batch as a whole)
  goes to NumPy;
* ``"numpy"`` (CPU tensors): the reference on the CPU; a NumPy call costs a fraction of a
  torch dispatch, so it runs several times faster than torch there. Inputs are viewed, not
  copied, and saved as tensors, so autograd's in-place checks still apply;
* ``"torch"`` (any device);
* ``"triton"`` (:mod:`.triton_ot`): one program per problem runs all the iterations (its
  tile on chip, or K streamed for wide problems); the default on CUDA for float32 problems of
  up to 256 rows.

The scaling domain is exact only while ``exp(-C/eps)`` neither overflows nor underflows;
:func:`fused_applicable` checks that (``max |C| / eps`` against the dtype's range).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BACKENDS",
    "default_backend",
    "fused_applicable",
    "fused_dtype",
    "fused_unrolled_ot",
]

BACKENDS = ("numba", "numpy", "torch", "triton")

# Problems of fewer entries (N * M) than this take the compiled loop on a CPU, larger ones NumPy:
# the compiled loop's matrix-vector products are plain loops, BLAS's win from about 4,096
# entries (bench/README.md: numba 1.8 ms against NumPy 4.4 ms at B16 K100, 9.4 against 3.7 ms at
# B64 K256, forward and backward at 200 iterations).
COMPILED_MAX_ENTRIES = 4096

# exp(+-LIMIT) and the scalings built from them stay normal numbers, with a margin for the
# marginals (>= 1e-6) and the sums over N or M entries.
_LIMIT = {torch.float32: 30.0, torch.float64: 300.0}


def fused_applicable(cost: Tensor, eps: float) -> bool:
    """True when the scaling domain is safe for ``cost / eps`` (one host sync)."""
    limit = _LIMIT.get(cost.dtype)
    if limit is None:
        return False
    return bool((cost.detach().abs().amax() / eps) <= limit)


def fused_dtype(cost: Tensor, eps: float | Tensor) -> torch.dtype | None:
    """The dtype in which the scaling domain is exact for ``cost / eps`` (one host sync):
    ``cost``'s own where it is safe; float64 for a float32 cost whose ratio fits float64's range
    (the iterates are then computed more precisely, not differently); None where neither holds
    (the log-domain loop is needed). ``eps`` may be a tensor broadcasting against the leading
    dimensions of ``cost`` (one value per problem: every problem must fit)."""
    limit = _LIMIT.get(cost.dtype)
    if limit is None:
        return None
    ratio = cost.detach().abs().amax(dim=(-2, -1)) / eps
    worst = float(ratio.max()) if ratio.numel() else 0.0
    if worst <= limit:
        return cost.dtype
    if cost.dtype == torch.float32 and worst <= _LIMIT[torch.float64]:
        return torch.float64
    return None


class _Torch:
    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    abs = staticmethod(torch.abs)
    ones_like = staticmethod(torch.ones_like)

    @staticmethod
    def mv(k, x):
        """K x over the last dim (torch.mv for one problem: the loop is launch-bound)."""
        return torch.mv(k, x) if k.dim() == 2 else (k @ x.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def t(k):
        return k.transpose(-1, -2).contiguous()

    @staticmethod
    def stack(xs, axis):
        return torch.stack(xs, dim=axis)

    @staticmethod
    def wrap(x):
        return x

    @staticmethod
    def unwrap(x, like):
        return x

    where = staticmethod(torch.where)
    zeros_like = staticmethod(torch.zeros_like)

    @staticmethod
    def asarray(values, like):
        return torch.as_tensor(values, dtype=like.dtype, device=like.device)

    @staticmethod
    def index(idx, like):
        """Integer indices (a NumPy array) for indexing arrays like ``like``."""
        return torch.as_tensor(idx, device=like.device)

    @staticmethod
    def empty(shape, like):
        return torch.empty(shape, dtype=like.dtype, device=like.device)

    @staticmethod
    def bmm_t(x, y):
        """``sum_t x[t, n, :, None] * y[t, n, None, :]``: ``[T, n, I]``, ``[T, n, J]`` ->
        ``[n, I, J]``."""
        return x.permute(1, 2, 0) @ y.transpose(0, 1)

    @staticmethod
    def to_host(x):
        return x.detach().cpu().numpy()


class _NumPy:
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    abs = staticmethod(np.abs)
    ones_like = staticmethod(np.ones_like)

    @staticmethod
    def mv(k, x):
        return np.dot(k, x) if k.ndim == 2 else np.matmul(k, x[..., None])[..., 0]

    @staticmethod
    def t(k):
        return np.ascontiguousarray(np.swapaxes(k, -1, -2))

    @staticmethod
    def stack(xs, axis):
        return np.stack(xs, axis=axis)

    @staticmethod
    def wrap(x):
        return x.detach().numpy()

    @staticmethod
    def unwrap(x, like):
        return torch.from_numpy(np.asarray(x, dtype=like.numpy().dtype))

    where = staticmethod(np.where)
    zeros_like = staticmethod(np.zeros_like)

    @staticmethod
    def asarray(values, like):
        return np.asarray(values, dtype=like.dtype)

    @staticmethod
    def index(idx, like):
        return idx

    @staticmethod
    def empty(shape, like):
        return np.empty(shape, dtype=like.dtype)

    @staticmethod
    def bmm_t(x, y):
        return np.matmul(x.transpose(1, 2, 0), y.transpose(1, 0, 2))

    @staticmethod
    def to_host(x):
        return x


_XP = {"torch": _Torch, "numpy": _NumPy}


def _stop_error(xp, rule: str, eps: float, kt, u, v, v_before, b):
    """The stopping statistic of :func:`.sinkhorn.sinkhorn` in the scaling domain: the largest
    L1 error of the Q-side marginal ``V (K^T U)`` over the batch ("marginal"), or the batch
    mean of ``sum_j |g_j - g_j^prev|`` with ``g = eps log V`` ("potential_change")."""
    if rule == "marginal":
        return xp.abs(v * xp.mv(kt, u) - b).sum(axis=-1).max()
    change = xp.log(v) if v_before is None else xp.log(v) - xp.log(v_before)
    return (eps * xp.abs(change)).sum(axis=-1).mean()


def _forward(xp, cost, a, b, eps: float, n_iter: int, stop: tuple | None = None):
    """The iterations; returns the value and what the backward replays. ``stop``: None for
    exactly ``n_iter`` iterations, else ``(rule, tol, check_every)`` as in ``sinkhorn``."""
    k = xp.exp(-cost / eps)
    kt = xp.t(k)
    u = xp.ones_like(a)
    us, vs, ss, rs = [], [], [], []
    for it in range(n_iter):
        us.append(u)
        r = xp.mv(kt, u)
        v = b / r
        s = xp.mv(k, v)
        u = a / s
        rs.append(r)
        vs.append(v)
        ss.append(s)
        if stop is not None and (it + 1) % stop[2] == 0:
            before = vs[-2] if it else None  # the loop starts from g = 0, i.e. V = 1
            if float(_stop_error(xp, stop[0], eps, kt, u, v, before, b)) < stop[1]:
                break
    plan = u[..., :, None] * k * v[..., None, :]
    return (cost * plan).sum(axis=(-2, -1)), (k, kt, u, us, vs, ss, rs)


def _backward(xp, g, cost, eps: float, saved):
    """d<C, T_n>/d(C, a, b) times ``g`` (one value per problem) by reverse replay."""
    k, kt, u_last, us, vs, ss, rs = saved
    n = len(us)
    g = g[..., None, None]
    v_last = vs[-1]
    uv = u_last[..., :, None] * v_last[..., None, :]
    t_bar = g * cost  # dL/dT for L = <C, T>, T = diag(U) K diag(V)
    grad_cost = g * uv * k  # the direct term, g * T
    k_bar = t_bar * uv
    tk = t_bar * k
    u_bar = xp.mv(tk, v_last)
    # Iteration t: r = K^T u_{t-1}, v = b / r, s = K v, u_t = a / s. Reverse it with
    # q = u_bar / s (-> a_bar), w = q u_t (s_bar = -w), v_bar += -K^T w, p = -v_bar / r
    # (-> b_bar = -p), z = p v (r_bar = z), u_bar_{t-1} = K z. Signs are folded: vt holds
    # -v_bar.
    qs, ws, ps, zs = [], [], [], []
    u = u_last
    vt = -xp.mv(xp.t(tk), u_last)
    for t in range(n - 1, -1, -1):
        q = u_bar / ss[t]
        w = q * u
        vt = vt + xp.mv(kt, w) if t == n - 1 else xp.mv(kt, w)
        p = vt / rs[t]
        z = p * vs[t]
        u_bar = xp.mv(k, z)
        u = us[t]
        qs.append(q)
        ws.append(w)
        ps.append(p)
        zs.append(z)
    a_bar = xp.stack(qs, 0).sum(axis=0)
    b_bar = -xp.stack(ps, 0).sum(axis=0)
    # K_bar += sum_t (s_bar_t v_t^T + u_{t-1} r_bar_t^T), as two products over iterations
    w_hist = xp.stack(ws[::-1], -1)  # [..., N, n]
    z_hist = xp.stack(zs[::-1], -2)  # [..., n, M]
    v_hist = xp.stack(vs, -2)  # [..., n, M]
    u_hist = xp.stack(us, -1)  # [..., N, n]
    k_bar = k_bar - w_hist @ v_hist + u_hist @ z_hist
    return grad_cost - k_bar * k / eps, a_bar, b_bar


class _FusedUnrolled(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iter: int, backend: str, stop
    ):
        xp = _XP[backend]
        value, saved = _forward(xp, *(xp.wrap(x) for x in (cost, a, b)), eps, n_iter, stop)
        ctx.eps, ctx.xp, ctx.replay = eps, xp, saved
        # the inputs are saved as tensors (NumPy views share their memory) so that autograd's
        # version check catches an in-place change between forward and backward
        ctx.save_for_backward(cost, a, b)
        return xp.unwrap(value, cost)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        cost, _, _ = ctx.saved_tensors
        xp = ctx.xp
        grads = _backward(xp, xp.wrap(grad_out), xp.wrap(cost), ctx.eps, ctx.replay)
        ctx.replay = None
        return (
            *(
                xp.unwrap(g, cost) if need else None
                for g, need in zip(grads, ctx.needs_input_grad[:3], strict=True)
            ),
            None,
            None,
            None,
            None,
        )


def fused_unrolled_ot(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    eps: float,
    n_iter: int,
    backend: str | None = None,
    stop: tuple[str, float, int] | None = None,
) -> Tensor:
    """``<C, T_n>`` after ``n_iter`` iterations from zero potentials, with the unrolled
    gradient; the caller checks :func:`fused_applicable` first. ``stop=(rule, tol,
    check_every)`` ends the loop early by :func:`.sinkhorn.sinkhorn`'s rules: NumPy and torch
    read the statistic on the host at every check, as there; the Triton kernels decide on chip
    (one problem of one tile). ``backend`` defaults to :func:`default_backend`."""
    backend = backend or default_backend(cost, stop=stop is not None)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("numba", "numpy") and cost.device.type != "cpu":
        raise ValueError(f"the {backend} backend needs CPU tensors")
    if backend == "numba":
        return _compiled(cost, a, b, eps, n_iter, stop)
    if backend == "triton":
        from .triton_ot import triton_unrolled_ot

        return triton_unrolled_ot(cost, a, b, eps=eps, n_iter=n_iter, stop=stop)
    return _FusedUnrolled.apply(cost, a, b, eps, n_iter, backend, stop)


def _compiled(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iter: int, stop) -> Tensor:
    """The numba loop for ``cost [..., N, M]``: each problem of a batch runs on its own, so a
    stopping rule (which stops a batch together) needs a single problem."""
    from .compiled import compiled_ot

    if stop is not None and cost.dim() > 2:
        raise ValueError("the numba backend stops a single problem: use numpy for a batch")
    lead, (n, m) = cost.shape[:-2], cost.shape[-2:]
    p = int(np.prod(lead)) if lead else 1
    flat = [x.expand(*lead, x.shape[-1]).reshape(p, x.shape[-1]) for x in (a, b)]
    rule, tol, every = stop if stop is not None else ("marginal", -np.inf, 1)
    out = compiled_ot(
        cost.reshape(p, n, m), *flat, eps=np.full(p, eps), caps=np.full(p, n_iter),
        tols=np.full(p, tol), stop=rule, check_every=every,
    )  # fmt: skip
    return out.reshape(lead)


def default_backend(cost: Tensor, *, stop: bool = False) -> str:
    """numba on the CPU for problems below ``COMPILED_MAX_ENTRIES`` (NumPy for larger ones and
    for a batch of problems with a stopping rule); on CUDA the
    Triton kernels where they take the problem (with early stopping: a single problem of one
    tile), else torch."""
    return pick_backend(cost.device.type, cost.dtype, tuple(cost.shape), stop=stop)


def pick_backend(
    device_type: str, dtype: torch.dtype, shape: tuple[int, ...], *, stop: bool = False
) -> str:
    if device_type == "cpu":
        small = len(shape) >= 2 and shape[-2] * shape[-1] < COMPILED_MAX_ENTRIES
        return "numba" if small and not (stop and len(shape) > 2) else "numpy"
    if device_type == "cuda":
        from .triton_ot import triton_fits

        if triton_fits(dtype, shape, stop=stop):
            return "triton"
    return "torch"
