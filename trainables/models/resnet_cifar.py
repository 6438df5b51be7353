"""ResNet-32 for CIFAR as in LDAM-DRW / MW-Net: option-A shortcuts, 16/32/64 channels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .common import SplitNet, make_classifier


class _Block(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def shortcut(self, x: Tensor) -> Tensor:
        if not self.pad:
            return x
        # Option A: subsample and zero-pad channels; no parameters.
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet32(
    num_classes: int, *, in_channels: int = 3, normed_classifier: bool = False, **_: object
) -> SplitNet:
    """z is the 64-d globally pooled, post-ReLU feature; classifier is Linear(64, K)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
    ]
    in_planes = 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(5):
            layers.append(_Block(in_planes, planes, stride if i == 0 else 1))
            in_planes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    net = SplitNet(nn.Sequential(*layers), make_classifier(64, num_classes, normed_classifier), 64)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
    return net
