"""Builders of the meta distribution Q (paper Eq. 5 and Eq. 12)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "META_DISTRIBUTIONS",
    "MetaDistribution",
    "class_prototypes",
    "pixel_mean_prototypes",
    "random_prototype_batch",
    "random_sample_per_class",
    "whole_meta_set",
]

META_DISTRIBUTIONS = ("prototype", "whole", "random_sample")


@dataclass(frozen=True)
class MetaDistribution:
    """Support and mass of Q: features ``z [M, E]``, labels ``y [M]``, mass ``b [M]`` (sum 1)."""

    z: Tensor
    y: Tensor
    b: Tensor


def _uniform(m: int, like: Tensor) -> Tensor:
    return torch.full((m,), 1.0 / m, dtype=like.dtype, device=like.device)


def _check_classes(y_meta: Tensor, num_classes: int) -> Tensor:
    counts = torch.bincount(y_meta, minlength=num_classes)
    if counts.numel() > num_classes:
        raise ValueError(f"meta labels exceed num_classes={num_classes}")
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"meta set has no sample of classes {missing[:10]}")
    return counts


def class_prototypes(z_meta: Tensor, y_meta: Tensor, num_classes: int) -> MetaDistribution:
    """Q over the K class prototypes, each the mean meta feature of its class (Eq. 12), mass 1/K."""
    counts = _check_classes(y_meta, num_classes)
    sums = torch.zeros(num_classes, z_meta.shape[-1], dtype=z_meta.dtype, device=z_meta.device)
    sums = sums.index_add(0, y_meta, z_meta)
    protos = sums / counts.unsqueeze(-1).to(z_meta.dtype)
    labels = torch.arange(num_classes, device=y_meta.device)
    return MetaDistribution(protos, labels, _uniform(num_classes, z_meta))


def pixel_mean_prototypes(
    f1: torch.nn.Module, x_meta: Tensor, y_meta: Tensor, num_classes: int
) -> MetaDistribution:
    """Q over K prototypes as the released code builds them: each class's meta images averaged
    in pixel space, the K mean images put through ``f1`` in train mode (batch norm uses their
    batch statistics and updates its running statistics), mass 1/K. ``x_meta``: float images
    ``[M, ...]``. No graph is kept; ``f1`` gets its previous mode back."""
    counts = _check_classes(y_meta, num_classes)
    flat = x_meta.reshape(x_meta.shape[0], -1)
    sums = torch.zeros(num_classes, flat.shape[1], dtype=flat.dtype, device=flat.device)
    means = sums.index_add(0, y_meta, flat) / counts.unsqueeze(-1).to(flat.dtype)
    was = f1.training
    f1.train()
    try:
        with torch.no_grad():
            z = f1(means.reshape(num_classes, *x_meta.shape[1:]))
    finally:
        f1.train(was)
    labels = torch.arange(num_classes, device=y_meta.device)
    return MetaDistribution(z, labels, _uniform(num_classes, z))


def whole_meta_set(z_meta: Tensor, y_meta: Tensor) -> MetaDistribution:
    """Q over all M meta samples with mass 1/M (Eq. 5)."""
    return MetaDistribution(z_meta, y_meta, _uniform(z_meta.shape[0], z_meta))


def random_sample_per_class(
    z_meta: Tensor, y_meta: Tensor, num_classes: int, generator: torch.Generator
) -> MetaDistribution:
    """Q over one randomly chosen meta sample of each class, mass 1/K."""
    _check_classes(y_meta, num_classes)
    # A random key per sample, then the arg-min per class: one uniform pick per class, no loop.
    keys = torch.rand(y_meta.shape[0], generator=generator, device=generator.device)
    keys = keys.to(z_meta.device)
    order = torch.argsort(keys)
    y_sorted = y_meta[order]
    # Stable sort by label keeps the random order inside each class; take the first of each.
    by_class = order[torch.argsort(y_sorted, stable=True)]
    first = torch.searchsorted(
        y_meta[by_class].contiguous(), torch.arange(num_classes, device=y_meta.device)
    )
    pick = by_class[first]
    return MetaDistribution(z_meta[pick], y_meta[pick], _uniform(num_classes, z_meta))


def random_prototype_batch(
    q: MetaDistribution, m: int, generator: torch.Generator
) -> MetaDistribution:
    """A random subset of ``m`` distinct support points of ``q`` (e.g. 100 of 1000 ImageNet-LT
    prototypes, paper Sec. 5), renormalised to mass 1/m."""
    k = q.z.shape[0]
    if not 1 <= m <= k:
        raise ValueError(f"m must be in [1, {k}], got {m}")
    pick = torch.randperm(k, generator=generator, device=generator.device)[:m].to(q.z.device)
    return MetaDistribution(q.z[pick], q.y[pick], _uniform(m, q.z))
