"""The fixed-iteration OT loss as two Triton kernels: one program per OT problem keeps its
whole ``exp(-C/eps)`` tile on chip for all iterations (forward), then replays the stored
scalings in reverse for the exact unrolled gradient (backward), accumulating ``dL/dK`` as a
sum of outer products instead of a matrix product over the history.

The arithmetic is that of :mod:`.fused` (the scaling domain, the same iterates and the same
reverse pass), so values and gradients equal the log-domain reference up to rounding. Two
launches per loss and backward instead of thousands: on a GPU the eager loop is bound by
kernel launches, not arithmetic.

* CUDA tensors run the compiled kernels. With ``TRITON_INTERPRET=1`` set before triton is
  imported, CPU tensors run them in Triton's interpreter (NumPy: slow, for checking the
  kernels on machines without a GPU; the tests do that in a subprocess).
* One tile per problem: :func:`triton_fits` bounds ``next_pow2(N) * next_pow2(M)`` by
  :data:`MAX_TILE` (float32 registers); larger problems take the other paths of ``ot_loss``.
* float32 only (the training dtype).

:func:`compile_for` builds both kernels ahead of time for a given GPU architecture (no GPU
needed), which is how the tests check that they compile for an H100 (``sm_90``).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # the GPU wheels of torch bring triton; a CPU-only install may not have it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installed wheels
    triton = None

__all__ = [
    "MAX_TILE",
    "available",
    "compile_for",
    "interpreted",
    "triton_fits",
    "triton_unrolled_ot",
]

MAX_TILE = 16384  # entries of the padded [N, M] tile kept on chip by one program


def available() -> bool:
    return triton is not None


def _block(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


def triton_fits(dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
    """True when problems of this cost shape fit one on-chip tile and the kernels take the
    dtype."""
    return (
        triton is not None
        and dtype == torch.float32
        and len(shape) >= 2
        and _block(shape[-2]) * _block(shape[-1]) <= MAX_TILE
    )


if triton is not None:

    @triton.jit
    def _ot_forward(
        c_ptr, a_ptr, b_ptr, u_hist, v_hist, r_hist, s_hist, u_last, val_ptr,
        n, m, n_iter, inv_eps,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
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
        for t in range(n_iter):
            row_n = (pid * n_iter + t) * n
            row_m = (pid * n_iter + t) * m
            tl.store(u_hist + row_n + rn, u, mask=mn)
            r = tl.sum(k * u[:, None], axis=0)
            v = tl.where(mm, b / tl.where(mm, r, 1.0), 0.0)
            s = tl.sum(k * v[None, :], axis=1)
            u = tl.where(mn, a / tl.where(mn, s, 1.0), 0.0)
            tl.store(r_hist + row_m + rm, r, mask=mm)
            tl.store(v_hist + row_m + rm, v, mask=mm)
            tl.store(s_hist + row_n + rn, s, mask=mn)
        tl.store(u_last + pid * n + rn, u, mask=mn)
        # C is read again rather than kept live through the loop (registers)
        c = tl.load(c_ptr + pid * n * m + rn[:, None] * m + rm[None, :], mask=tile, other=0.0)
        plan = u[:, None] * k * v[None, :]
        tl.store(val_ptr + pid, tl.sum(tl.sum(c * plan, axis=1), axis=0))

    @triton.jit
    def _ot_backward(
        c_ptr, g_ptr, u_hist, v_hist, r_hist, s_hist, u_last, dc_ptr, da_ptr, db_ptr,
        n, m, n_iter, inv_eps,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
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
        last_m = (pid * n_iter + n_iter - 1) * m
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
        for i in range(n_iter):
            t = n_iter - 1 - i
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


def _launch_args(n: int, m: int) -> dict:
    bn, bm = _block(n), _block(m)
    return {"BLOCK_N": bn, "BLOCK_M": bm, "num_warps": min(16, max(4, bn * bm // 1024))}


class _TritonUnrolled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iter: int) -> Tensor:
        *batch, n, m = cost.shape
        c = cost.detach().reshape(-1, n, m).contiguous()
        p = c.shape[0]
        new = lambda *s: torch.empty(*s, device=c.device, dtype=c.dtype)  # noqa: E731
        hist_n, hist_v, hist_r, hist_s = (
            new(p, n_iter, n),
            new(p, n_iter, m),
            new(p, n_iter, m),
            new(p, n_iter, n),
        )
        u_last, val = new(p, n), new(p)
        _kernel(_ot_forward, c.device)[(p,)](
            c,
            a.detach().reshape(p, n).contiguous(),
            b.detach().reshape(p, m).contiguous(),
            hist_n, hist_v, hist_r, hist_s, u_last, val,
            n, m, n_iter, 1.0 / eps,
            **_launch_args(n, m),
        )  # fmt: skip
        ctx.eps, ctx.n_iter = eps, n_iter
        ctx.save_for_backward(cost, a, b, hist_n, hist_v, hist_r, hist_s, u_last)
        return val.reshape(batch)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        cost, a, b, hist_n, hist_v, hist_r, hist_s, u_last = ctx.saved_tensors
        *_, n, m = cost.shape
        c = cost.reshape(-1, n, m).contiguous()
        p = c.shape[0]
        dc, da, db = (
            torch.empty_like(c),
            torch.empty(p, n, device=c.device),
            torch.empty(p, m, device=c.device),
        )
        _kernel(_ot_backward, c.device)[(p,)](
            c, grad_out.reshape(p).contiguous(), hist_n, hist_v, hist_r, hist_s, u_last,
            dc, da, db,
            n, m, ctx.n_iter, 1.0 / ctx.eps,
            **_launch_args(n, m),
        )  # fmt: skip
        return (
            dc.view_as(cost) if ctx.needs_input_grad[0] else None,
            da.view_as(a) if ctx.needs_input_grad[1] else None,
            db.view_as(b) if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


def triton_unrolled_ot(cost: Tensor, a: Tensor, b: Tensor, *, eps: float, n_iter: int) -> Tensor:
    """``<C, T_n>`` after exactly ``n_iter`` iterations from zero potentials with the unrolled
    gradient, as :func:`.fused.fused_unrolled_ot`; ``a`` and ``b`` broadcast against
    ``cost[..., :, 0]`` and ``cost[..., 0, :]``. Needs :func:`triton_fits`."""
    if triton is None:
        raise RuntimeError("the triton OT path needs the triton package")
    if not triton_fits(cost.dtype, tuple(cost.shape)):
        raise ValueError(
            f"the triton OT path takes float32 problems of at most {MAX_TILE} padded entries, "
            f"got {cost.dtype} {tuple(cost.shape)}"
        )
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    *batch, n, m = cost.shape
    a = a.expand(*batch, n)
    b = b.expand(*batch, m)
    return _TritonUnrolled.apply(cost, a, b, float(eps), int(n_iter))


def compile_for(arch: int = 90, n: int = 16, m: int = 100) -> dict[str, int]:
    """Compile both kernels for CUDA ``sm_<arch>`` without a GPU (Triton's ahead-of-time
    path, through ptxas); returns the cubin size of each, in bytes."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr, i32, f32 = "*fp32", "i32", "fp32"
    blocks = {"BLOCK_N": _block(n), "BLOCK_M": _block(m)}
    sigs = {
        _ot_forward: [ptr] * 9 + [i32] * 3 + [f32],
        _ot_backward: [ptr] * 10 + [i32] * 3 + [f32],
    }
    out = {}
    for fn, types in sigs.items():
        names = fn.arg_names
        sig = dict(zip(names, [*types, "constexpr", "constexpr"], strict=True))
        src = ASTSource(fn=fn, signature=sig, constexprs=blocks)
        opts = {"num_warps": _launch_args(n, m)["num_warps"]}
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
        out[fn.fn.__name__] = len(compiled.asm["cubin"])
    return out
