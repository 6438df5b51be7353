from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NormedLinear", "SplitNet"]


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM-DRW: ``normalize(z) @ normalize(W)``, logits in [-1, 1]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1))
        with torch.no_grad():
            self.weight.renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=1) @ F.normalize(self.weight, dim=0)


class SplitNet(nn.Module):
    """f = f2(f1(x)): ``features`` is f1, ``classifier`` is f2 (paper Sec. 4.2).

    ``eval_batch_size``: how many inputs evaluation and feature extraction push through at once
    (point-cloud models lower it: their kNN graphs grow with the batch).
    """

    eval_batch_size: int = 512

    def __init__(self, features: nn.Module, classifier: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.feature_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def make_classifier(dim: int, num_classes: int, normed: bool) -> nn.Module:
    return NormedLinear(dim, num_classes) if normed else nn.Linear(dim, num_classes)
