"""Datasets, the shared long-tail construction, and offline sources.

A missing dataset raises :class:`DatasetMissing` with one line naming the dataset, the expected
path and how to get it; nothing ever falls back to other data.
"""

from __future__ import annotations

__all__ = ["DatasetMissing"]


class DatasetMissing(FileNotFoundError):
    """A dataset is not where the config says; the message says what to fetch and where."""
