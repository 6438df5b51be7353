"""Point-cloud modality adapter: long-tailed ModelNet10 or the synthetic shapes, and the point
models (PointNet, PointNet++, DGCNN). The shared loop does the rest, exactly as for images."""

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
    "POINT_CLOUD",
    "POINT_MODELS",
    "POINT_SOURCES",
    "PointCloudModality",
    "build_point_data",
    "build_point_model",
]

POINT_SOURCES = ("modelnet10", "shapes")
POINT_MODELS = ("pointnet", "pointnet2", "dgcnn")
# The synthetic test clouds come from another stream than the training pool.
_SHAPES_TEST_STREAM = 1_000_003


def _root(cfg: DataConfig) -> Path:
    return Path(cfg.root or data_home() / "modelnet10")


def _load(cfg: DataConfig, seed: int):
    if cfg.source == "modelnet10":
        from trainables.data.modelnet import load_modelnet10

        a = load_modelnet10(_root(cfg), num_points=cfg.num_points, seed=seed, download=cfg.download)
        return a.train_x, a.train_y, a.test_x, a.test_y, a.source
    if cfg.source == "shapes":
        from trainables.data.shapes import SHAPES_SOURCE, make_shapes

        if cfg.limit_per_class <= 0 or cfg.test_per_class <= 0:
            raise ValueError("shapes: set data.limit_per_class and data.test_per_class > 0")
        # The generated dataset is fixed (like a real one); the seed draws the split.
        train_x, train_y = make_shapes(cfg.limit_per_class, cfg.num_points, 0)
        test_x, test_y = make_shapes(cfg.test_per_class, cfg.num_points, _SHAPES_TEST_STREAM)
        return train_x, train_y, test_x, test_y, SHAPES_SOURCE
    raise ValueError(f"unknown point-cloud source {cfg.source!r}; choose from {POINT_SOURCES}")


def build_point_data(cfg: DataConfig, seed: int) -> StageData:
    """Long-tailed train / meta / val splits (class 0 the head) and the balanced test set."""
    train_x, train_y, test_x, test_y, source = _load(cfg, seed)
    classes = int(train_y.max()) + 1
    if classes != cfg.num_classes:
        raise ValueError(f"{source} has {classes} classes, config says {cfg.num_classes}")
    if cfg.val_per_class <= 0:
        raise ValueError("data.val_per_class must be > 0: model selection needs a validation set")
    split = make_longtail_split(
        train_y,
        cfg.num_classes,
        cfg.imbalance_factor,
        meta_per_class=cfg.meta_per_class,
        val_per_class=cfg.val_per_class,
        protocol=cfg.protocol,
        seed=seed,
        cap_to_pool=True,
    )

    def part(x: np.ndarray, y: np.ndarray, idx: np.ndarray | None = None) -> TensorSplit:
        if idx is not None:
            x, y = x[idx], y[idx]
        return TensorSplit(torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y)).long())

    return StageData(
        train=part(train_x, train_y, split.train),
        meta=part(train_x, train_y, split.meta),
        val=part(train_x, train_y, split.val),
        test=part(test_x, test_y),
        num_classes=cfg.num_classes,
        train_counts=split.counts,
        source=source,
        point_augment=cfg.augment,
    )


def build_point_model(cfg: ModelConfig, num_classes: int) -> SplitNet:
    if cfg.arch not in POINT_MODELS:
        raise ValueError(f"point clouds need model.arch in {POINT_MODELS}, got {cfg.arch!r}")
    return build_model(
        cfg.arch,
        num_classes,
        emb_dim=cfg.emb_dim,
        k=cfg.k,
        normed_classifier=cfg.normed_classifier,
    )


@dataclass(frozen=True)
class PointCloudModality:
    """The point-cloud entry of the modality registry (:mod:`trainables.modalities`)."""

    sources: tuple[str, ...] = POINT_SOURCES

    def check_data(self, cfg: ExperimentConfig, *, fetch: bool = True) -> None:
        """ModelNet10 is there or fetched now (:class:`DatasetMissing` if neither); the shapes
        are generated."""
        if cfg.data.source == "modelnet10":
            from trainables.data.modelnet import check_tree

            check_tree(_root(cfg.data), fetch=fetch and cfg.data.download)

    def data_and_model(
        self, cfg: ExperimentConfig, device: torch.device, *, load_pretrained: bool
    ) -> tuple[StageData, SplitNet]:
        """``load_pretrained`` is moot: the point models have no pretrained weights."""
        data = build_point_data(cfg.data, cfg.seed).to(device)
        return data, build_point_model(cfg.model, data.num_classes).to(device)

    def start_stage1(
        self,
        cfg: ExperimentConfig,
        device: torch.device,
        *,
        generator: torch.Generator,
        callback: Callable[[str, int, dict], None] | None = None,
    ) -> tuple[StageData, SplitNet]:
        """No stage 0: the data and a freshly initialised model."""
        return self.data_and_model(cfg, device, load_pretrained=True)

    def feature_model(
        self, cfg: ExperimentConfig, data: StageData, model_state: dict[str, Tensor], info: dict
    ) -> tuple[SplitNet, dict[str, Tensor]]:
        """The whole model and the whole stage-1 state."""
        return build_point_model(cfg.model, data.num_classes), model_state


POINT_CLOUD = PointCloudModality()
