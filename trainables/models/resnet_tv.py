"""torchvision ResNet-50 / ResNet-152 (ImageNet-LT, Places-LT), split into f1 and f2."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainables.data import PretrainedWeightsMissing

from .common import SplitNet, make_classifier

__all__ = ["pretrained_weights", "resnet50", "resnet152"]


_WEIGHTS = {"resnet50": "ResNet50_Weights", "resnet152": "ResNet152_Weights"}


def pretrained_weights(arch: str, *, fetch: bool = True) -> Path:
    """The ImageNet weights torchvision publishes for ``arch`` (``IMAGENET1K_V1``), in torch
    hub's cache (``TORCH_HOME``): fetched on first use through ``torch.hub`` (its URL, or
    ``OT_DATA_MIRROR``'s host), which checks the SHA-256 prefix in the file name and writes to a
    temporary file first; offline (or ``fetch=False``) a missing file is one line."""
    import torchvision

    from trainables.data.fetch import first_line, is_offline, mirrored, unreachable

    url = getattr(torchvision.models, _WEIGHTS[arch]).IMAGENET1K_V1.url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(url).name
    if path.is_file():
        return path
    reason = "offline (--offline or HF_HUB_OFFLINE)" if is_offline() else None
    if not fetch:
        reason = "not fetched now"
    source = mirrored(url)
    reason = reason or unreachable(source)
    if reason is not None:
        raise PretrainedWeightsMissing(
            f"ImageNet-pretrained {arch} weights not found at {path} and {reason}; download "
            f"{url} there, or set model.pretrained=false"
        )
    try:
        torch.hub.load_state_dict_from_url(
            source, model_dir=str(folder), check_hash=True, file_name=path.name, progress=False
        )
    except Exception as err:
        raise PretrainedWeightsMissing(
            f"ImageNet-pretrained {arch} weights: fetching {source} failed ({first_line(err)}); "
            "nothing was kept"
        ) from None
    return path


def _build(arch: str, num_classes: int, pretrained: bool, normed: bool) -> SplitNet:
    import torchvision

    ctor = getattr(torchvision.models, arch)
    net = ctor(weights=None)
    if pretrained:
        path = pretrained_weights(arch)
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
