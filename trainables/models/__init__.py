"""Model builders (timm style: small named functions with flat arguments).

Every model exposes ``features(x) -> z`` (f1) and ``classifier`` (f2), and
``forward(x) = classifier(features(x))``.
"""

from __future__ import annotations

from .bert_fcn import bert_fcn
from .cnn import small_cnn
from .common import NormedLinear, SplitNet
from .point import dgcnn, pointnet, pointnet2
from .resnet_cifar import resnet32
from .resnet_tv import resnet50, resnet152

__all__ = [
    "MODELS",
    "NormedLinear",
    "SplitNet",
    "bert_fcn",
    "build_model",
    "dgcnn",
    "pointnet",
    "pointnet2",
    "resnet32",
    "resnet50",
    "resnet152",
    "small_cnn",
]

MODELS = {
    "bert_fcn": bert_fcn,
    "dgcnn": dgcnn,
    "pointnet": pointnet,
    "pointnet2": pointnet2,
    "small_cnn": small_cnn,
    "resnet32": resnet32,
    "resnet50": resnet50,
    "resnet152": resnet152,
}


def build_model(arch: str, num_classes: int, **kwargs) -> SplitNet:
    if arch not in MODELS:
        raise ValueError(f"unknown model {arch!r}; choose from {sorted(MODELS)}")
    return MODELS[arch](num_classes, **kwargs)
