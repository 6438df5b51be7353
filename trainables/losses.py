"""Stage-1 classification losses for long-tailed training (the Table 1 baselines).

The OT method re-weights examples in stage 2 on top of a backbone trained in stage 1; Table 1
compares it with losses that fix the imbalance in stage 1 instead. All of them fit one pattern,
which is why a single :class:`StageLoss` implements them:

1. shift the logits by a per-class constant (logit adjustment, balanced softmax),
2. or subtract a per-class margin from the true-class logit and rescale (LDAM),
3. then take a (focal or plain) cross-entropy, optionally class-weighted, where the weights may
   switch on at a given epoch (deferred re-weighting).

Class weights follow the LDAM-DRW repository convention: ``F.cross_entropy(..., weight=w)``,
i.e. the *weighted mean* ``sum_i w_{y_i} l_i / sum_i w_{y_i}``, so that a weighted loss keeps the
scale of the unweighted one and the learning rate needs no retuning. The class-balanced focal
loss is the exception, as its authors wrote it: Cui et al.'s sigmoid form sums the weighted terms
and divides by the batch size (``cb_focal``); LDAM-DRW's own variant is ``cb_focal_ldam``.

Pure torch: no Ray, no MLflow.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.config import POSTHOC, Loss
from trainables.reweight import class_balanced_weights

__all__ = [
    "FOCAL_FORMS",
    "LOSSES",
    "StageLoss",
    "check_loss_args",
    "make_loss",
    "posthoc_logit_adjustment",
]

# How a focal loss is formed: "softmax" -(1 - p_y)^gamma log p_y (Lin et al.; LDAM-DRW's plain
# focal), a (class-weighted) mean; "sigmoid" Cui et al.'s class-balanced focal loss; "ldam_drw"
# LDAM-DRW's focal of the weighted CE (p = exp(-w_y CE)).
FOCAL_FORMS = ("softmax", "sigmoid", "ldam_drw")

# The config's stage1.loss choices, less the post-hoc adjustment (CE training, adjusted after).
LOSSES: tuple[str, ...] = tuple(n for n in typing.get_args(Loss) if n != POSTHOC)


def _counts_tensor(class_counts: Sequence[int] | Tensor) -> Tensor:
    """Class counts as a float64 vector, checked: priors and margins need every count > 0.

    float64 so the derived buffers (log-priors, margins) are exact before they are cast to the
    logits' dtype.
    """
    counts = torch.as_tensor(
        class_counts.tolist() if isinstance(class_counts, Tensor) else list(class_counts),
        dtype=torch.float64,
    )
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    if not torch.isfinite(counts).all() or (counts <= 0).any():
        raise ValueError(f"every class count must be finite and > 0, got {counts.tolist()}")
    return counts


def _log_prior(counts: Tensor) -> Tensor:
    """``log pi_c`` with ``pi_c = n_c / sum n``, the quantity logit adjustment shifts by."""
    return torch.log(counts) - math.log(float(counts.sum()))


class StageLoss(nn.Module):
    """One stage-1 loss: optional logit shift or LDAM margin, then (focal) weighted-mean CE.

    Built by :func:`make_loss`; call it as ``loss(logits [B, K], y [B], epoch)``. ``epoch`` only
    matters for deferred re-weighting (weights apply from ``drw_epoch`` on). All per-class
    buffers are stored in float64 and cast to the logits' device and dtype on every call, so the
    same object serves float32/float64 and CPU/GPU without a ``.to()`` by the caller.
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        *,
        logit_shift: Tensor | None = None,
        margins: Tensor | None = None,
        scale: float = 1.0,
        weights: Tensor | None = None,
        weight_from_epoch: int = 0,
        focal_gamma: float | None = None,
        focal_form: str = "softmax",
    ) -> None:
        super().__init__()
        if focal_form not in FOCAL_FORMS:
            raise ValueError(f"focal_form must be one of {FOCAL_FORMS}, got {focal_form!r}")
        self.name = name
        self.focal_form = focal_form
        self.num_classes = num_classes
        self.scale = float(scale)
        self.weight_from_epoch = int(weight_from_epoch)
        self.focal_gamma = None if focal_gamma is None else float(focal_gamma)
        for buf_name, buf in (
            ("logit_shift", logit_shift),
            ("margins", margins),
            ("weights", weights),
        ):
            if buf is not None:
                buf = buf.detach().to(torch.float64)
                if buf.shape != (num_classes,):
                    raise ValueError(
                        f"{buf_name} must have shape ({num_classes},), got {buf.shape}"
                    )
            self.register_buffer(buf_name, buf, persistent=False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}"

    def class_weights(self, epoch: int = 0) -> Tensor | None:
        """The per-class weights in force at ``epoch`` (None: unweighted mean)."""
        if self.weights is None or epoch < self.weight_from_epoch:
            return None
        return self.weights

    def forward(self, logits: Tensor, y: Tensor, epoch: int = 0) -> Tensor:
        """Scalar batch loss. ``logits`` is ``[B, K]``, ``y`` is ``[B]`` class indices."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"{self.name}: logits must be [B, {self.num_classes}], got {tuple(logits.shape)}"
            )
        if y.dim() != 1 or y.shape[0] != logits.shape[0]:
            raise ValueError(f"{self.name}: y must be [{logits.shape[0]}], got {tuple(y.shape)}")
        z = logits
        if self.logit_shift is not None:
            z = z + self.logit_shift.to(z)
        if self.margins is not None:
            # Only the true-class logit loses its margin: z_y - m_y, the others stay as they are.
            m = self.margins.to(z)[y]
            z = z - F.one_hot(y, self.num_classes).to(z) * m.unsqueeze(1)
        if self.scale != 1.0:
            z = z * self.scale
        w = self.class_weights(epoch)
        w = None if w is None else w.to(z)
        if self.focal_gamma is None:
            return F.cross_entropy(z, y, weight=w)
        if self.focal_form == "sigmoid":
            return _sigmoid_focal(z, y, self.focal_gamma, w)
        if self.focal_form == "ldam_drw":
            # LDAM-DRW's FocalLoss: l_i = w_{y_i} CE_i, p_i = exp(-l_i), mean (1 - p_i)^gamma l_i
            l_i = F.cross_entropy(z, y, weight=w, reduction="none")
            return ((-torch.expm1(-l_i)).pow(self.focal_gamma) * l_i).mean()
        logp_y = F.log_softmax(z, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
        # 1 - p_y as -expm1(log p_y): exact when p_y is close to 1, never negative. The clamp
        # keeps d(1-p)^gamma finite for gamma < 1 when p_y rounds to exactly 1 (value unchanged:
        # the factor multiplies log p_y = 0 there).
        one_minus_p = (-torch.expm1(logp_y)).clamp_min(torch.finfo(logp_y.dtype).tiny)
        per_sample = -one_minus_p.pow(self.focal_gamma) * logp_y
        if w is None:
            return per_sample.mean()
        w_y = w[y]
        return (w_y * per_sample).sum() / w_y.sum()


def _sigmoid_focal(z: Tensor, y: Tensor, gamma: float, w: Tensor | None) -> Tensor:
    """Cui et al.'s class-balanced focal loss: a sigmoid focal loss over all K classes (one-hot
    targets t), each sample's K terms weighted by its class weight ``w_{y_i}``, summed and
    divided by the batch size: ``1/B sum_i w_{y_i} sum_j (1 - p_ij)^gamma BCE(z_ij, t_ij)`` with
    ``p_ij = sigmoid(z_ij)`` where ``t_ij = 1``, else ``1 - sigmoid(z_ij)``."""
    t = F.one_hot(y, z.shape[1]).to(z)
    bce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    # (1 - p_t)^gamma = exp(-gamma (t z + log(1 + e^-z))), stable for large |z| (Cui's form)
    modulator = torch.exp(-gamma * (t * z + F.softplus(-z)))
    per_sample = (modulator * bce).sum(1)
    if w is not None:
        per_sample = w[y] * per_sample
    return per_sample.sum() / z.shape[0]


def check_loss_args(
    *,
    focal_gamma: float = 1.0,
    cb_beta: float = 0.9999,
    ldam_max_m: float = 0.5,
    ldam_s: float = 30.0,
    prefix: str = "",
) -> None:
    """ValueError (one line, each name after ``prefix``) for a loss parameter out of range:
    :func:`make_loss` checks its arguments with it, and the stage-1 checks a config's before
    anything runs."""
    if focal_gamma < 0:
        raise ValueError(f"{prefix}focal_gamma must be >= 0, got {focal_gamma}")
    if not 0.0 <= cb_beta < 1.0:
        raise ValueError(f"{prefix}cb_beta must be in [0, 1), got {cb_beta}")
    if ldam_max_m <= 0:
        raise ValueError(f"{prefix}ldam_max_m must be > 0, got {ldam_max_m}")
    if ldam_s <= 0:
        raise ValueError(f"{prefix}ldam_s must be > 0, got {ldam_s}")


def make_loss(
    name: str,
    class_counts: Sequence[int] | Tensor,
    *,
    focal_gamma: float = 1.0,
    cb_beta: float = 0.9999,
    ldam_max_m: float = 0.5,
    ldam_s: float = 30.0,
    drw_epoch: int = 160,
    la_tau: float = 1.0,
) -> StageLoss:
    """Build the stage-1 loss called ``name`` (one of :data:`LOSSES`) for these class counts.

    Defaults are the LDAM-DRW repository's (focal gamma 1, beta 0.9999, max margin 0.5, s 30,
    DRW from epoch 160) and Menon et al.'s tau 1, so Table 1 rows are reproduced without flags.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    check_loss_args(focal_gamma=focal_gamma, cb_beta=cb_beta, ldam_max_m=ldam_max_m, ldam_s=ldam_s)
    counts = _counts_tensor(class_counts)
    k = counts.numel()

    if name == "ce":
        return StageLoss(name, k)
    if name == "focal":
        return StageLoss(name, k, focal_gamma=focal_gamma)
    if name == "cb_ce":
        return StageLoss(name, k, weights=class_balanced_weights(counts, beta=cb_beta))
    if name in ("cb_focal", "cb_focal_ldam"):
        # Cui et al.'s sigmoid form (Table 1's CB-focal row); LDAM-DRW's softmax form
        form = "sigmoid" if name == "cb_focal" else "ldam_drw"
        w = class_balanced_weights(counts, beta=cb_beta)
        return StageLoss(name, k, weights=w, focal_gamma=focal_gamma, focal_form=form)
    if name in ("ldam", "ldam_drw"):
        # Cao et al.: margin proportional to n_c^{-1/4}, largest (rarest class) = ldam_max_m.
        m = counts.pow(-0.25)
        m = m * (ldam_max_m / m.max())
        w = class_balanced_weights(counts, beta=cb_beta) if name == "ldam_drw" else None
        return StageLoss(name, k, margins=m, scale=ldam_s, weights=w, weight_from_epoch=drw_epoch)
    if name == "proportion":
        w = 1.0 / counts
        return StageLoss(name, k, weights=w * (k / w.sum()))
    if name == "logit_adjustment":
        return StageLoss(name, k, logit_shift=la_tau * _log_prior(counts))
    # balanced_softmax: log n_c differs from log pi_c by a constant, so this is LA with tau = 1.
    return StageLoss(name, k, logit_shift=torch.log(counts))


def posthoc_logit_adjustment(
    logits: Tensor, class_counts: Sequence[int] | Tensor, tau: float = 1.0
) -> Tensor:
    """Menon et al.'s post-hoc correction ``z - tau * log pi`` for a model trained with plain CE.

    Used at evaluation time only (argmax of the result), so rare classes win ties they would lose
    to the head classes' learned prior.
    """
    counts = _counts_tensor(class_counts)
    if logits.shape[-1] != counts.numel():
        raise ValueError(
            f"logits have {logits.shape[-1]} classes but class_counts has {counts.numel()}"
        )
    return logits - tau * _log_prior(counts).to(logits)
