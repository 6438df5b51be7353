"""Image files indexed like a uint8 ``[N, 3, S, S]`` tensor, decoded on access.

ImageNet-LT and Places-LT do not fit in memory; this lets the one loop (which indexes
``split.x[idx]``) train on them unchanged. Each image is resized (shorter side S * 256 / 224)
and centre-cropped to S x S; the loop's ``prepare`` adds the flip and the normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .filelist import FileListDataset

__all__ = ["LazyImages"]


class LazyImages:
    def __init__(
        self,
        dataset: FileListDataset,
        index: Sequence[int] | None = None,
        size: int = 224,
        device: torch.device | str = "cpu",
    ) -> None:
        self.dataset = dataset
        self.index = np.arange(len(dataset)) if index is None else np.asarray(index)
        self.size = size
        self.device = torch.device(device)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.index), 3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.index)

    def to(self, device: torch.device | str) -> LazyImages:
        return LazyImages(self.dataset, self.index, self.size, device)

    def _load(self, i: int) -> Tensor:
        img, _ = self.dataset[int(self.index[i])]
        short = round(self.size * 256 / 224)
        w, h = img.size
        scale = short / min(w, h)
        img = img.resize(
            (max(short, round(w * scale)), max(short, round(h * scale))), Image.BILINEAR
        )
        w, h = img.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def __getitem__(self, idx: Tensor) -> Tensor:
        rows = idx.reshape(-1).tolist()
        return torch.stack([self._load(i) for i in rows]).to(self.device)
