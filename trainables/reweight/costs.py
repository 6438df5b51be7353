"""Transport costs between training samples (rows) and the meta distribution Q (columns).

Paper Sec. 4.2: label-aware (Eq. 7), feature-aware (Eq. 8) and combined (Eq. 9) costs.
All functions return ``[..., N, M]`` and broadcast over leading batch dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "COSTS",
    "combined_cost",
    "feature_cost",
    "label_cost",
    "released_code_mixing",
    "transport_cost",
]

COSTS = ("label", "feature", "combined")


def label_cost(
    y: Tensor, y_q: Tensor, num_classes: int, *, dtype: torch.dtype | None = None
) -> Tensor:
    """0/1 cost: ``C_ij = 1[y_i != y_q_j]`` (Eq. 7, the Euclidean one-hot distance scaled to 1).

    y: ``[..., N]`` integer labels; y_q: ``[..., M]`` integer labels; both in ``[0, K)``.
    dtype: of the result (default: torch's default float dtype).
    """
    for name, t in (("y", y), ("y_q", y_q)):
        if t.dtype.is_floating_point:
            raise TypeError(f"{name} must hold integer class labels, got {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes})")
    return (y.unsqueeze(-1) != y_q.unsqueeze(-2)).to(dtype or torch.get_default_dtype())


def feature_cost(z: Tensor, z_q: Tensor, *, eps: float = 1e-8) -> Tensor:
    """``C_ij = 1 - cos(z_i, z_q_j)`` (Eq. 8), in ``[0, 2]``.

    z: ``[..., N, E]``, z_q: ``[..., M, E]``.
    """
    zn = z / z.norm(dim=-1, keepdim=True).clamp_min(eps)
    qn = z_q / z_q.norm(dim=-1, keepdim=True).clamp_min(eps)
    return 1.0 - zn @ qn.transpose(-1, -2)


def combined_cost(
    z: Tensor,
    y: Tensor,
    z_q: Tensor,
    y_q: Tensor,
    num_classes: int,
    *,
    feature_weight: float = 1.0,
    label_weight: float = 1.0,
) -> Tensor:
    """``feature_weight * (1 - cos) + label_weight * 1[y != y_q]`` (Eq. 9 with weights 1, 1).

    The released code's ``0.5 * feature + 0.5 * mean_k (e_y - e_yq)_k^2`` is
    ``feature_weight=0.5, label_weight=1/K``: see :func:`released_code_mixing`.
    """
    c = feature_weight * feature_cost(z, z_q)
    return c + label_weight * label_cost(y, y_q, num_classes, dtype=c.dtype)


def released_code_mixing(num_classes: int) -> tuple[float, float]:
    """(feature_weight, label_weight) reproducing the released code's cost.

    Its label term is the mean over K of squared one-hot differences, 2/K for a mismatch, times
    0.5: ``0.5 * 2 / K = 1 / K``.
    """
    return 0.5, 1.0 / num_classes


def transport_cost(
    kind: str,
    z: Tensor | None,
    y: Tensor,
    z_q: Tensor,
    y_q: Tensor,
    num_classes: int,
    *,
    feature_weight: float = 1.0,
    label_weight: float = 1.0,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The cost named by ``kind`` (one of :data:`COSTS`); ``z`` may be None for "label"."""
    if kind == "label":
        return label_weight * label_cost(y, y_q, num_classes, dtype=dtype or z_q.dtype)
    if kind == "feature":
        return feature_weight * feature_cost(z, z_q)
    if kind == "combined":
        return combined_cost(
            z, y, z_q, y_q, num_classes, feature_weight=feature_weight, label_weight=label_weight
        )
    raise ValueError(f"cost must be one of {COSTS}, got {kind!r}")
