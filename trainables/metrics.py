"""Classification metrics for long-tailed evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["classification_metrics", "confusion_matrices", "confusion_matrix", "confusion_metrics"]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``[K, K]`` counts, rows = true class, columns = predicted class."""
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def _percent(fraction: float) -> float:
    """A fraction as a percentage without float noise: the exact value is a ratio of counts, so
    9 decimals keep it (53.5, not 53.49999999999999) and drop only rounding error."""
    return round(100.0 * fraction, 9)


def classification_metrics(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    train_counts: Sequence[int],
    *,
    many: int = 100,
    few: int = 20,
) -> dict[str, object]:
    """Top-1 error (%), balanced accuracy (%), per-class accuracy, many/medium/few-shot accuracy
    (classes with > ``many`` / between / < ``few`` training images; the ImageNet-LT convention),
    and the confusion matrix. A group with no class is reported as None, never as 0."""
    cm = confusion_matrix(pred.cpu(), target.cpu(), num_classes)
    return confusion_metrics(cm.numpy(), train_counts, many=many, few=few)


def confusion_matrices(pred: Tensor, target: Tensor, num_classes: int) -> np.ndarray:
    """``[P, K, K]`` counts of P predictions ``pred [P, N]`` of the same targets (one count)."""
    p, k = pred.shape[0], num_classes
    member = torch.arange(p, device=pred.device)[:, None] * (k * k)
    flat = (member + target.long()[None, :] * k + pred.long()).reshape(-1)
    return torch.bincount(flat.cpu(), minlength=p * k * k).reshape(p, k, k).numpy()


def confusion_metrics(
    cm: np.ndarray, train_counts: Sequence[int], *, many: int = 100, few: int = 20
) -> dict[str, object]:
    """:func:`classification_metrics` from a ``[K, K]`` confusion matrix (rows true classes)."""
    support = cm.sum(1)
    correct = np.diagonal(cm)
    valid = support > 0
    # float64: a balanced accuracy of 83% is logged as 83.0, not float32's 83.0000042
    per_class = np.full(len(support), np.nan)
    per_class[valid] = correct[valid] / support[valid]
    counts = np.asarray(list(train_counts))
    groups = {
        "many": counts > many,
        "medium": (counts <= many) & (counts >= few),
        "few": counts < few,
    }
    out: dict[str, object] = {
        "top1_error": _percent(1.0 - int(correct.sum()) / max(int(support.sum()), 1)),
        "balanced_acc": _percent(float(per_class[valid].mean())),
        "per_class_acc": [None if v != v else _percent(v) for v in per_class.tolist()],
        "confusion": cm.tolist(),
    }
    for name, mask in groups.items():
        m = mask & valid
        out[f"{name}_acc"] = _percent(float(per_class[m].mean())) if m.any() else None
    return out
