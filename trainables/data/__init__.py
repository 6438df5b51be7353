"""Datasets, the shared long-tail construction, and offline sources.

A missing dataset raises :class:`DatasetMissing` with one line naming the dataset, the expected
path and how to get it; nothing ever falls back to other data.
"""

from __future__ import annotations

__all__ = ["DatasetMissing", "PretrainedWeightsMissing"]


class DatasetMissing(FileNotFoundError):
    """A dataset is not where the config says; the message says what to fetch and where."""


class PretrainedWeightsMissing(FileNotFoundError):
    """Pretrained weights (an ImageNet ResNet, a text encoder) are not in their cache and
    cannot be fetched now; the message says what to fetch and where."""
