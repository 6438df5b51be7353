"""Learn the OT weights of one fixed batch (paper Fig. 1): step (b) alone, repeated."""

from __future__ import annotations

import torch
from torch import Tensor

from .meta import MetaDistribution
from .step import StepConfig, step_cost, step_ot_loss

__all__ = ["fit_batch_weights"]


def fit_batch_weights(
    z: Tensor,
    y: Tensor,
    q: MetaDistribution,
    num_classes: int,
    cfg: StepConfig,
    *,
    steps: int = 300,
    lr: float = 0.05,
) -> Tensor:
    """Minimise ``L_OT(w)`` over the simplex weights of one batch ``(z [N, E], y [N])`` and
    return ``w [N]``.

    Adam on the logits from a uniform start. The features are fixed: the frozen-f1 case of
    Algorithm 1 without the model step, as in the paper's Fig. 1.
    """
    cost = step_cost(cfg, z, y, q, num_classes).to(z.dtype)
    b = q.b.to(z.dtype)
    logits = torch.zeros(z.shape[0], dtype=z.dtype, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        loss = step_ot_loss(cfg, cost, torch.softmax(logits, 0), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.softmax(logits.detach(), 0)
