"""Meta-learning re-weighting baselines of Table 1, written with ``torch.func``:

* L2RW (Ren et al. 2018): one-step look-ahead on a virtual model ``theta_hat = theta - alpha
  grad sum_i eps_i l_i``; example weights ``max(-dL_meta(theta_hat)/deps_i at eps = 0, 0)``,
  normalised over the batch.
* Meta-Weight-Net (Shu et al. 2019): an MLP 1-100-1 with a sigmoid maps each example's loss to
  its weight; it is trained by the meta loss of the virtual model ``theta_hat = theta - alpha
  grad (sum_i V(l_i) l_i / sum_i V(l_i))``, then the model takes the step with the updated net.

Both use the model's own modules through ``functional_call`` (no re-implemented layers). Virtual
forwards use cloned buffers, so batch-norm statistics move only in the real step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["MetaWeightNet", "l2rw_weights", "mwn_meta_loss", "mwn_step"]


class MetaWeightNet(nn.Module):
    """V(l; Phi): loss value -> weight in (0, 1), MLP 1-hidden-1 with ReLU and a sigmoid."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: Tensor) -> Tensor:
        return torch.sigmoid(self.net(losses.unsqueeze(-1))).squeeze(-1)


def _params_buffers(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return params, buffers


def _losses(model, params, buffers, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(functional_call(model, {**buffers, **params}, (x,)), y, reduction="none")


def _virtual(params: dict[str, Tensor], objective: Tensor, lr: float) -> dict[str, Tensor]:
    names = list(params)
    grads = torch.autograd.grad(objective, [params[n] for n in names], create_graph=True)
    return {n: params[n] - lr * g for n, g in zip(names, grads, strict=True)}


def l2rw_weights(
    model: nn.Module, x: Tensor, y: Tensor, meta_x: Tensor, meta_y: Tensor, *, lr: float
) -> Tensor:
    """L2RW's weights ``[B]`` for the batch ``(x, y)``: non-negative, summing to 1 (all zero
    when no example's up-weighting would lower the meta loss)."""
    params, buffers = _params_buffers(model)
    eps = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device, requires_grad=True)
    losses = _losses(model, params, buffers, x, y)
    hat = _virtual(params, (eps.to(losses.dtype) * losses).sum(), lr)
    meta = _losses(model, hat, buffers, meta_x, meta_y).mean()
    (g_eps,) = torch.autograd.grad(meta, eps)
    w = (-g_eps).clamp_min(0.0)
    total = w.sum()
    return (w / total if float(total) > 0 else w).detach()


def mwn_meta_loss(
    model: nn.Module,
    vnet: MetaWeightNet,
    x: Tensor,
    y: Tensor,
    meta_x: Tensor,
    meta_y: Tensor,
    *,
    lr: float,
) -> Tensor:
    """``L_meta(theta_hat(Phi))``: the meta-set CE of the virtual model after one step on the
    V-weighted training loss. Differentiable in the weight net's parameters Phi."""
    params, buffers = _params_buffers(model)
    losses = _losses(model, params, buffers, x, y)
    v = vnet(losses.detach())  # the loss value is V's input, not a path to theta
    objective = (v * losses).sum() / v.sum()
    hat = _virtual(params, objective, lr)
    return _losses(model, hat, buffers, meta_x, meta_y).mean()


def mwn_step(
    model: nn.Module,
    vnet: MetaWeightNet,
    vnet_opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    meta_x: Tensor,
    meta_y: Tensor,
    *,
    lr: float,
) -> Tensor:
    """One weight-net update from the meta loss alone, then the batch's weights ``[B]`` (summing
    to 1) under the updated net, for the model's own step."""
    meta = mwn_meta_loss(model, vnet, x, y, meta_x, meta_y, lr=lr)
    phi = list(vnet.parameters())
    grads = torch.autograd.grad(meta, phi)
    vnet_opt.zero_grad(set_to_none=True)
    for p, g in zip(phi, grads, strict=True):
        p.grad = g
    vnet_opt.step()
    with torch.no_grad():
        params, buffers = _params_buffers(model)
        w = vnet(_losses(model, params, buffers, x, y))
        return w / w.sum()
