"""The released code's two image-side switches: prototypes from per-class pixel-mean images
through f1 in train-mode batch norm (checked against a hand computation, running statistics
included), and stage 2 on a frozen f1 that sees each step's augmented images."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from trainables.config import Stage2Config
from trainables.data.arrays import StageData, TensorSplit
from trainables.loop import check_stage2
from trainables.models import SplitNet
from trainables.reweight import pixel_mean_prototypes
from trainables.stage2 import train_stage2


def test_pixel_mean_prototypes_by_hand():
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, -1.0]]))
        lin.bias.copy_(torch.tensor([0.5, -0.5]))
    bn = nn.BatchNorm1d(2)
    f1 = nn.Sequential(nn.Flatten(), lin, bn).eval()
    # 2 classes, 2 meta images each (1 x 2 x 2 pixels)
    x = torch.tensor(
        [[1, 2, 3, 4], [3, 2, 1, 0], [0, 0, 0, 8], [2, 2, 2, 2]], dtype=torch.float32
    ).view(4, 1, 2, 2)
    y = torch.tensor([0, 0, 1, 1])
    q = pixel_mean_prototypes(f1, x, y, 2)
    # mean images: class 0 (2, 2, 2, 2), class 1 (1, 1, 1, 5)
    # linear: class 0 (2 + 4 + 0.5, 2 - 2 - 0.5) = (6.5, -0.5); class 1 (1 + 2 + 0.5, 1 - 5 - 0.5)
    h = torch.tensor([[6.5, -0.5], [3.5, -4.5]])
    mu, var = h.mean(0), h.var(0, unbiased=False)  # the K=2 images' batch statistics
    torch.testing.assert_close(q.z, (h - mu) / torch.sqrt(var + bn.eps))
    assert q.y.tolist() == [0, 1] and q.b.tolist() == [0.5, 0.5]
    # train mode updated the running statistics (momentum 0.1, unbiased variance), then f1
    # got its eval mode back
    torch.testing.assert_close(bn.running_mean, 0.1 * mu)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * h.var(0, unbiased=True))
    assert not f1.training and not bn.training


def _images() -> StageData:
    g = torch.Generator().manual_seed(0)
    counts = (8, 4)
    ys = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])

    def split(y):
        x = torch.randint(0, 256, (len(y), 1, 4, 4), generator=g, dtype=torch.uint8)
        return TensorSplit(x, y)

    two = torch.arange(2).repeat(2)
    return StageData(
        train=split(ys), meta=split(two), val=split(two), test=split(two), num_classes=2,
        train_counts=counts, source="synthetic images (unit test)", mean=(0.5,), std=(0.25,),
        crop_pad=1, hflip=True,
    )  # fmt: skip


def _model() -> SplitNet:
    torch.manual_seed(0)
    f1 = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip
    return SplitNet(f1, nn.Linear(3, 2), 3)


def _classifier_inputs(cfg: Stage2Config):
    """(every input the classifier saw in training steps, the model)."""
    model, data = _model(), _images()
    seen = []
    model.classifier.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].detach().clone()) if mod.training else None
    )
    train_stage2(model, data, cfg, generator=torch.Generator().manual_seed(1))
    return seen, model, data


BASE = Stage2Config(train="classifier", epochs=2, batch_size=12, max_iter=20, weight_lr=1.0)


def test_augmented_features_are_the_frozen_f1_on_fresh_augmentations():
    aug = dataclasses.replace(BASE, features="augmented")
    seen, model, data = _classifier_inputs(aug)
    assert len(seen) == 2  # one step per epoch (12 samples, batch 12)
    # the whole training set each epoch, in a different order: compare sorted per-feature
    model.eval()
    with torch.no_grad():
        plain = model.features(data.prepare(data.train.x, augment=False, generator=None))
    for batch in seen:
        # features of augmented images: not those of the unaugmented ones
        assert not torch.allclose(batch.sort(0).values, plain.sort(0).values)
    assert not torch.allclose(seen[0].sort(0).values, seen[1].sort(0).values)
    # cached: the classifier sees f1's unaugmented features, the same set every epoch
    cached, _, _ = _classifier_inputs(BASE)
    for batch in cached:
        torch.testing.assert_close(batch.sort(0).values, plain.sort(0).values)


def test_pixel_mean_prototypes_move_the_running_statistics_only_when_asked():
    aug = dataclasses.replace(BASE, features="augmented")
    _, m_features, _ = _classifier_inputs(aug)
    _, m_pixel, _ = _classifier_inputs(dataclasses.replace(aug, prototype_from="pixel_mean"))
    start = _model().features[1].running_mean
    # f1 stays in eval mode except for the prototypes' forward: only pixel_mean moves BN's stats
    torch.testing.assert_close(m_features.features[1].running_mean, start)
    assert not torch.allclose(m_pixel.features[1].running_mean, start)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"features": "augmented", "train": "all"}, "needs stage2.train=classifier"),
        ({"features": "augmented", "weights": "net"}, "weight vector"),
        ({"prototype_from": "pixel_mean"}, "needs stage2.features=augmented"),
    ],
)
def test_switches_that_cannot_apply_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        check_stage2(dataclasses.replace(BASE, **change), 2)
