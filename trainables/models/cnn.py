from __future__ import annotations

from torch import nn

from .common import SplitNet, make_classifier


def small_cnn(
    num_classes: int, *, in_channels: int = 1, normed_classifier: bool = False, **_: object
) -> SplitNet:
    """A small CNN for 28x28 digits: two conv-BN-ReLU-pool blocks, 64-d pooled feature."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return SplitNet(features, make_classifier(64, num_classes, normed_classifier), 64)
