"""The long-tail construction shared by every modality.

Counts follow the exponential profile ``n_c = int(n_max * (1/IF)^(c/(K-1)))`` (class 0 = head),
written as the released code writes it so the integer truncation matches its table.

Protocols:
  * ``"mwnet"`` (released code, MW-Net / MetaSAug): per class, the meta images (and the
    validation images) are taken out of the pool *before* sub-sampling; ``n_max`` is the
    smallest remaining pool. CIFAR-10, IF 200, 10 meta, no validation: 4990, 2769, ..., 24.
  * ``"ldam"`` (LDAM-DRW): validation first, then the long tail from the remaining pool with
    ``n_max`` = its size; the meta set comes from the images the long tail left over, or, for
    a class with too few left (the head keeps all of them), from its own training images.
The validation split is balanced, seeded and disjoint from train and meta; model selection
uses it, never the test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PROTOCOLS",
    "LongTailSplit",
    "held_per_class",
    "longtail_counts",
    "make_longtail_split",
    "smallest_head",
]

PROTOCOLS = ("mwnet", "ldam")


def longtail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Per-class counts of the exponential profile, head first."""
    if num_classes < 2:
        raise ValueError("a long tail needs at least 2 classes")
    if imbalance_factor < 1:
        raise ValueError(f"imbalance factor must be >= 1, got {imbalance_factor}")
    ratio = 1.0 / imbalance_factor
    return [int(n_max * ratio ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def smallest_head(num_classes: int, imbalance_factor: float) -> int:
    """The smallest head-class count whose profile leaves every class at least one sample."""
    n = max(1, math.ceil(imbalance_factor))
    while longtail_counts(n, num_classes, imbalance_factor)[-1] < 1:
        n += 1
    return n


def held_per_class(protocol: str, meta_per_class: int, val_per_class: int) -> int:
    """Images of every class taken before the long tail is drawn from the rest: the meta and
    validation images under "mwnet" (the meta set removed first, as the released code), the
    validation images under "ldam" (its meta set drawn from what the tail leaves)."""
    return meta_per_class + val_per_class if protocol == "mwnet" else val_per_class


@dataclass(frozen=True)
class LongTailSplit:
    """Indices into the source's training arrays, and the per-class training counts."""

    train: np.ndarray
    meta: np.ndarray
    val: np.ndarray
    counts: tuple[int, ...]
    meta_overlaps_train: bool = False


def make_longtail_split(
    labels: np.ndarray,
    num_classes: int,
    imbalance_factor: float,
    *,
    meta_per_class: int = 10,
    val_per_class: int = 0,
    protocol: str = "mwnet",
    seed: int = 0,
    n_max: int | None = None,
    cap_to_pool: bool = False,
) -> LongTailSplit:
    """Seeded split of a balanced (or any) labelled pool into long-tailed train, meta and val.

    ``cap_to_pool`` (unequal pools, e.g. ModelNet10 with classes ordered largest first):
    ``n_max`` defaults to the *largest* pool and each class keeps ``min(profile, its pool)``,
    instead of the whole profile being scaled down to the smallest pool.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    per_class = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            raise ValueError(f"class {c} has no samples")
        per_class.append(rng.permutation(idx))

    head = held_per_class(protocol, meta_per_class, val_per_class)
    small = min(p.size for p in per_class)
    if small <= head:
        raise ValueError(
            f"a class has only {small} samples: too few for {meta_per_class} meta and "
            f"{val_per_class} validation per class"
        )
    pools = [p.size - head for p in per_class]
    pool_max = max(pools) if cap_to_pool else small - head
    if n_max is None:
        n_max = pool_max
    elif n_max > pool_max:
        raise ValueError(f"n_max={n_max} exceeds the class pool ({pool_max})")
    counts = longtail_counts(n_max, num_classes, imbalance_factor)
    if cap_to_pool:
        counts = [min(n, pool) for n, pool in zip(counts, pools, strict=True)]

    train, meta, val = [], [], []
    overlap = False
    for c, idx in enumerate(per_class):
        if protocol == "mwnet":
            meta.append(idx[:meta_per_class])
            val.append(idx[meta_per_class:head])
            train.append(idx[head : head + counts[c]])
        else:
            val.append(idx[:head])
            pool = idx[head:]
            train.append(pool[: counts[c]])
            rest = pool[counts[c] :]
            if rest.size >= meta_per_class:
                meta.append(rest[:meta_per_class])
            else:
                overlap = True
                meta.append(pool[:meta_per_class])
    cat = lambda parts: np.concatenate(parts).astype(np.int64)  # noqa: E731
    return LongTailSplit(cat(train), cat(meta), cat(val), tuple(counts), overlap)
