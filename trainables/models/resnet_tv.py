"""torchvision ResNet-50 / ResNet-152 (ImageNet-LT, Places-LT), split into f1 and f2."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .common import SplitNet, make_classifier

__all__ = ["PretrainedWeightsMissing", "resnet50", "resnet152"]


class PretrainedWeightsMissing(FileNotFoundError):
    pass


def _build(arch: str, num_classes: int, pretrained: bool, normed: bool) -> SplitNet:
    import torchvision

    ctor = getattr(torchvision.models, arch)
    weights_enum = {"resnet50": "ResNet50_Weights", "resnet152": "ResNet152_Weights"}[arch]
    net = ctor(weights=None)
    if pretrained:
        weights = getattr(torchvision.models, weights_enum).IMAGENET1K_V1
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not path.is_file():
            raise PretrainedWeightsMissing(
                f"ImageNet-pretrained {arch} weights not found at {path}; download {weights.url} "
                "there (no network here), or set model.pretrained=false"
            )
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return SplitNet(net, make_classifier(dim, num_classes, normed), dim)


def resnet50(
    num_classes: int, *, pretrained: bool = False, normed_classifier: bool = False, **_: object
) -> SplitNet:
    return _build("resnet50", num_classes, pretrained, normed_classifier)


def resnet152(
    num_classes: int, *, pretrained: bool = False, normed_classifier: bool = False, **_: object
) -> SplitNet:
    return _build("resnet152", num_classes, pretrained, normed_classifier)
