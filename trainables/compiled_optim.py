"""One pass over a population's stacked parameters for an optimiser step, compiled (numba).

A population's heads are stacked tensors ``[P, ...]``; an FCN and a weight net per member make
them tens of megabytes, and an optimiser step written as tensor operations (weight decay, the
momentum buffer, the update, a mask) passes over them several times, each pass out of cache.
Here each element is read and written once: member ``m`` follows torch.optim.SGD (dampening
0) with its own step size, momentum and weight decay, or torch.optim.Adam (its defaults) with
its own step size, in the parameter's dtype (the constants are passed in that dtype).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["stacked_step"]


@njit(cache=True, nogil=True)
def _step(p, g, buf, m1, m2, lr, mom, wd, adam, mask, first, nesterov, consts, adam_scale):
    """``p, g [P, L]``; ``buf`` (SGD) and ``m1, m2`` (Adam) ``[P, L]`` or empty when no member
    needs them; ``consts``: ``1 - beta1, beta2, 1 - beta2, eps, sqrt(1 - beta2^t)``;
    ``adam_scale[m]``: ``lr_m / (1 - beta1^t)``."""
    n, length = p.shape
    w1, b2, w2, eps, root2 = consts[0], consts[1], consts[2], consts[3], consts[4]
    for m in range(n):
        update = mask[m]
        if adam[m]:
            step = adam_scale[m]
            for i in range(length):
                gi = g[m, i]
                a = m1[m, i]
                a = a + w1 * (gi - a)
                m1[m, i] = a
                s = m2[m, i] * b2 + w2 * gi * gi
                m2[m, i] = s
                if update:
                    p[m, i] = p[m, i] - step * (a / (np.sqrt(s) / root2 + eps))
            continue
        lr_m, mom_m, wd_m = lr[m], mom[m], wd[m]
        use_buf = buf.shape[0] > 0
        for i in range(length):
            d = g[m, i]
            if wd_m != 0:
                d = d + wd_m * p[m, i]
            if use_buf:
                b = d if first else buf[m, i] * mom_m + d
                buf[m, i] = b
                d = d + mom_m * b if nesterov else b
            if update:
                p[m, i] = p[m, i] - lr_m * d


def stacked_step(p, g, state: dict, lr, mom, wd, adam, mask, *, steps: int, nesterov: bool) -> None:
    """One step of every member on the stacked CPU tensor ``p`` (contiguous; in place) with
    gradient ``g``; ``state`` holds the buffers as tensors shaped like ``p`` (created here on
    the first step); ``lr``, ``mom``, ``wd``: ``[P]`` arrays in ``p``'s dtype; ``adam``,
    ``mask``: ``[P]`` bool arrays (a masked member's ``p`` is left as it is; its buffers still
    advance, as in the tensor-operation version). ``steps``: this step's number, from 1."""
    import torch

    if not p.is_contiguous():
        raise ValueError("the stacked parameter must be contiguous")
    flat = (p.shape[0], -1)
    arr = p.detach().numpy().reshape(flat)
    grad = np.ascontiguousarray(g.detach().numpy()).reshape(flat)
    dt = arr.dtype
    empty = np.empty((0, 0), dtype=dt)
    all_adam = bool(adam.all())
    first = "buf" not in state
    need_buf = not all_adam and bool((mom != 0).any())
    if need_buf and first:
        state["buf"] = torch.empty_like(p.detach())
    if adam.any() and "exp_avg" not in state:
        state["exp_avg"], state["exp_avg_sq"] = (
            torch.zeros_like(p.detach()),
            torch.zeros_like(p.detach()),
        )
    for k, v in state.items():  # the kernel writes through views: no strided buffer
        if not v.is_contiguous():  # (a tensor-operation step may have cloned a strided grad)
            state[k] = v.contiguous()
    bufs = [
        state[k].numpy().reshape(flat) if k in state else empty for k in ("exp_avg", "exp_avg_sq")
    ]
    b1, b2, eps = 0.9, 0.999, 1e-8
    consts = np.array([1 - b1, b2, 1 - b2, eps, np.sqrt(1 - b2**steps)], dtype=dt)
    adam_scale = (lr / dt.type(1 - b1**steps)).astype(dt)
    buf = state["buf"].numpy().reshape(flat) if need_buf else empty
    _step(
        arr, grad, buf, *bufs, lr, mom, wd, adam, mask, first and need_buf, nesterov, consts,
        adam_scale,
    )  # fmt: skip
