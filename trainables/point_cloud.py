"""Point-cloud modality adapter: long-tailed ModelNet10 or the synthetic shapes, and the point
models (PointNet, PointNet++, DGCNN). The shared loop does the rest, exactly as for images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from search_spaces.config import DataConfig, ModelConfig
from trainables.data.arrays import StageData, TensorSplit
from trainables.data.longtail import make_longtail_split
from trainables.models import SplitNet, build_model

__all__ = [
    "POINT_MODELS",
    "POINT_SOURCES",
    "build_point_data",
    "build_point_model",
    "check_point_data",
    "is_point_cloud",
]

REPO = Path(__file__).resolve().parents[1]
POINT_SOURCES = ("modelnet10", "shapes")
POINT_MODELS = ("pointnet", "pointnet2", "dgcnn")
# The synthetic test clouds come from another stream than the training pool.
_SHAPES_TEST_STREAM = 1_000_003


def is_point_cloud(cfg: DataConfig) -> bool:
    return cfg.source in POINT_SOURCES


def _root(cfg: DataConfig) -> Path:
    return Path(cfg.root or REPO / "data" / "modelnet10")


def check_point_data(cfg: DataConfig) -> None:
    """Raise :class:`DatasetMissing` now (before a cluster starts) when ModelNet10 is absent."""
    if cfg.source == "modelnet10":
        from trainables.data.modelnet import _check_tree

        _check_tree(_root(cfg))


def _load(cfg: DataConfig, seed: int):
    if cfg.source == "modelnet10":
        from trainables.data.modelnet import load_modelnet10

        a = load_modelnet10(_root(cfg), num_points=cfg.num_points, seed=seed)
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
