"""One stage-2 iteration of Algorithm 1: virtual step (a), OT weight step (b), model step (c)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .costs import COSTS, transport_cost
from .meta import MetaDistribution
from .ot import IMPLS, ot_loss
from .sinkhorn import GRAD_MODES, STOP_RULES
from .weights import WeightNet, WeightVector

__all__ = [
    "LOSS_WEIGHTINGS",
    "Parallel",
    "SplitModel",
    "StepConfig",
    "StepResult",
    "reweight_step",
    "step_cost",
    "step_ot_loss",
]

LOSS_WEIGHTINGS = ("simplex", "raw")


class Parallel(Protocol):
    """Data-parallel workers (see ``trainables.distributed.DataParallel``)."""

    rank: int
    world: int

    def shard(self, n: int, device: torch.device | None = None) -> Tensor: ...
    def sum_grads_(self, params: list[Tensor]) -> None: ...
    def sum_(self, tensors: list[Tensor]) -> None: ...
    def broadcast_(self, tensors: list[Tensor]) -> None: ...
    def sum(self, value: Tensor) -> Tensor: ...


class SplitModel(Protocol):
    """A model split as in paper Sec. 4.2: ``features`` is f1 (theta_1), ``classifier`` f2."""

    features: nn.Module
    classifier: nn.Module


@dataclass(frozen=True)
class StepConfig:
    """Knobs of one stage-2 iteration.

    cost, feature_weight, label_weight: the transport cost (Eq. 7-9 and the released mixing).
    eps .. grad: the Sinkhorn solve and its gradient mode (see :func:`ot_loss`).
    virtual_lr: alpha of the virtual step (a); virtual_step=False skips (a) even when f1 trains.
    learn_weights: False holds the weights at their start: (a) is skipped and (b) computes the
      OT loss (for the record, without a graph) but takes no step on w; (c) is unchanged. The
      control of an OT run: Q is built from the same draws, so the random streams match.
    normalize_weight_grad: step (b) divides the weights' gradient by its norm (over every weight
      parameter), so the step is ``weight_lr`` long whatever the OT gradient's scale.
    loss_weights: "simplex" weights the CE by the batch's simplex weights (a weighted mean, the
      paper); "raw" multiplies each CE by the raw logit and sums (the released code).
    meta_ce_coef: extra ``coef * mean CE`` on the meta set in step (c) (released code: 10).
    weight_decay: L2 on the batch's weight logits in step (b) (released code: 5e-4).
    """

    cost: str = "combined"
    feature_weight: float = 1.0
    label_weight: float = 1.0
    eps: float = 0.1
    max_iter: int = 200
    tol: float | None = None
    check_every: int = 10
    stop: str = "marginal"
    grad: str = "unrolled"
    virtual_lr: float = 2e-5
    virtual_step: bool = True
    learn_weights: bool = True
    normalize_weight_grad: bool = False
    loss_weights: str = "simplex"
    meta_ce_coef: float = 0.0
    weight_decay: float = 0.0
    impl: str = "auto"  # ot_loss's implementation: auto | reference | compiled | triton

    def __post_init__(self) -> None:
        checks = (
            ("cost", self.cost, COSTS),
            ("grad", self.grad, GRAD_MODES),
            ("stop", self.stop, STOP_RULES),
            ("loss_weights", self.loss_weights, LOSS_WEIGHTINGS),
            ("impl", self.impl, IMPLS),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.grad != "unrolled" and self.impl not in ("auto", "reference"):
            raise ValueError(
                f"impl={self.impl!r} computes the unrolled gradient; grad={self.grad!r} runs "
                "the reference (impl='auto' or 'reference')"
            )
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")


@dataclass(frozen=True)
class StepResult:
    """weights: ``[B]`` per-sample weights used in step (c); ot_loss, loss: detached scalars;
    virtual_step: whether step (a) ran."""

    weights: Tensor
    ot_loss: Tensor
    loss: Tensor
    virtual_step: bool


def step_cost(cfg: StepConfig, z: Tensor | None, y: Tensor, q: MetaDistribution, k: int) -> Tensor:
    """The configured transport cost between a batch and Q, ``[B, M]``."""
    return transport_cost(cfg.cost, z, y, q.z, q.y, k, feature_weight=cfg.feature_weight,
                          label_weight=cfg.label_weight, dtype=q.b.dtype)  # fmt: skip


def step_ot_loss(cfg: StepConfig, cost: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """:func:`ot_loss` with the configured solver settings."""
    return ot_loss(cost, a, b, eps=cfg.eps, max_iter=cfg.max_iter, tol=cfg.tol, grad=cfg.grad,
                   check_every=cfg.check_every, stop=cfg.stop, impl=cfg.impl)  # fmt: skip


def _trainable(module: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def reweight_step(
    model: SplitModel,
    x: Tensor,
    y: Tensor,
    idx: Tensor,
    weights: WeightVector | WeightNet,
    model_opt: torch.optim.Optimizer,
    weight_opt: torch.optim.Optimizer,
    cfg: StepConfig,
    *,
    num_classes: int,
    meta_x: Tensor | None = None,
    meta_y: Tensor | None = None,
    q: MetaDistribution | None = None,
    build_q: Callable[[Tensor, Tensor], MetaDistribution] | None = None,
    parallel: Parallel | None = None,
) -> StepResult:
    """Run steps (a), (b), (c) of Algorithm 1 on one batch ``(x, y)`` with dataset indices ``idx``.

    Q comes from ``q`` when given (frozen f1: build it once per epoch), otherwise from
    ``build_q(f1(meta_x), meta_y)``. Step (a) (the virtual model theta_hat = theta - alpha
    grad L_B(w), through ``torch.func.functional_call``) runs only when f1 has trainable
    parameters and the cost uses features; otherwise L_OT depends on w alone (paper,
    "Discussion") and (a) is skipped. With a frozen f1 nothing is back-propagated through it.

    With ``parallel`` (data-parallel workers that all hold the same global batch), steps (a) and
    (b) run on the whole batch on every worker (the OT loss couples the batch) and rank 0's new
    weights are broadcast; step (c) runs on this worker's shard and the gradients are summed, so
    the update equals the single-worker one on the whole batch.
    """
    f1 = model.features
    f1_params = _trainable(f1)
    uses_features = cfg.cost != "label"
    virtual = cfg.virtual_step and uses_features and bool(f1_params) and cfg.learn_weights
    is_vector = isinstance(weights, WeightVector)
    _check_step(cfg, is_vector, virtual, q, meta_x, meta_y, build_q)

    # Features at the current theta_1, without a graph: the cost when (a) is skipped, the
    # weight net's input, and the classifier's input when f1 is frozen.
    need_now = (uses_features and not virtual) or not is_vector or not f1_params
    with torch.no_grad():
        z_now = f1(x) if need_now else None

    if is_vector and weights.mode == "scratch":
        weights.reset_(idx)

    # ---- w for this batch, as a graph node the OT loss (and step (a)) can differentiate ----
    logits_b = weights.logits[idx] if is_vector else None
    measure = torch.softmax(logits_b, dim=0) if is_vector else weights(z_now)
    loss_w = logits_b if is_vector and cfg.loss_weights == "raw" else measure

    # ---- step (a): virtual model, only where it changes L_OT ----
    if virtual:
        z_ot, q_step = _virtual_features(model, f1_params, x, y, loss_w, cfg, meta_x, meta_y,
                                         build_q)  # fmt: skip
    else:
        z_ot = z_now
        if q is not None:
            q_step = q
        else:
            with torch.no_grad():
                q_step = build_q(f1(meta_x), meta_y)

    # ---- step (b): OT loss and, unless the weights are held, one step on w ----
    with torch.set_grad_enabled(cfg.learn_weights and torch.is_grad_enabled()):
        cost = step_cost(cfg, z_ot, y, q_step, num_classes).to(measure.dtype)
        ot = step_ot_loss(cfg, cost, measure, q_step.b.to(measure.dtype))
    if cfg.learn_weights:
        _weight_update(cfg, ot, logits_b, weight_opt, parallel)

    # ---- step (c): model step with the updated weights ----
    with torch.no_grad():
        if is_vector:
            new = weights.logits[idx]
            w_new = torch.softmax(new, dim=0) if cfg.loss_weights == "simplex" else new.clone()
        else:
            w_new = weights(z_now)
    loss = _model_step(model, bool(f1_params), x, y, w_new, z_now, model_opt, cfg, meta_x,
                       meta_y, parallel)  # fmt: skip
    return StepResult(w_new.detach(), ot.detach(), loss.detach(), virtual)


def _check_step(cfg, is_vector, virtual, q, meta_x, meta_y, build_q) -> None:
    """What :func:`reweight_step` needs from its arguments for ``cfg``."""
    if not is_vector and cfg.loss_weights == "raw":
        raise ValueError(
            "loss_weights='raw' needs a WeightVector; the weight net outputs a simplex"
        )
    if q is None and (meta_x is None or meta_y is None or build_q is None):
        raise ValueError("pass q, or meta_x, meta_y and build_q to build it")
    if cfg.meta_ce_coef and (meta_x is None or meta_y is None):
        raise ValueError("meta_ce_coef > 0 needs meta_x and meta_y")
    if virtual and (meta_x is None or meta_y is None or build_q is None):
        raise ValueError("step (a) rebuilds Q under theta_hat: pass meta_x, meta_y and build_q")


def _virtual_features(model, f1_params, x, y, loss_w, cfg, meta_x, meta_y, build_q):
    """Step (a): the features of the batch and Q under the virtual f1, theta_hat = theta -
    alpha grad L_B(w), as functions of w (second order through ``create_graph``)."""
    f1, f2 = model.features, model.classifier
    ce = F.cross_entropy(f2(f1(x)), y, reduction="none")
    names = list(f1_params)
    grads = torch.autograd.grad(
        (loss_w * ce).sum(), [f1_params[n] for n in names], create_graph=True
    )
    hat = {n: f1_params[n] - cfg.virtual_lr * g for n, g in zip(names, grads, strict=False)}
    # Cloned buffers: the virtual forwards must not move BN running statistics.
    state = {**{n: b.clone() for n, b in f1.named_buffers()}, **hat}
    return functional_call(f1, state, (x,)), build_q(functional_call(f1, state, (meta_x,)), meta_y)


def _weight_update(cfg, ot, logits_b, weight_opt, parallel) -> None:
    """Step (b)'s update of w: one optimiser step on the OT loss (plus the logits' weight
    decay), the gradient normalised if asked; rank 0's weights broadcast to the workers."""
    objective = ot
    if logits_b is not None and cfg.weight_decay:
        objective = objective + 0.5 * cfg.weight_decay * (logits_b**2).sum()
    w_params = [p for g in weight_opt.param_groups for p in g["params"]]
    w_grads = torch.autograd.grad(objective, w_params, allow_unused=True)
    if cfg.normalize_weight_grad:
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in w_grads if g is not None))
        if float(norm) > 0:
            w_grads = tuple(None if g is None else g / norm.to(g.dtype) for g in w_grads)
    weight_opt.zero_grad(set_to_none=True)
    for p, g in zip(w_params, w_grads, strict=False):
        p.grad = g
    weight_opt.step()
    if parallel is not None:
        parallel.broadcast_(w_params)


