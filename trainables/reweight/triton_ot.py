"""The OT loss as Triton kernels, one program per OT problem: the whole ``exp(-C/eps)`` stays
on chip for all iterations (forward), then the backward replays the stored scalings in reverse
for the exact unrolled gradient, accumulating ``dL/dK`` as a sum of outer products. For
``next_pow2(N) * next_pow2(M) <=`` :data:`MAX_TILE` (float32 registers): B16 against up to
1,024 classes, B32 against 512; wider problems run the reference on the GPU.

The arithmetic is that of :mod:`.compiled`'s scaling path (the same iterates and the same
reverse pass), so values and gradients equal the log-domain reference up to rounding. A few
launches per loss and backward instead of thousands: on a GPU the eager loop is bound by
kernel launches, not arithmetic.

* CUDA tensors run the compiled kernels. With ``TRITON_INTERPRET=1`` set before triton is
  imported, CPU tensors run them in Triton's interpreter (NumPy: slow, for checking the
  kernels on machines without a GPU; the tests do that in a subprocess).
* early stopping (``sinkhorn``'s "marginal" and "potential_change" rules at the same checks,
  each problem by its own statistic) is decided on chip, with no host sync, for problems that
  fit one tile;
* float32 only (the training dtype); :func:`triton_refusal` says what the kernels do not
  take, and :func:`.ot.ot_loss` solves the rest with the reference.

:func:`compile_for` builds the kernels ahead of time for a given GPU architecture (no GPU
needed), which is how the tests check that they compile for an H100 (``sm_90``).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

try:  # the GPU wheels of torch bring triton; a CPU-only install may not have it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installed wheels
    triton = None

__all__ = ["MAX_TILE", "NUM_WARPS", "compile_for", "interpreted", "triton_ot", "triton_refusal"]

MAX_TILE = 16384  # entries of the padded [N, M] tile kept on chip by one program


def _block(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


if triton is not None:

    @triton.jit
    def _tile(c_ptr, pid, n, m, inv_eps, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
        """Problem pid's row and column indices and masks, its offsets, and K = exp(-C/eps)
        on its padded tile (0 outside the problem)."""
        rn = tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        mn = rn < n
        mm = rm < m
        tile = mn[:, None] & mm[None, :]
        offs = pid * n * m + rn[:, None] * m + rm[None, :]
        c = tl.load(c_ptr + offs, mask=tile, other=0.0)
        return rn, rm, mn, mm, tile, offs, tl.where(tile, tl.exp(-c * inv_eps), 0.0)

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
        rn, rm, mn, mm, tile, offs, k = _tile(c_ptr, pid, n, m, inv_eps, BLOCK_N, BLOCK_M)
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
        c = tl.load(c_ptr + offs, mask=tile, other=0.0)
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
        rn, rm, mn, mm, tile, offs, k = _tile(c_ptr, pid, n, m, inv_eps, BLOCK_N, BLOCK_M)
        c = tl.load(c_ptr + offs, mask=tile, other=0.0)
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


def interpreted() -> bool:
    """True when Triton runs kernels in its interpreter (``TRITON_INTERPRET=1`` was set before
    triton was imported): then they take CPU tensors."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_ot_forward, InterpretedFunction)


# Warps per program: None sizes them by the tile (4 to 16). Fewer warps make the two
# reductions of every iteration cheaper (within a warp, no shared memory) and hold more of the
# tile per thread; bench/ot_speed.py times 1-8 on a GPU to choose.
NUM_WARPS: int | None = None


def _warps(entries: int) -> int:
    return NUM_WARPS or min(16, max(4, entries // 1024))


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
        _ot_forward[(p,)](
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
        _ot_backward[(p,)](
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


def triton_refusal(cost: Tensor) -> str | None:
    """Why the kernels do not take this ``[P, N, M]`` stack, in a few words (None: they do)."""
    if triton is None:
        return "needs the triton package"
    if cost.dtype != torch.float32:
        return f"takes float32 problems, got {cost.dtype}"
    if cost.device.type != "cuda" and not interpreted():
        return (
            f"runs on CUDA tensors, got {cost.device} (on a CPU only in Triton's interpreter: "
            "TRITON_INTERPRET=1 before triton is imported)"
        )
    n, m = cost.shape[-2:]
    if not _one_tile(n, m):
        return f"takes problems of one tile ({MAX_TILE} padded entries), got {n} x {m}"
    return None


def triton_ot(cost, a, b, *, eps, caps, tols, stop, check_every) -> Tensor:
    """``<C_p, T_p>`` (``[P]``) for a stack of float32 problems (``cost [P, N, M]``,
    ``a [P, N]``, ``b [P, M]``) with the unrolled gradient, one program per problem; problem
    ``p`` with its own ``eps[p]``, cap ``caps[p]`` and tolerance ``tols[p]`` (``-inf``: run to
    the cap), stopped by ``stop``'s rule on chip (no host sync). The caller checks
    :func:`triton_refusal` first."""
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
    early-stopping ``stop`` rule) for CUDA ``sm_<arch>`` without a GPU
    (Triton's ahead-of-time path, through ptxas); returns the cubin size of each, in bytes."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr, i32 = "*fp32", "i32"
    args = _launch_args(n, m)
    sigs = {
        _ot_forward: [ptr] * 9 + ["*i32"] * 2 + [ptr] * 3 + [i32] * 4,
        _ot_backward: [ptr] * 10 + ["*i32", ptr] + [i32] * 3,
    }
    constexprs = {_ot_forward: {"STOP": STOP_CODES[stop]}}
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
