"""What carries the learned weights: a per-sample vector, or the amortised weight net (Eq. 11)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "WEIGHT_INITS",
    "WEIGHT_MODES",
    "WEIGHT_PARAMS",
    "WeightNet",
    "WeightVector",
    "class_balanced_weights",
    "initial_logits",
]

# The weights a vector starts from, each sample weighted by its class: all equal; Cui et al.'s
# effective-number weights; 1 / n_k (every class then carries the same total mass).
WEIGHT_INITS = ("uniform", "class_balanced", "inverse_frequency")
WEIGHT_MODES = ("maintained", "scratch")
# How the per-sample logits are parametrised: one free logit per sample (the paper's); one per
# class, shared by its samples; a per-class logit plus a per-sample residual (starting at 0).
WEIGHT_PARAMS = ("sample", "class", "class_residual")


def class_balanced_weights(class_counts: Tensor, beta: float | None = 0.9999) -> Tensor:
    """Cui et al. (2019) effective-number weights ``(1 - beta) / (1 - beta^n_c)``, summing to K
    (the released code's initialisation of the weight logits, beta 0.9999); ``beta=None``: their
    limit as beta -> 1, the inverse class frequency ``1 / n_c``."""
    counts = class_counts.to(torch.float64)
    if (counts <= 0).any():
        raise ValueError("every class needs at least one sample for class-balanced weights")
    w = 1.0 / counts if beta is None else (1.0 - beta) / (1.0 - beta**counts)
    return (w * (counts.numel() / w.sum())).to(torch.get_default_dtype())


def initial_logits(
    init: str, labels: Tensor | None, num_classes: int | None, *, raw: bool, beta: float = 0.9999
) -> tuple[Tensor, Tensor]:
    """(per-class logits ``[K]``, per-sample logits ``[N]``) that start the weights at the
    weighting ``init`` names, each sample at its class's weight ``w_k`` (summing to K over
    classes; uniform: all 1).

    The OT measure is the softmax of the logits, so they are ``log w_k``: the start mass of
    each sample is ``w_{y_i} / sum_j w_{y_j}`` under every parametrisation (per-sample logits,
    per-class logits, per-class plus a zero residual). With ``raw`` (the CE multiplies the
    logits themselves, the released code's ``loss_weights=raw``) the logits are ``w_k`` (as
    the released code starts them; uniform: 0, its own start).
    """
    if init not in WEIGHT_INITS:
        raise ValueError(f"init must be one of {WEIGHT_INITS}, got {init!r}")
    if init == "uniform":
        n = 0 if labels is None else labels.numel()
        return torch.zeros(num_classes or 0), torch.zeros(n)
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    w = class_balanced_weights(counts, beta if init == "class_balanced" else None)
    per_class = w if raw else torch.log(w)
    return per_class, per_class[labels.cpu()]


class WeightVector(nn.Module):
    """One learnable logit per training sample, indexed by dataset index.

    The OT measure of a mini-batch is ``softmax(logits[idx])`` (the simplex of paper Eq. 4,
    restricted to the batch). ``mode="maintained"`` keeps the logits across the whole of stage 2
    (paper default); ``mode="scratch"`` resets a batch's logits to their initial values before
    each OT step (Table 2, last row).

    init (:data:`WEIGHT_INITS`; the non-uniform ones need ``labels`` and ``num_classes``): the
    start of :func:`initial_logits`, which the softmax turns into the weighting it names (with
    ``raw``, the weights themselves as logits: the released code's start).

    ``param`` (:data:`WEIGHT_PARAMS`): ``"sample"`` learns one logit per sample; ``"class"``
    learns one per class (``logits = class_logits[labels]``); ``"class_residual"`` learns both
    (``class_logits[labels] + residual``, the residual starting at 0). ``logits`` is the
    per-sample vector in every case, differentiable in what is learned.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        init: str = "uniform",
        labels: Tensor | None = None,
        num_classes: int | None = None,
        beta: float = 0.9999,
        mode: str = "maintained",
        param: str = "sample",
        raw: bool = False,
    ) -> None:
        super().__init__()
        if mode not in WEIGHT_MODES:
            raise ValueError(f"mode must be one of {WEIGHT_MODES}, got {mode!r}")
        if param not in WEIGHT_PARAMS:
            raise ValueError(f"param must be one of {WEIGHT_PARAMS}, got {param!r}")
        if (init != "uniform" or param != "sample") and (labels is None or num_classes is None):
            raise ValueError(f"init={init!r}, param={param!r} needs labels and num_classes")
        if param != "sample" and mode == "scratch":
            raise ValueError("mode='scratch' resets per-sample logits: it needs param='sample'")
        if labels is not None and labels.shape != (num_samples,):
            raise ValueError(f"labels must have shape ({num_samples},), got {tuple(labels.shape)}")
        per_class, start = initial_logits(init, labels, num_classes, raw=raw, beta=beta)
        if init == "uniform":
            start = torch.zeros(num_samples)
        self.mode = mode
        self.param = param
        if param == "sample":
            self.sample_logits = nn.Parameter(start.clone())
        else:
            self.class_logits = nn.Parameter(per_class.clone())
            self.register_buffer("labels", labels.detach().cpu().long().clone())
            if param == "class_residual":
                self.residual = nn.Parameter(torch.zeros(num_samples))
        self.register_buffer("initial", start.clone())

    @property
    def logits(self) -> Tensor:
        """The per-sample logits ``[N]`` (for ``param="sample"`` the learned parameter itself)."""
        if self.param == "sample":
            return self.sample_logits
        per = self.class_logits[self.labels]
        return per + self.residual if self.param == "class_residual" else per

    def reset_(self, idx: Tensor) -> None:
        """Put the logits of ``idx`` back to their initial values (the "scratch" mode)."""
        with torch.no_grad():
            self.sample_logits[idx] = self.initial[idx]


class WeightNet(nn.Module):
    """Amortised weights (paper Eq. 11): ``w = softmax_batch(w_att tanh(W_vz z + c))``.

    in_dim E, hidden size A (the released code's unused module: E=64, A=100, bias on W_vz only).
    """

    def __init__(self, in_dim: int, hidden: int = 100) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden)
        self.att = nn.Linear(hidden, 1, bias=False)

    def scores(self, z: Tensor) -> Tensor:
        return self.att(torch.tanh(self.proj(z))).squeeze(-1)

    def forward(self, z: Tensor) -> Tensor:
        """z: ``[B, E]`` -> weights ``[B]`` on the simplex over the batch."""
        return torch.softmax(self.scores(z), dim=0)