def _model_step(model, f1_trains, x, y, w_new, z_now, model_opt, cfg, meta_x, meta_y, parallel):
    """Step (c): the model step on the w-weighted CE (plus the meta set's CE), on this
    worker's shard with the gradients summed over workers. Returns the weighted loss."""
    f1, f2 = model.features, model.classifier
    xc, yc, wc, zc_now = x, y, w_new, z_now
    meta_coef = cfg.meta_ce_coef
    if parallel is not None:
        pos = parallel.shard(x.shape[0], device=x.device)
        xc, yc, wc = x[pos], y[pos], w_new[pos]
        zc_now = z_now[pos] if z_now is not None else None
        meta_coef = cfg.meta_ce_coef / parallel.world  # summed over workers: the full term
    z_c = f1(xc) if f1_trains else zc_now
    loss = (wc * F.cross_entropy(f2(z_c), yc, reduction="none")).sum()
    if meta_coef:
        with torch.set_grad_enabled(f1_trains and torch.is_grad_enabled()):
            z_meta = f1(meta_x)
        loss = loss + meta_coef * F.cross_entropy(f2(z_meta), meta_y)
    model_opt.zero_grad(set_to_none=True)
    loss.backward()
    if parallel is not None:
        parallel.sum_grads_([p for g in model_opt.param_groups for p in g["params"]])
        loss = parallel.sum(loss)
    model_opt.step()
    return loss
