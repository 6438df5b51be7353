"""Meta-learning re-weighting baselines of Table 1, written with ``torch.func``:

* L2RW (Ren et al. 2018): one-step look-ahead on a virtual model ``theta_hat = theta - alpha
  grad sum_i eps_i l_i``; example weights ``max(-dL_meta(theta_hat)/deps_i at eps = 0, 0)``,
  normalised over the batch.
* Meta-Weight-Net (Shu et al. 2019): an MLP 1-100-1 with a sigmoid maps each example's loss to
  its weight; it is trained by the meta loss of the virtual model ``theta_hat = theta - alpha
  grad (sum_i V(l_i) l_i / sum_i V(l_i))``, then the model takes the step with the updated net.

Both use the model's own modules through ``functional_call`` (no re-implemented layers). Virtual
forwards use cloned buffers, so batch-norm statistics move only in the real step.

* MetaSAug (Li et al. 2021): ISDA's implicit semantic augmentation of the logits with per-class
  feature covariances, the covariances moved by one meta-gradient step (the meta loss of the
  virtual model) before the model's step on the augmented loss; with CE, or with the released
  CIFAR recipe's LDAM variant (margin without scale, class-balanced weighted CE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "ClassCovariance",
    "MetaWeightNet",
    "augmented_loss",
    "isda_logits",
    "l2rw_weights",
    "metasaug_loss",
    "metasaug_meta_loss",
    "mwn_meta_loss",
    "mwn_step",
]


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
    losses = _losses(model, params, buffers, x, y)
    # the perturbation in the model's own dtype (a float64 model gets float64 weights)
    eps = torch.zeros(x.shape[0], dtype=losses.dtype, device=x.device, requires_grad=True)
    hat = _virtual(params, (eps * losses).sum(), lr)
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


# ---------------------------------------------------------------- MetaSAug (Li et al. 2021)


class ClassCovariance:
    """Running per-class mean and covariance of features (MetaSAug / ISDA's estimator), from
    exact sums: ``cov_c = E[z z^T | c] - mu_c mu_c^T`` over every feature seen so far."""

    def __init__(self, num_classes: int, dim: int, device=None) -> None:
        kw = {"dtype": torch.float64, "device": device}
        self.count = torch.zeros(num_classes, **kw)
        self.sum = torch.zeros(num_classes, dim, **kw)
        self.outer = torch.zeros(num_classes, dim, dim, **kw)

    @torch.no_grad()
    def update(self, z: Tensor, y: Tensor) -> None:
        z = z.detach().double()
        self.count.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        self.sum.index_add_(0, y, z)
        self.outer.index_add_(0, y, z.unsqueeze(2) * z.unsqueeze(1))

    def covariance(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[K, D, D]``; zero for classes not seen yet."""
        n = self.count.clamp_min(1.0)[:, None, None]
        mu = self.sum / n[:, :, 0]
        cov = self.outer / n - mu.unsqueeze(2) * mu.unsqueeze(1)
        return cov.to(dtype)


def isda_logits(logits: Tensor, weight: Tensor, y: Tensor, cov: Tensor, lam: float) -> Tensor:
    """The implicit semantic augmentation of the logits (ISDA / MetaSAug): ``z_j + lam/2 *
    (w_j - w_y)^T Sigma_y (w_j - w_y)`` for a linear classifier ``weight [K, D]``."""
    dw = weight.unsqueeze(0) - weight[y].unsqueeze(1)  # [B, K, D]
    quad = torch.einsum("bkd,bde,bke->bk", dw, cov[y], dw)
    return logits + 0.5 * lam * quad


def _sub(params: dict[str, Tensor], buffers: dict[str, Tensor], prefix: str) -> dict:
    """The state of one submodule (``features.`` / ``classifier.``) for ``functional_call``."""
    state = {**buffers, **params}
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def augmented_loss(
    logits: Tensor, weight: Tensor, y: Tensor, cov: Tensor, lam: float,
    margins: Tensor | None = None, class_weights: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """MetaSAug's loss on the augmented logits: CE, or with ``margins`` [K] the released LDAM
    variant (the true-class logit less its margin, no rescaling) and with ``class_weights`` [K]
    a weighted-mean CE."""
    z = isda_logits(logits, weight, y, cov, lam)
    if margins is not None:
        z = z - F.one_hot(y, z.shape[1]).to(z) * margins.to(z)[y].unsqueeze(1)
    w = None if class_weights is None else class_weights.to(z)
    return F.cross_entropy(z, y, weight=w)


def _isda_loss(model, params, buffers, x, y, cov, lam, margins, class_weights) -> Tensor:
    z = functional_call(model.features, _sub(params, buffers, "features."), (x,))
    cls = _sub(params, buffers, "classifier.")
    logits = functional_call(model.classifier, cls, (z,))
    return augmented_loss(logits, cls["weight"], y, cov, lam, margins, class_weights)


def metasaug_meta_loss(
    model: nn.Module, x: Tensor, y: Tensor, meta_x: Tensor, meta_y: Tensor, cov: Tensor, *,
    lr: float, lam: float, margins: Tensor | None = None, class_weights: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """``L_meta(theta_hat(Sigma))``: meta-set CE of the virtual model after one step on the
    augmented loss under the covariances ``cov [K, D, D]``; differentiable in ``cov``."""
    params, buffers = _params_buffers(model)
    objective = _isda_loss(model, params, buffers, x, y, cov, lam, margins, class_weights)
    hat = _virtual(params, objective, lr)
    return _losses(model, hat, buffers, meta_x, meta_y).mean()


def metasaug_loss(
    model: nn.Module, estimator: ClassCovariance, x: Tensor, y: Tensor, meta_x: Tensor,
    meta_y: Tensor, *, lr: float, lam: float, meta_lr: float, margins: Tensor | None = None,
    class_weights: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """One MetaSAug step's training loss, in the released code's order: the covariances of
    the earlier batches (the estimator before this batch) take one meta-gradient step
    (``meta_lr``) on the meta loss of the virtual model; the augmented loss under the moved
    covariances is returned for the model's step; only then is the estimator updated, with the
    features of that same forward."""
    dtype = next(model.parameters()).dtype
    cov = estimator.covariance(dtype).requires_grad_()
    meta = metasaug_meta_loss(
        model, x, y, meta_x, meta_y, cov, lr=lr, lam=lam, margins=margins,
        class_weights=class_weights,
    )  # fmt: skip
    (g,) = torch.autograd.grad(meta, cov)
    moved = (cov - meta_lr * g).detach()
    z = model.features(x)
    loss = augmented_loss(
        model.classifier(z), model.classifier.weight, y, moved, lam, margins, class_weights
    )
    estimator.update(z, y)
    return loss
