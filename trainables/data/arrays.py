"""In-memory splits and batch-level augmentation (small datasets live on the device whole)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["StageData", "TensorSplit", "iterate_batches"]


@dataclass(frozen=True)
class TensorSplit:
    """``x``: uint8 images ``[N, C, H, W]``, float point clouds ``[N, P, 3]`` or float features
    ``[N, E]``; ``y``: long ``[N]``."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> TensorSplit:
        return TensorSplit(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class StageData:
    """Everything one trial trains and evaluates on.

    mean/std: per-channel normalisation of uint8 images (None for feature inputs).
    crop_pad: random-crop padding of the training augmentation (0 = none); hflip likewise.
    point_augment: point clouds are augmented by a random anisotropic scale in [2/3, 3/2] and a
      random shift in [-0.2, 0.2] per axis and cloud (DGCNN's ``translate_pointcloud``).
    """

    train: TensorSplit
    meta: TensorSplit
    val: TensorSplit
    test: TensorSplit
    num_classes: int
    train_counts: tuple[int, ...]
    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_pad: int = 0
    hflip: bool = False
    point_augment: bool = False

    @property
    def is_images(self) -> bool:
        return self.mean is not None

    def to(self, device: torch.device | str) -> StageData:
        return replace(
            self,
            train=self.train.to(device),
            meta=self.meta.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
        )

    def prepare(self, x: Tensor, *, augment: bool, generator: torch.Generator | None) -> Tensor:
        """uint8 batch -> normalised float, with crop/flip augmentation when asked (point
        clouds: scale and shift; features: unchanged)."""
        if not self.is_images:
            if augment and self.point_augment:
                return _scale_shift(x, generator)
            return x
        x = x.float().div_(255.0)
        if augment and self.crop_pad:
            x = _random_crop(x, self.crop_pad, generator)
        if augment and self.hflip:
            flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
            x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _scale_shift(x: Tensor, generator: torch.Generator | None) -> Tensor:
    dev = generator.device if generator is not None else x.device
    u = torch.rand(2, x.shape[0], 1, x.shape[2], generator=generator, device=dev).to(x.device)
    return x * (2.0 / 3.0 + u[0] * (3.0 / 2.0 - 2.0 / 3.0)) + (u[1] * 0.4 - 0.2)


def _random_crop(x: Tensor, pad: int, generator: torch.Generator | None) -> Tensor:
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dev = generator.device if generator is not None else x.device
    off = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=dev).to(x.device)
    rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def iterate_batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    """Index batches over ``range(n)``; a seeded permutation when ``shuffle``."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
