"""Shared synthetic stage-2 data for unit tests of the loop's arithmetic (not of the method)."""

from __future__ import annotations

import torch

from trainables.data.arrays import StageData, TensorSplit


def three_class_features() -> StageData:
    """8-d features of 3 classes (train counts 12, 6, 3; 2 per class elsewhere), seeded."""
    g = torch.Generator().manual_seed(0)
    counts = (12, 6, 3)
    ys = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])

    def split(y):
        return TensorSplit(torch.randn(len(y), 8, generator=g) + y[:, None].float(), y)

    small = torch.arange(3).repeat(2)
    return StageData(
        train=split(ys),
        meta=split(small),
        val=split(small),
        test=split(small),
        num_classes=3,
        train_counts=counts,
        source="synthetic (unit test)",
    )
