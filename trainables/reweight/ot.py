"""The paper's OT loss (Eq. 10), ``<C, T*_eps(a, b)>``: the one entry point, for one problem or
a stack of them, over three implementations of the same Sinkhorn iterations.

* ``"reference"`` (:mod:`.sinkhorn`): the log-domain loop under autograd, the ground truth,
  on any device and dtype, and the only one with the ``"implicit"`` and ``"envelope"``
  gradients;
* ``"compiled"`` (:mod:`.compiled`): the loop and its reverse pass compiled for the CPU, in the
  scaling domain where ``max |C| / eps`` allows it (in float64 for a float32 problem past
  float32's range) and in the log domain beyond;
* ``"triton"`` (:mod:`.triton_ot`): Triton kernels on CUDA, float32 problems in float32's
  scaling range.

``"auto"``: the compiled loop on a CPU, the Triton kernels on CUDA for the problems they take
(the rest through the reference), the reference elsewhere. Each gives every problem the
iterates it gets alone, the same up to rounding (``tests/trainables/reweight/test_ot_matrix.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .compiled import LOG, SCALING, SCALING64, compiled_ot
from .sinkhorn import GRAD_MODES, Settings, check_inputs, reference_ot
from .triton_ot import triton_ot, triton_refusal

__all__ = ["IMPLS", "SCALING_LIMIT", "ot_loss"]

IMPLS = ("auto", "reference", "compiled", "triton")

# The scaling domain is exact while exp(-C/eps) is a normal number: exp(+-LIMIT) and the
# scalings built from it stay normal, with a margin for the marginals (>= 1e-6) and the sums
# over N or M entries.
SCALING_LIMIT = {torch.float32: 30.0, torch.float64: 300.0}


def ot_loss(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    *,
    eps: float | Sequence[float],
    max_iter: int | Sequence[int],
    tol: float | Sequence[float | None] | None = None,
    grad: str = "unrolled",
    stop: str = "marginal",
    check_every: int = 10,
    impl: str = "auto",
) -> Tensor:
    """``<C, T*>`` for one problem (cost ``[N, M]``, a ``[N]``, b ``[M]``: a scalar) or a stack
    (``[P, N, M]``, ``[P, N]``, ``[P, M]``: ``[P]``), differentiable in cost, a and b.

    ``eps``, ``max_iter`` and ``tol`` take one value for all problems or one per problem;
    ``tol=None`` runs exactly ``max_iter`` iterations, else a problem stops at the first check
    (every ``check_every`` iterations) where its statistic under ``stop`` is below its tol
    (:func:`.sinkhorn.sinkhorn`). On the simplex the gradients to ``a`` and ``b`` are defined up
    to a constant and are reported zero-mean (implicit, envelope).

    grad:
      * ``"unrolled"``: the derivative of the loop's iterations, as the paper and the released
        code take it; exact for the truncated loop.
      * ``"implicit"``: the exact gradient of ``<C, T*>`` at the plan the loop reached, from
        the optimality conditions (one small linear solve); memory independent of iterations.
        Exact when the loop has converged (use ``tol``).
      * ``"envelope"``: returns and differentiates a *different objective*, the entropic value
        ``<C, T*> - eps H(T*)``, whose gradient is the dual potential (``f`` for ``a``,
        ``g`` for ``b``, ``T*`` for ``cost``). Cheapest; biased for Eq. 10.

    A sample of zero mass (``a_i = 0``): every path gives finite values and the other entries'
    gradients finite. Its own entry: ``"implicit"`` gives the limit as the mass goes to 0;
    ``"envelope"`` ``-inf`` (the entropy's slope at 0); ``"unrolled"`` the limit in the scaling
    domain, NaN (undefined: ``d log a / da`` at 0) in the log domain. Where the plan is nearly
    a deterministic map the implicit gradient is not determined in floating point:
    FloatingPointError, in one line naming the remedy.

    impl: ``"auto"``, ``"reference"``, ``"compiled"`` or ``"triton"`` (module doc); one that
    cannot take the problem is a ValueError in one line naming the remedy.
    """
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if cost.dim() not in (2, 3):
        raise ValueError(f"cost must be [N, M] or [P, N, M], got shape {tuple(cost.shape)}")
    check_inputs(cost, a, b)  # once: a single problem is then viewed as a stack of one
    single = cost.dim() == 2
    if single:
        cost, a, b = cost[None], a[None], b[None]
    s = Settings.of((cost.shape[0],), eps, max_iter, tol, stop, check_every)
    if grad != "unrolled" and impl not in ("auto", "reference"):
        raise ValueError(
            f"impl={impl!r} computes the unrolled gradient; grad={grad!r} runs the reference "
            "(impl='auto' or 'reference')"
        )
    out = _unrolled(cost, a, b, s, impl) if grad == "unrolled" else None
    if out is None:
        out = reference_ot(cost, a, b, s, grad)
    return out[0] if single else out


def _ratio(cost: Tensor, s: Settings) -> np.ndarray:
    """Each problem's ``max |C| / eps`` (one host sync; in NumPy on a CPU: cheaper per call)."""
    if _compiled_takes(cost):
        return np.abs(cost.detach().numpy()).max(axis=(-2, -1)) / s.eps
    return cost.detach().abs().amax(dim=(-2, -1)).double().cpu().numpy() / s.eps


def _unrolled(cost: Tensor, a: Tensor, b: Tensor, s: Settings, impl: str) -> Tensor | None:
    """The unrolled loss by ``impl`` (None: the reference's)."""
    if impl == "reference":
        return None
    if impl == "compiled" or (impl == "auto" and _compiled_takes(cost)):
        if not _compiled_takes(cost):
            raise ValueError(
                f"impl='compiled' takes float32 or float64 CPU tensors, got {cost.dtype} on "
                f"{cost.device}; use impl='auto'"
            )
        return compiled_ot(cost, a, b, **_args(s), path=_paths(_ratio(cost, s), cost.dtype))
    refusal = triton_refusal(cost)
    fits = _ratio(cost, s) <= SCALING_LIMIT[torch.float32] if refusal is None else None
    if impl == "triton":
        if refusal is None and not fits.all():
            refusal = (
                "runs in float32's scaling domain, which max|C|/eps = "
                f"{float(_ratio(cost, s).max()):.3g} leaves (over 30)"
            )
        if refusal is not None:
            raise ValueError(f"impl='triton' {refusal}; use impl='auto'")
    if refusal is not None or not fits.any():
        return None
    if fits.all():
        return triton_ot(cost, a, b, **_args(s))
    inside, outside = np.flatnonzero(fits), np.flatnonzero(~fits)
    rows = [
        [x[torch.as_tensor(i, device=cost.device)] for x in (cost, a, b)] for i in (inside, outside)
    ]
    parts = [
        triton_ot(*rows[0], **_args(s.take(inside))),
        reference_ot(*rows[1], s.take(outside), "unrolled"),
    ]
    perm = torch.as_tensor(np.argsort(np.concatenate([inside, outside])), device=cost.device)
    return torch.cat(parts)[perm]


def _compiled_takes(cost: Tensor) -> bool:
    return cost.device.type == "cpu" and cost.dtype in SCALING_LIMIT


def _args(s: Settings) -> dict:
    return dict(eps=s.eps, caps=s.caps, tols=s.tols, stop=s.stop, check_every=s.check_every)


def _paths(ratio: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Each problem's path on the CPU: the scaling domain in its dtype where ``ratio`` allows,
    in float64 for a float32 problem past float32's range, else the log domain."""
    path = np.where(ratio <= SCALING_LIMIT[dtype], SCALING, LOG)
    if dtype == torch.float32:
        path = np.where((path == LOG) & (ratio <= SCALING_LIMIT[torch.float64]), SCALING64, path)
    return path
