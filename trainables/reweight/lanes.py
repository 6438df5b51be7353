"""The compiled scaling-domain loop of :mod:`.compiled` for many problems at once, one problem
per SIMD lane.

One problem's loop is a chain of short dependent steps (``r = K^T u``, ``v = b / r``,
``s = K v``, ``u = a / s``: sums of ``N`` or ``M`` terms and a division per entry): at stage
2's sizes (a batch of 16 against 10 classes) the core waits on each step, and a population's
problems, solved one after another, wait the same way each. Here ``width(dtype)`` problems
advance together (8 float32 or 4 float64: one 256-bit vector): every array holds a lane axis
last (``K`` as ``[N, M, width]``) and each step is one vector operation per entry, written as
LLVM vector instructions (:func:`_vdot` and the other intrinsics below; numba's own loops do
not vectorise over so short an axis). Each lane adds its terms in the order the one-problem
loop does, with the same operations (a product, then a sum: no fused multiply-add, no
reassociation), so a lane's iterates, value and gradients are bit for bit what its problem
gets alone from :func:`.compiled._forward` / :func:`.compiled._backward`.

Problems run their own iteration counts: a lane whose problem stops (its cap, or its
statistic below its tol at a check) takes the next problem at the next tick (longest cap
first), so lanes idle only at the end. The reverse pass walks the same ticks backwards: a lane
meets each of its problems' iterations in reverse, starting a problem at the tick the forward
ended it and closing it at the tick the forward started it. Every tick's state is kept lane by
lane (``[ticks, N, width]``), so neither pass gathers.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .scaling_steps import close_grad, direct_terms, plan_cost, stop_error

__all__ = ["lanes_backward", "lanes_forward", "lanes_ticks", "solve", "width"]

_BITS = 256  # one AVX2 register (AVX-512 cores run these too)


def width(dtype) -> int:
    """Problems per vector for ``dtype``: 8 float32, 4 float64."""
    return _BITS // (8 * np.dtype(dtype).itemsize)


def lanes_ticks(caps: np.ndarray, lanes: int) -> int:
    """An upper bound on the ticks :func:`lanes_forward` takes for problems of these caps
    (list scheduling's: the total over the lanes plus the longest)."""
    if len(caps) == 0:
        return 1
    return -(-int(caps.sum()) // lanes) + int(caps.max()) + 1


def solve(todo, cost, k, a, b, eps, caps, tols, marginal, every, value):
    """The scaling-domain problems ``todo`` of a stack (``cost``, ``k = exp(-cost / eps)``
    ``[P, N, M]``, C-contiguous, one float dtype) in lanes: ``value[q]`` set, and returned
    the function that runs their reverse pass, ``back(g, grad_cost, a_bar, b_bar)``."""
    p, n, m = cost.shape
    dt = cost.dtype
    w = width(dt)
    key = (dt.str, n, m)
    mine = caps[todo]
    states = _take(key, lanes_ticks(mine, w), n, m, w, dt)
    start, lane_of, n_done = np.zeros((3, p), dtype=np.int64)
    order = todo[np.argsort(-mine, kind="stable")]  # the longest first
    hist = (*states, start, lane_of, n_done)
    ticks = lanes_forward(order, cost, k, a, b, eps, caps, tols, marginal, every, *hist, value)

    def back(g, *out):
        lanes_backward(order, ticks, g, cost, k, eps, *hist, *out)

    # the tick states go back to the pool once nothing can run this reverse pass any more
    weakref.finalize(back, _give, key, states)
    return back


# Tick states of finished calls, reused: a fresh history of a few hundred kB is mapped anew
# and page-faulted in at every call (measured: 60 us of a 0.3 ms call of 32 members). A
# finished call's states are appended to _RETURNED (atomic, no lock: the finaliser may run
# inside a garbage collection, anywhere), and moved to _POOL under its lock by the next take.
_POOL: dict[tuple, list[tuple[np.ndarray, ...]]] = {}
_RETURNED: deque = deque()
_POOL_LOCK = threading.Lock()
_POOL_KEEP = 4  # per dtype and shape
_POOL_MAX_BYTES = 32 << 20  # larger histories are not kept (their own cost dwarfs a mapping)


def _take(key, ticks, n, m, w, dt):
    if not _RETURNED and not _POOL.get(key):
        return _fresh(ticks, n, m, w, dt)
    with _POOL_LOCK:
        while _RETURNED:
            k, states = _RETURNED.popleft()
            free = _POOL.setdefault(k, [])
            free.append(states)
            free.sort(key=lambda st: st[0].shape[0])  # the smallest that fits is taken first
            del free[:-_POOL_KEEP]
        free = _POOL.get(key, [])
        for i, states in enumerate(free):
            if states[0].shape[0] >= ticks:
                return free.pop(i)
    return _fresh(ticks, n, m, w, dt)


def _fresh(ticks, n, m, w, dt):
    u_in, u_out, sh = (np.empty((ticks, n, w), dtype=dt) for _ in range(3))
    vh, rh = (np.empty((ticks, m, w), dtype=dt) for _ in range(2))
    return u_in, u_out, vh, sh, rh


def _give(key, states) -> None:
    if sum(x.nbytes for x in states) <= _POOL_MAX_BYTES:
        _RETURNED.append((key, states))


# --- vector intrinsics: every array C-contiguous, its last axis the lanes -----------------


def _vector(context, dtype):
    elem = context.get_value_type(dtype)
    return ir.VectorType(elem, _BITS // dtype.bitwidth), dtype.bitwidth // 8


def _pointers(context, builder, sig, args, vec):
    """Each argument's data as a pointer to vectors."""
    return [
        builder.bitcast(context.make_array(t)(context, builder, a).data, vec.as_pointer())
        for t, a in zip(sig.args, args, strict=True)
    ]


def _check(*arrays):
    for a in arrays:
        if not isinstance(a, types.Array) or a.layout != "C" or a.dtype != arrays[0].dtype:
            raise TypeError("lane intrinsics take C-contiguous arrays of one float dtype")


@intrinsic
def _vdot(typingctx, x, y, out):
    """``out[j] = x[0, j] y[0] + x[1, j] y[1] + ...`` (``x [N, M, w]``, ``y [N, w]``,
    ``out [M, w]``), each lane's terms added in ``i`` order in a register."""
    _check(x, y, out)

    def codegen(context, builder, sig, args):
        vec, align = _vector(context, x.dtype)
        xa = context.make_array(x)(context, builder, args[0])
        xp, yp, op = _pointers(context, builder, sig, args, vec)
        n, m = cgutils.unpack_tuple(builder, xa.shape, 3)[:2]
        acc = cgutils.alloca_once(builder, vec)
        one = ir.Constant(n.type, 1)
        with cgutils.for_range(builder, m) as loop:
            j = loop.index
            first = builder.fmul(
                builder.load(builder.gep(xp, [j]), align=align), builder.load(yp, align=align)
            )
            builder.store(first, acc)
            with cgutils.for_range_slice(builder, one, n, one) as (i, _):
                xi = builder.load(builder.gep(xp, [builder.add(builder.mul(i, m), j)]), align=align)
                yi = builder.load(builder.gep(yp, [i]), align=align)
                builder.store(builder.fadd(builder.load(acc), builder.fmul(xi, yi)), acc)
            builder.store(builder.load(acc), builder.gep(op, [j]), align=align)
        return context.get_dummy_value()

    return types.void(x, y, out), codegen


def _count(context, builder, ty, value, vec):
    ary = context.make_array(ty)(context, builder, value)
    return builder.udiv(ary.nitems, ir.Constant(ary.nitems.type, vec.count))


@intrinsic
def _vcopy(typingctx, src, out):
    """``out[:] = src`` (the same size)."""
    _check(src, out)

    def codegen(context, builder, sig, args):
        vec, align = _vector(context, src.dtype)
        sp, op = _pointers(context, builder, sig, args, vec)
        with cgutils.for_range(builder, _count(context, builder, out, args[1], vec)) as loop:
            t = loop.index
            value = builder.load(builder.gep(sp, [t]), align=align)
            builder.store(value, builder.gep(op, [t]), align=align)
        return context.get_dummy_value()

    return types.void(src, out), codegen


@intrinsic
def _vdiv(typingctx, num, den, out):
    """``out = num / den`` entry by entry (all three the same size)."""
    _check(num, den, out)

    def codegen(context, builder, sig, args):
        vec, align = _vector(context, num.dtype)
        ptrs = _pointers(context, builder, sig, args, vec)
        with cgutils.for_range(builder, _count(context, builder, out, args[2], vec)) as loop:
            t = loop.index
            a, b = (builder.load(builder.gep(p, [t]), align=align) for p in ptrs[:2])
            builder.store(builder.fdiv(a, b), builder.gep(ptrs[2], [t]), align=align)
        return context.get_dummy_value()

    return types.void(num, den, out), codegen


def _quotient(subtract: bool):
    @intrinsic
    def quotient(typingctx, num, den, total, mul, out):
        """``q = num / den``; ``total += q`` (``-=`` for the subtracting one); ``out = q mul``:
        the reverse pass's step through ``u = a / s`` (and ``v = b / r``)."""
        _check(num, den, total, mul, out)

        def codegen(context, builder, sig, args):
            vec, align = _vector(context, num.dtype)
            ptrs = _pointers(context, builder, sig, args, vec)
            count = _count(context, builder, out, args[4], vec)
            with cgutils.for_range(builder, count) as loop:
                at = [builder.gep(p, [loop.index]) for p in ptrs]
                a, b, tot, mu = (builder.load(p, align=align) for p in at[:4])
                q = builder.fdiv(a, b)
                tot = builder.fsub(tot, q) if subtract else builder.fadd(tot, q)
                builder.store(tot, at[2], align=align)
                builder.store(builder.fmul(q, mu), at[4], align=align)
            return context.get_dummy_value()

        return types.void(num, den, total, mul, out), codegen

    return quotient


_vquot_add, _vquot_sub = _quotient(False), _quotient(True)


@intrinsic
def _vouter(typingctx, kb, x, z, w, v):
    """``kb[i, j] += x[i] z[j] - w[i] v[j]`` (``kb [N, M, w]``, ``x``, ``w`` ``[N, w]``,
    ``z``, ``v`` ``[M, w]``)."""
    _check(kb, x, z, w, v)

    def codegen(context, builder, sig, args):
        vec, align = _vector(context, kb.dtype)
        kba = context.make_array(kb)(context, builder, args[0])
        kp, xp, zp, wp, vp = _pointers(context, builder, sig, args, vec)
        n, m = cgutils.unpack_tuple(builder, kba.shape, 3)[:2]
        with cgutils.for_range(builder, n) as rows:
            i = rows.index
            xi = builder.load(builder.gep(xp, [i]), align=align)
            wi = builder.load(builder.gep(wp, [i]), align=align)
            with cgutils.for_range(builder, m) as cols:
                j = cols.index
                at = builder.gep(kp, [builder.add(builder.mul(i, m), j)])
                zj = builder.load(builder.gep(zp, [j]), align=align)
                vj = builder.load(builder.gep(vp, [j]), align=align)
                step = builder.fsub(builder.fmul(xi, zj), builder.fmul(wi, vj))
                builder.store(builder.fadd(builder.load(at, align=align), step), at, align=align)
        return context.get_dummy_value()

    return types.void(kb, x, z, w, v), codegen


# --- the loops ------------------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _load(q, lane, k, a, b, kl, ktl, al, bl, u):
    n, m = k.shape[1:]
    for i in range(n):
        al[i, lane] = a[q, i]
        u[i, lane] = 1.0
        for j in range(m):
            kl[i, j, lane] = k[q, i, j]
            ktl[j, i, lane] = k[q, i, j]
    for j in range(m):
        bl[j, lane] = b[q, j]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _idle(lane, kl, ktl, al, bl, u):
    """A lane with no problem left computes on ones (finite values, nothing kept)."""
    n, m = kl.shape[:2]
    for i in range(n):
        al[i, lane] = 1.0
        u[i, lane] = 1.0
        for j in range(m):
            kl[i, j, lane] = 1.0
            ktl[j, i, lane] = 1.0
    for j in range(m):
        bl[j, lane] = 1.0


@njit(cache=True, nogil=True, error_model="numpy")
def lanes_forward(
    todo, cost, k, a, b, eps, caps, tols, marginal, every,
    u_in, u_out, vh, sh, rh, start, lane_of, n_done, value,
):  # fmt: skip
    """The problems ``todo`` (in this order into free lanes), each its own loop of
    :func:`.compiled._forward`. Per tick ``t`` (``[ticks, N or M, width]``): ``u_in[t]`` (the
    lane's ``u`` before), ``rh[t]``, ``vh[t]``, ``sh[t]``, ``u_out[t]``; per problem ``q``: its
    first tick ``start[q]``, its lane ``lane_of[q]``, its iterations ``n_done[q]`` and
    ``value[q]``. Returns the number of ticks."""
    n, m = k.shape[1:]
    lanes = u_in.shape[2]
    dt = k.dtype
    kl = np.empty((n, m, lanes), dt)
    ktl = np.empty((m, n, lanes), dt)
    al = np.empty((n, lanes), dt)
    bl = np.empty((m, lanes), dt)
    u = np.empty((n, lanes), dt)
    col = np.empty((m, lanes), dt)
    q_of = np.full(lanes, -1, np.int64)
    it_of = np.zeros(lanes, np.int64)
    left = np.zeros(lanes, np.int64)  # iterations to the lane's next check
    nxt, busy = 0, 0
    for lane in range(lanes):
        if nxt < todo.size:
            q = todo[nxt]
            _load(q, lane, k, a, b, kl, ktl, al, bl, u)
            q_of[lane], start[q], lane_of[q], left[lane] = q, 0, lane, every
            nxt += 1
            busy += 1
        else:
            _idle(lane, kl, ktl, al, bl, u)
            left[lane] = -1
    tick = 0
    while busy > 0:
        uo, v, s, r = u_out[tick], vh[tick], sh[tick], rh[tick]
        _vcopy(u, u_in[tick])
        _vdot(kl, u, r)
        _vdiv(bl, r, v)
        _vdot(ktl, v, s)
        _vdiv(al, s, uo)
        _vcopy(uo, u)
        check = False
        for lane in range(lanes):
            left[lane] -= 1
            check |= left[lane] == 0
        if check and marginal:  # the Q-side marginal V (K^T U) of the lanes that check
            _vdot(kl, uo, col)
        for lane in range(lanes):
            q = q_of[lane]
            if q < 0:
                continue
            done = it_of[lane] + 1
            it_of[lane] = done
            stop = done == caps[q]
            if left[lane] == 0:
                left[lane] = every
                if not stop:
                    before = vh[tick - 1, :, lane]  # the problem's previous iteration
                    err = stop_error(
                        marginal, v[:, lane], col[:, lane], before, done == 1, b[q], eps[q]
                    )
                    stop = err < tols[q]
            if not stop:
                continue
            n_done[q] = done
            value[q] = plan_cost(cost[q], k[q], uo[:, lane], v[:, lane])
            if nxt < todo.size:
                q = todo[nxt]
                _load(q, lane, k, a, b, kl, ktl, al, bl, u)
                q_of[lane], it_of[lane], start[q], lane_of[q] = q, 0, tick + 1, lane
                left[lane] = every
                nxt += 1
            else:
                _idle(lane, kl, ktl, al, bl, u)
                q_of[lane], left[lane] = -1, -1
                busy -= 1
        tick += 1
    return tick


@njit(cache=True, nogil=True, error_model="numpy")
def lanes_backward(
    todo, ticks, g, cost, k, eps, u_in, u_out, vh, sh, rh, start, lane_of, n_done,
    grad_cost, a_bar, b_bar,
):  # fmt: skip
    """The reverse pass of :func:`lanes_forward` (``ticks`` of it), each problem's that of
    :func:`.compiled._backward`: ``grad_cost[q]``, ``a_bar[q]``, ``b_bar[q]`` for ``q`` in
    ``todo``, from the upstream gradient ``g[q]``."""
    n, m = k.shape[1:]
    lanes = u_in.shape[2]
    dt = k.dtype
    ends = np.full((ticks, lanes), -1, np.int64)  # the problem a lane ends at a tick
    for q in todo:
        ends[start[q] + n_done[q] - 1, lane_of[q]] = q
    kl = np.ones((n, m, lanes), dt)
    ktl = np.ones((m, n, lanes), dt)
    u_bar = np.zeros((n, lanes), dt)
    vt0 = np.zeros((m, lanes), dt)
    k_bar = np.zeros((n, m, lanes), dt)
    ab = np.zeros((n, lanes), dt)
    bb = np.zeros((m, lanes), dt)
    w = np.zeros((n, lanes), dt)
    z = np.zeros((m, lanes), dt)
    acc = np.zeros((m, lanes), dt)
    q_of = np.full(lanes, -1, np.int64)
    for tick in range(ticks - 1, -1, -1):
        ui, uo, v, s, r = u_in[tick], u_out[tick], vh[tick], sh[tick], rh[tick]
        begins = False
        for lane in range(lanes):
            q = ends[tick, lane]
            if q < 0:
                continue
            # the plan T = diag(u) K diag(v) and <C, T>: the direct terms
            begins = True
            q_of[lane] = q
            for i in range(n):
                ab[i, lane] = 0.0
                for j in range(m):
                    kl[i, j, lane] = k[q, i, j]
                    ktl[j, i, lane] = k[q, i, j]
            for j in range(m):
                bb[j, lane] = 0.0
            direct_terms(g[q], cost[q], k[q], uo[:, lane], v[:, lane], grad_cost[q],
                         k_bar[:, :, lane], u_bar[:, lane], vt0[:, lane])  # fmt: skip
        _vquot_add(u_bar, s, ab, uo, w)
        _vdot(kl, w, acc)
        if begins:  # a problem's last iteration also takes the direct terms through V
            for lane in range(lanes):
                if ends[tick, lane] >= 0:
                    for j in range(m):
                        acc[j, lane] += vt0[j, lane]
        _vquot_sub(acc, r, bb, v, z)
        _vdot(ktl, z, u_bar)
        _vouter(k_bar, ui, z, w, v)
        for lane in range(lanes):
            q = q_of[lane]
            if q < 0 or tick != start[q]:
                continue
            close_grad(grad_cost[q], k_bar[:, :, lane], k[q], eps[q])
            for i in range(n):
                a_bar[q, i] = ab[i, lane]
            for j in range(m):
                b_bar[q, j] = bb[j, lane]
            q_of[lane] = -1
    return ticks
