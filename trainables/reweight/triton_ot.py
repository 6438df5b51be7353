"""The fixed-iteration OT loss as Triton kernels, one program per OT problem, in two forms:

* one tile: the whole ``exp(-C/eps)`` stays on chip for all iterations (forward), then the
  backward replays the stored scalings in reverse for the exact unrolled gradient,
  accumulating ``dL/dK`` as a sum of outer products. For ``next_pow2(N) * next_pow2(M) <=``
  :data:`MAX_TILE` (float32 registers);
* streamed: wider problems (e.g. B128 x K1000) keep the sample side on chip and stream ``K``
  from global memory in column tiles, one pass per iteration (each tile's ``r = K^T u`` gives
  its ``v`` and adds ``K v`` to ``s``); ``dL/dK`` is then two matrix products over the stored
  history. Up to :data:`MAX_ROWS` rows.

The arithmetic is that of :mod:`.fused` (the scaling domain, the same iterates and the same
reverse pass), so values and gradients equal the log-domain reference up to rounding. A few
launches per loss and backward instead of thousands: on a GPU the eager loop is bound by
kernel launches, not arithmetic.

* CUDA tensors run the compiled kernels. With ``TRITON_INTERPRET=1`` set before triton is
  imported, CPU tensors run them in Triton's interpreter (NumPy: slow, for checking the
  kernels on machines without a GPU; the tests do that in a subprocess).
* early stopping (``sinkhorn``'s "marginal" and "potential_change" rules at the same checks)
  is decided on chip, with no host sync, for a single problem that fits one tile;
* float32 only (the training dtype); :func:`triton_fits` says what the kernels take, and
  ``ot_loss`` uses its other paths for the rest.

:func:`compile_for` builds the kernels ahead of time for a given GPU architecture (no GPU
needed), which is how the tests check that they compile for an H100 (``sm_90``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

try:  # the GPU wheels of torch bring triton; a CPU-only install may not have it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installed wheels
    triton = None

__all__ = [
    "MAX_TILE",
    "NUM_WARPS",
    "available",
    "compile_for",
    "interpreted",
    "members_fit",
    "triton_fits",
    "triton_members",
    "triton_unrolled_ot",
]

MAX_TILE = 16384  # entries of the padded [N, M] tile kept on chip by one program
MAX_ROWS = 256  # wider problems stream K in column tiles; their sample side stays on chip
STREAM_TILE = 8192  # entries of one streamed [N, BLOCK_M] tile


def available() -> bool:
    return triton is not None


def _block(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


def triton_fits(dtype: torch.dtype, shape: tuple[int, ...], *, stop: bool = False) -> bool:
    """True when the kernels take problems of this cost shape and dtype: float32, at most
    :data:`MAX_ROWS` rows (samples); any number of columns. With early stopping (``stop``):
    a single ``[N, M]`` problem that fits one tile (the stopping statistic is the batch's)."""
    fits = (
        triton is not None
        and dtype == torch.float32
        and len(shape) >= 2
        and _block(shape[-2]) <= MAX_ROWS
    )
    return fits and (not stop or (len(shape) == 2 and _one_tile(*shape)))


def members_fit(dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
    """True when :func:`triton_members` takes a stack of this ``[P, N, M]`` shape and dtype:
    float32 problems of one tile (each member stops by its own statistic on chip)."""
    return len(shape) == 3 and triton_fits(dtype, tuple(shape[1:]), stop=True)


if triton is not None:

    @triton.jit
    def _ot_forward(
        c_ptr, a_ptr, b_ptr, u_hist, v_hist, r_hist, s_hist, u_last, val_ptr, n_used_ptr,
        cap_ptr, inv_eps_ptr, eps_ptr, tol_ptr, n, m, n_hist, check_every,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, STOP: tl.constexpr,
    ):  # fmt: skip
        # Each program solves its own problem with its own 1 / eps, eps, iteration cap and tol
        # (a population's members). STOP: 0 runs cap iterations; 1 and 2 stop early by
        # sinkhorn()'s "marginal" and "potential_change" rules on the program's own problem,
        # checked on chip every check_every iterations. The iterations run are written to
        # n_used_ptr for the backward; n_hist is the history's capacity (the largest cap).
        pid = tl.program_id(0)
        n_iter = tl.load(cap_ptr + pid)
        inv_eps = tl.load(inv_eps_ptr + pid)
        eps = tl.load(eps_ptr + pid)
        tol = tl.load(tol_ptr + pid)
        rn = tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        mn = rn < n
        mm = rm < m
        tile = mn[:, None] & mm[None, :]
        c = tl.load(c_ptr + pid * n * m + rn[:, None] * m + rm[None, :], mask=tile, other=0.0)
        k = tl.where(tile, tl.exp(-c * inv_eps), 0.0)
        a = tl.load(a_ptr + pid * n + rn, mask=mn, other=0.0)
        b = tl.load(b_ptr + pid * m + rm, mask=mm, other=0.0)
        u = tl.where(mn, 1.0, 0.0)
        v = tl.zeros([BLOCK_M], dtype=tl.float32)
        v_before = tl.full([BLOCK_M], 1.0, tl.float32)  # the loop starts from g = 0
        t = pid * 0
        go = pid * 0 + 1
        while (t < n_iter) & (go > 0):
            row_n = (pid * n_hist + t) * n
            row_m = (pid * n_hist + t) * m
            tl.store(u_hist + row_n + rn, u, mask=mn)
            r = tl.sum(k * u[:, None], axis=0)
            v = tl.where(mm, b / tl.where(mm, r, 1.0), 0.0)
            s = tl.sum(k * v[None, :], axis=1)
            u = tl.where(mn, a / tl.where(mn, s, 1.0), 0.0)
            tl.store(r_hist + row_m + rm, r, mask=mm)
            tl.store(v_hist + row_m + rm, v, mask=mm)
            tl.store(s_hist + row_n + rn, s, mask=mn)
            if STOP == 1:  # noqa: SIM102 (compile-time branch around a runtime one)
                if (t + 1) % check_every == 0:
                    col = v * tl.sum(k * u[:, None], axis=0)
                    err = tl.sum(tl.where(mm, tl.abs(col - b), 0.0), axis=0)
                    go = tl.where(err < tol, 0, 1)
            if STOP == 2:  # noqa: SIM102
                if (t + 1) % check_every == 0:
                    lv = tl.log(tl.where(mm, v, 1.0)) - tl.log(tl.where(mm, v_before, 1.0))
                    err = eps * tl.sum(tl.abs(lv), axis=0)
                    go = tl.where(err < tol, 0, 1)
            v_before = v
            t += 1
        tl.store(n_used_ptr + pid, t)
        tl.store(u_last + pid * n + rn, u, mask=mn)
        # C is read again rather than kept live through the loop (registers)
        c = tl.load(c_ptr + pid * n * m + rn[:, None] * m + rm[None, :], mask=tile, other=0.0)
        plan = u[:, None] * k * v[None, :]
        tl.store(val_ptr + pid, tl.sum(tl.sum(c * plan, axis=1), axis=0))

    @triton.jit
    def _ot_backward(
        c_ptr, g_ptr, u_hist, v_hist, r_hist, s_hist, u_last, dc_ptr, da_ptr, db_ptr,
        n_used_ptr, inv_eps_ptr, n, m, n_iter,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        # n_iter: the history's capacity; the forward ran n_used of them
        pid = tl.program_id(0)
        n_used = tl.load(n_used_ptr + pid)
        inv_eps = tl.load(inv_eps_ptr + pid)
        rn = tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        mn = rn < n
        mm = rm < m
        tile = mn[:, None] & mm[None, :]
        offs = pid * n * m + rn[:, None] * m + rm[None, :]
        c = tl.load(c_ptr + offs, mask=tile, other=0.0)
        k = tl.where(tile, tl.exp(-c * inv_eps), 0.0)
        g = tl.load(g_ptr + pid)
        u = tl.load(u_last + pid * n + rn, mask=mn, other=0.0)
        last_m = (pid * n_iter + n_used - 1) * m
        v_last = tl.load(v_hist + last_m + rm, mask=mm, other=0.0)
        uv = u[:, None] * v_last[None, :]
        t_bar = g * c  # dL/dT for L = <C, T>, T = diag(u) K diag(v)
        k_bar = t_bar * uv
        tk = t_bar * k
        u_bar = tl.sum(tk * v_last[None, :], axis=1)
        # -v_bar of the last iteration's output; later iterations only see K^T w
        carry = -tl.sum(tk * u[:, None], axis=0)
        a_bar = tl.zeros([BLOCK_N], dtype=tl.float32)
        b_bar = tl.zeros([BLOCK_M], dtype=tl.float32)
        for i in range(n_used):
            t = n_used - 1 - i
            row_n = (pid * n_iter + t) * n
            row_m = (pid * n_iter + t) * m
            s = tl.load(s_hist + row_n + rn, mask=mn, other=1.0)
            r = tl.load(r_hist + row_m + rm, mask=mm, other=1.0)
            v = tl.load(v_hist + row_m + rm, mask=mm, other=0.0)
            u_prev = tl.load(u_hist + row_n + rn, mask=mn, other=0.0)
            q = tl.where(mn, u_bar / s, 0.0)
            w = q * u
            vt = tl.sum(k * w[:, None], axis=0) + carry
            carry = carry * 0.0
            p = tl.where(mm, vt / r, 0.0)
            z = p * v
            u_bar = tl.sum(k * z[None, :], axis=1)
            k_bar += u_prev[:, None] * z[None, :] - w[:, None] * v[None, :]
            a_bar += q
            b_bar -= p
            u = u_prev
        # only K and K_bar stay live through the loop; the direct term g * T is formed here
        u = tl.load(u_last + pid * n + rn, mask=mn, other=0.0)
        v_last = tl.load(v_hist + last_m + rm, mask=mm, other=0.0)
        grad_c = (g * u[:, None] * v_last[None, :] - k_bar * inv_eps) * k
        tl.store(dc_ptr + offs, grad_c, mask=tile)
        tl.store(da_ptr + pid * n + rn, a_bar, mask=mn)
        tl.store(db_ptr + pid * m + rm, b_bar, mask=mm)

    @triton.jit
    def _k_columns(k_ptr, pid, n, m, rn, mn, j, BLOCK_M: tl.constexpr):
        """Columns j .. j + BLOCK_M of problem pid's K: (their indices, their mask, the tile)."""
        rm = j + tl.arange(0, BLOCK_M)
        mm = rm < m
        offs = pid * n * m + rn[:, None] * m + rm[None, :]
        return rm, mm, tl.load(k_ptr + offs, mask=mn[:, None] & mm[None, :], other=0.0)

    @triton.jit
    def _ot_forward_streamed(
        k_ptr, a_ptr, b_ptr, u_hist, v_hist, r_hist, s_hist, u_last,
        n, m, n_iter,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        # Problems too wide for one tile: the sample side (u, s) stays on chip and K streams
        # through in column tiles, twice per iteration's worth of work in one pass: each tile
        # gives its r = K^T u, hence its v = b / r, and adds K v to s.
        pid = tl.program_id(0)
        rn = tl.arange(0, BLOCK_N)
        mn = rn < n
        a = tl.load(a_ptr + pid * n + rn, mask=mn, other=0.0)
        u = tl.where(mn, 1.0, 0.0)
        for t in range(n_iter):
            row_n = (pid * n_iter + t) * n
            row_m = (pid * n_iter + t) * m
            tl.store(u_hist + row_n + rn, u, mask=mn)
            s = tl.zeros([BLOCK_N], dtype=tl.float32)
            for j in range(0, m, BLOCK_M):
                rm, mm, k = _k_columns(k_ptr, pid, n, m, rn, mn, j, BLOCK_M)
                b = tl.load(b_ptr + pid * m + rm, mask=mm, other=0.0)
                r = tl.sum(k * u[:, None], axis=0)
                v = tl.where(mm, b / tl.where(mm, r, 1.0), 0.0)
                tl.store(r_hist + row_m + rm, r, mask=mm)
                tl.store(v_hist + row_m + rm, v, mask=mm)
                s += tl.sum(k * v[None, :], axis=1)
            tl.store(s_hist + row_n + rn, s, mask=mn)
            u = tl.where(mn, a / tl.where(mn, s, 1.0), 0.0)
        tl.store(u_last + pid * n + rn, u, mask=mn)

    @triton.jit
    def _ot_backward_streamed(
        k_ptr, u_hist, v_hist, r_hist, s_hist, u_last, u_bar0, carry_ptr, w_hist, p_hist,
        da_ptr, n, m, n_iter,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        # The reverse loop of the fused backward on vectors only; K streams as in the forward.
        # It writes w_t (-s_bar) and p_t (-b_bar contribution) per iteration; dL/dK and dL/db
        # are formed from them outside (two matrix products and a sum over iterations).
        pid = tl.program_id(0)
        rn = tl.arange(0, BLOCK_N)
        mn = rn < n
        u = tl.load(u_last + pid * n + rn, mask=mn, other=0.0)
        u_bar = tl.load(u_bar0 + pid * n + rn, mask=mn, other=0.0)
        a_bar = tl.zeros([BLOCK_N], dtype=tl.float32)
        for i in range(n_iter):
            t = n_iter - 1 - i
            row_n = (pid * n_iter + t) * n
            row_m = (pid * n_iter + t) * m
            s = tl.load(s_hist + row_n + rn, mask=mn, other=1.0)
            u_prev = tl.load(u_hist + row_n + rn, mask=mn, other=0.0)
            q = tl.where(mn, u_bar / s, 0.0)
            w = q * u
            tl.store(w_hist + row_n + rn, w, mask=mn)
            a_bar += q
            first = tl.where(i == 0, 1.0, 0.0)  # the last iteration also carries -v_bar
            u_bar = tl.zeros([BLOCK_N], dtype=tl.float32)
            for j in range(0, m, BLOCK_M):
                rm, mm, k = _k_columns(k_ptr, pid, n, m, rn, mn, j, BLOCK_M)
                carry = tl.load(carry_ptr + pid * m + rm, mask=mm, other=0.0)
                r = tl.load(r_hist + row_m + rm, mask=mm, other=1.0)
                v = tl.load(v_hist + row_m + rm, mask=mm, other=0.0)
                vt = tl.sum(k * w[:, None], axis=0) + first * carry
                p = tl.where(mm, vt / r, 0.0)
                tl.store(p_hist + row_m + rm, p, mask=mm)
                u_bar += tl.sum(k * (p * v)[None, :], axis=1)
            u = u_prev
        tl.store(da_ptr + pid * n + rn, a_bar, mask=mn)


def interpreted() -> bool:
    """True when Triton runs kernels in its interpreter (``TRITON_INTERPRET=1`` was set before
    triton was imported): then they take CPU tensors."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_ot_forward, InterpretedFunction)


def _kernel(fn, device: torch.device):
    if device.type != "cuda" and not interpreted():
        raise RuntimeError(
            f"the triton OT kernels run on CUDA tensors, got {device}; on a CPU only in Triton's "
            "interpreter (TRITON_INTERPRET=1 before triton is imported)"
        )
    return fn


# Warps per program: None sizes them by the tile (4 to 16). Fewer warps make the two
# reductions of every iteration cheaper (within a warp, no shared memory) and hold more of the
# tile per thread; bench/ot_speed.py times 1-8 on a GPU to choose.
NUM_WARPS: int | None = None


def _warps(entries: int) -> int:
    return NUM_WARPS or min(16, max(4, entries // 1024))


def _stream_args(n: int, m: int) -> dict:
    bn = _block(n)
    bm = max(16, min(_block(m), STREAM_TILE // bn))
    return {"BLOCK_N": bn, "BLOCK_M": bm, "num_warps": _warps(bn * bm)}


def _one_tile(n: int, m: int) -> bool:
    return _block(n) * _block(m) <= MAX_TILE


def _launch_args(n: int, m: int) -> dict:
    bn, bm = _block(n), _block(m)
    return {"BLOCK_N": bn, "BLOCK_M": bm, "num_warps": _warps(bn * bm)}


STOP_CODES = {None: 0, "marginal": 1, "potential_change": 2}


@functools.lru_cache(maxsize=64)
def _settings(
    eps: tuple[float, ...], caps: tuple[int, ...], tols: tuple[float, ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Each problem's (1 / eps, eps, tol) as float32 ``[3, P]`` and its cap as int32 ``[P]`` on
    ``device``: made once per distinct setting (a trial's and a population's repeat every
    step), so a step copies nothing to the device. 1 / eps is taken in float64 and rounded
    once, as a Python float passed to a kernel's float32 argument is."""
    floats = torch.tensor([[1.0 / e for e in eps], list(eps), list(tols)], dtype=torch.float32)
    return floats.to(device), torch.tensor(caps, dtype=torch.int32).to(device)


class _TritonUnrolled(torch.autograd.Function):
    """P problems ``[P, N, M]`` of one tile, one program each, each with its own eps, cap and
    tol (``stop=(rule, check_every)``; rule None runs every problem to its cap)."""

    @staticmethod
    def forward(ctx, cost: Tensor, a: Tensor, b: Tensor, eps, caps, tols, stop) -> Tensor:
        p, n, m = cost.shape
        c = cost.detach().contiguous()
        floats, cap_t = _settings(tuple(eps), tuple(caps), tuple(tols), c.device)
        n_hist = max(caps)
        new = lambda *s: torch.empty(*s, device=c.device, dtype=c.dtype)  # noqa: E731
        hist_n, hist_v, hist_r, hist_s = (
            new(p, n_hist, n),
            new(p, n_hist, m),
            new(p, n_hist, m),
            new(p, n_hist, n),
        )
        u_last, val = new(p, n), new(p)
        n_used = torch.empty(p, device=c.device, dtype=torch.int32)
        rule, check_every = stop
        _kernel(_ot_forward, c.device)[(p,)](
            c, a.detach().contiguous(), b.detach().contiguous(),
            hist_n, hist_v, hist_r, hist_s, u_last, val, n_used,
            cap_t, floats[0], floats[1], floats[2], n, m, n_hist, int(check_every),
            STOP=STOP_CODES[rule],
            **_launch_args(n, m),
        )  # fmt: skip
        ctx.n_hist = n_hist
        ctx.save_for_backward(cost, hist_n, hist_v, hist_r, hist_s, u_last, n_used, floats)
        return val

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        cost, hist_n, hist_v, hist_r, hist_s, u_last, n_used, floats = ctx.saved_tensors
        p, n, m = cost.shape
        c = cost.contiguous()
        dc, da, db = (
            torch.empty_like(c),
            torch.empty(p, n, device=c.device),
            torch.empty(p, m, device=c.device),
        )
        _kernel(_ot_backward, c.device)[(p,)](
            c, grad_out.contiguous(), hist_n, hist_v, hist_r, hist_s, u_last,
            dc, da, db, n_used, floats[0],
            n, m, ctx.n_hist,
            **_launch_args(n, m),
        )  # fmt: skip
        return (
            dc if ctx.needs_input_grad[0] else None,
            da if ctx.needs_input_grad[1] else None,
            db if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
            None,
        )


class _TritonStreamed(torch.autograd.Function):
    """Problems wider than one tile: K = exp(-C/eps) is formed once in global memory and
    streamed by the kernels; the value and dL/dK come from torch products over the history."""

    @staticmethod
    def forward(ctx, cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iter: int) -> Tensor:
        *batch, n, m = cost.shape
        c = cost.detach().reshape(-1, n, m)
        p = c.shape[0]
        k = torch.exp(-c / eps).contiguous()
        new = lambda *s: torch.empty(*s, device=c.device, dtype=c.dtype)  # noqa: E731
        hist_u, hist_v, hist_r, hist_s, u_last = (
            new(p, n_iter, n),
            new(p, n_iter, m),
            new(p, n_iter, m),
            new(p, n_iter, n),
            new(p, n),
        )
        _kernel(_ot_forward_streamed, c.device)[(p,)](
            k,
            a.detach().reshape(p, n).contiguous(),
            b.detach().reshape(p, m).contiguous(),
            hist_u, hist_v, hist_r, hist_s, u_last,
            n, m, n_iter,
            **_stream_args(n, m),
        )  # fmt: skip
        plan = u_last[:, :, None] * k * hist_v[:, -1, None, :]
        ctx.eps = eps
        ctx.save_for_backward(cost, a, b, k, hist_u, hist_v, hist_r, hist_s, u_last)
        return (c * plan).sum((-2, -1)).reshape(batch)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        cost, a, b, k, hist_u, hist_v, hist_r, hist_s, u_last = ctx.saved_tensors
        *_, n, m = cost.shape
        c = cost.reshape(-1, n, m)
        p, n_iter = c.shape[0], hist_u.shape[1]
        g = grad_out.reshape(p, 1, 1)
        v_last = hist_v[:, -1]
        uv = u_last[:, :, None] * v_last[:, None, :]
        t_bar = g * c  # dL/dT for L = <C, T>
        tk = t_bar * k
        u_bar0 = (tk * v_last[:, None, :]).sum(-1).contiguous()
        carry = -(tk * u_last[:, :, None]).sum(-2).contiguous()
        hist_w, hist_p = torch.empty_like(hist_u), torch.empty_like(hist_v)
        da = torch.empty(p, n, device=c.device, dtype=c.dtype)
        _kernel(_ot_backward_streamed, c.device)[(p,)](
            k, hist_u, hist_v, hist_r, hist_s, u_last, u_bar0, carry, hist_w, hist_p, da,
            n, m, n_iter,
            **_stream_args(n, m),
        )  # fmt: skip
        # K_bar = T_bar * u v^T + sum_t (u_{t-1} z_t^T - w_t v_t^T), z_t = p_t * v_t
        k_bar = (
            t_bar * uv
            + hist_u.transpose(1, 2) @ (hist_p * hist_v)
            - hist_w.transpose(1, 2) @ hist_v
        )
        dc = (g * uv - k_bar / ctx.eps) * k
        db = -hist_p.sum(1)
        return (
            dc.view_as(cost) if ctx.needs_input_grad[0] else None,
            da.view_as(a) if ctx.needs_input_grad[1] else None,
            db.view_as(b) if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


def triton_unrolled_ot(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    eps: float,
    n_iter: int,
    stop: tuple[str, float, int] | None = None,
) -> Tensor:
    """``<C, T_n>`` after ``n_iter`` iterations from zero potentials with the unrolled
    gradient, as :func:`.fused.fused_unrolled_ot`; ``a`` and ``b`` broadcast against
    ``cost[..., :, 0]`` and ``cost[..., 0, :]``. ``stop=(rule, tol, check_every)`` ends the
    loop early by ``sinkhorn``'s rules, decided on chip (no host sync); it takes one problem
    that fits one tile (:func:`triton_fits` with ``stop=True``)."""
    if triton is None:
        raise RuntimeError("the triton OT path needs the triton package")
    if not triton_fits(cost.dtype, tuple(cost.shape), stop=stop is not None):
        what = "one [N, M] problem of one tile" if stop is not None else "problems"
        raise ValueError(
            f"the triton OT path takes float32 {what} of at most {MAX_ROWS} rows, "
            f"got {cost.dtype} {tuple(cost.shape)}"
        )
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if stop is not None and stop[0] not in STOP_CODES:
        raise ValueError(f"stop rule must be marginal or potential_change, got {stop[0]!r}")
    *batch, n, m = cost.shape
    a = a.expand(*batch, n)
    b = b.expand(*batch, m)
    if _one_tile(n, m):
        c = cost.reshape(-1, n, m)
        p = c.shape[0]
        rule, tol, every = stop if stop is not None else (None, 0.0, 1)
        val = _TritonUnrolled.apply(
            c, a.reshape(p, n), b.reshape(p, m), (float(eps),) * p, (int(n_iter),) * p,
            (float(tol),) * p, (rule, every),
        )  # fmt: skip
        return val.reshape(batch)
    return _TritonStreamed.apply(cost, a, b, float(eps), int(n_iter))


def triton_members(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    eps: Sequence[float],
    caps: Sequence[int],
    tols: Sequence[float],
    stop: str = "marginal",
    check_every: int = 10,
) -> Tensor:
    """``[P]``: P independent problems of one tile (a population's members), one program
    each, problem ``p`` with its own ``eps[p]``, iteration cap ``caps[p]`` and tolerance
    ``tols[p]`` (``-inf``: run to the cap), stopped by ``stop``'s rule on its own problem.
    Problem ``p`` gets exactly what :func:`triton_unrolled_ot` gives it alone (the same program
    on the same data). cost ``[P, N, M]``, a ``[P, N]``, b ``[P, M]``, float32."""
    if triton is None:
        raise RuntimeError("the triton OT path needs the triton package")
    p = cost.shape[0]
    if not members_fit(cost.dtype, tuple(cost.shape)):
        raise ValueError(
            f"triton_members takes float32 [P, N, M] problems of one tile, got {cost.dtype} "
            f"{tuple(cost.shape)}"
        )
    if stop not in STOP_CODES or stop is None:
        raise ValueError(f"stop rule must be marginal or potential_change, got {stop!r}")
    if not (len(eps) == len(caps) == len(tols) == p) or min(caps) < 1:
        raise ValueError(f"eps, caps and tols need one entry per problem ({p}), caps >= 1")
    tols = tuple(float(t) for t in tols)
    rule = stop if any(t > -math.inf for t in tols) else None  # no problem stops: no checks
    return _TritonUnrolled.apply(
        cost, a, b, tuple(float(e) for e in eps), tuple(int(c) for c in caps), tols,
        (rule, check_every),
    )  # fmt: skip


def compile_for(
    arch: int = 90, n: int = 16, m: int = 100, stop: str | None = None
) -> dict[str, int]:
    """Compile the forward and backward kernels that an ``[n, m]`` problem uses (with the
    early-stopping ``stop`` rule, one-tile sizes only) for CUDA ``sm_<arch>`` without a GPU
    (Triton's ahead-of-time path, through ptxas); returns the cubin size of each, in bytes."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr, i32 = "*fp32", "i32"
    constexprs = {}
    if _one_tile(n, m):
        args = _launch_args(n, m)
        sigs = {
            _ot_forward: [ptr] * 9 + ["*i32"] * 2 + [ptr] * 3 + [i32] * 4,
            _ot_backward: [ptr] * 10 + ["*i32", ptr] + [i32] * 3,
        }
        constexprs = {_ot_forward: {"STOP": STOP_CODES[stop]}}
    else:
        args = _stream_args(n, m)
        sigs = {
            _ot_forward_streamed: [ptr] * 8 + [i32] * 3,
            _ot_backward_streamed: [ptr] * 11 + [i32] * 3,
        }
    blocks = {"BLOCK_N": args["BLOCK_N"], "BLOCK_M": args["BLOCK_M"]}
    out = {}
    for fn, types in sigs.items():
        consts = {**blocks, **constexprs.get(fn, {})}
        sig = dict(zip(fn.arg_names, [*types, *["constexpr"] * len(consts)], strict=True))
        src = ASTSource(fn=fn, signature=sig, constexprs=consts)
        opts = {"num_warps": args["num_warps"]}
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
        out[fn.fn.__name__] = len(compiled.asm["cubin"])
    return out
