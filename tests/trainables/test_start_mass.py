"""The weight mass per class before the first OT step (``StageResult.start_mass``): what the
learned-weights figure and a run's description read the learned mass against."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from trainables.config import Stage2Config
from trainables.models import SplitNet
from trainables.population import train_population
from trainables.reweight import WeightVector
from trainables.stage2 import train_stage2

from ._synthetic import three_class_features

BASE = Stage2Config(train="classifier", epochs=1, batch_size=5, lr=0.1, weight_lr=2.0, max_iter=20)


def _model() -> SplitNet:
    torch.manual_seed(1)
    return SplitNet(nn.Identity(), nn.Linear(8, 3), 8)


def _single(cfg: Stage2Config):
    data = three_class_features()
    torch.manual_seed(3)  # the weight net's initialisation draws from the global generator
    return train_stage2(
        _model(), data, cfg, generator=torch.Generator().manual_seed(5), features=data
    )


def test_uniform_weights_start_at_each_class_share_of_the_training_set():
    res = _single(BASE)
    counts = three_class_features().train_counts  # 12, 6, 3
    assert res.start_mass == pytest.approx([n / sum(counts) for n in counts])
    assert res.start_mass != res.weight_mass[0]  # the first epoch moved them


def test_class_balanced_weights_start_where_the_weight_vector_starts():
    cfg = dataclasses.replace(BASE, weight_init="class_balanced", learn_weights=False)
    res = _single(cfg)
    y = three_class_features().train.y
    start = WeightVector(len(y), init="class_balanced", labels=y, num_classes=3)
    mass = torch.zeros(3).index_add(0, y, torch.softmax(start.logits.detach(), 0))
    assert res.start_mass == pytest.approx(mass.tolist())
    # the control holds its weights at their start: every epoch's mass is the start's
    assert all(row == pytest.approx(res.start_mass) for row in res.weight_mass)


@pytest.mark.parametrize("weights", ["vector", "net"])
def test_population_members_start_where_their_single_trials_start(weights):
    cfgs = [
        dataclasses.replace(BASE, weights=weights),
        dataclasses.replace(BASE, weights=weights, lr=0.3, weight_lr=0.5),
    ]
    if weights == "vector":
        cfgs.append(dataclasses.replace(BASE, weight_param="class", weight_optimizer="adam"))
    data = three_class_features()
    torch.manual_seed(3)
    outs = train_population(
        _model(), data, cfgs, generator=torch.Generator().manual_seed(5), features=data
    )
    for out, cfg in zip(outs, cfgs, strict=True):
        assert out.result.start_mass == pytest.approx(_single(cfg).start_mass, abs=1e-6), cfg
        assert sum(out.result.start_mass) == pytest.approx(1.0)


def _named_weights(init: str, counts: list[int], beta: float = 0.9999) -> list[float]:
    """Each class's weight as the init names it, by hand, scaled to sum to K."""
    if init == "class_balanced":
        w = [(1 - beta) / (1 - beta**n) for n in counts]
    else:  # inverse_frequency
        w = [1 / n for n in counts]
    return [x * len(w) / sum(w) for x in w]


@pytest.mark.parametrize("train", ["classifier", "all"])
@pytest.mark.parametrize("param", ["sample", "class", "class_residual"])
@pytest.mark.parametrize("init", ["class_balanced", "inverse_frequency"])
@pytest.mark.parametrize("loss_weights", ["simplex", "raw"])
def test_each_init_starts_at_the_weighting_it_names(loss_weights, init, param, train):
    """Under softmax weights (``simplex``) each sample starts at ``w_{y_i} / sum_j w_{y_j}``
    (class mass ``n_k w_k`` normalised: for inverse frequency every class the same), under
    every parametrisation, in the population loop and in the path through f1; under ``raw``
    the logits the CE multiplies are the weights themselves (the released code's start)."""
    cfg = dataclasses.replace(
        BASE, weight_init=init, weight_param=param, loss_weights=loss_weights, train=train,
        learn_weights=False,
    )  # fmt: skip
    res = _single(cfg)
    data = three_class_features()
    counts = list(data.train_counts)  # 12, 6, 3
    w = _named_weights(init, counts)
    y = data.train.y.tolist()
    if loss_weights == "simplex":
        total = sum(n * x for n, x in zip(counts, w, strict=True))
        expect_mass = [n * x / total for n, x in zip(counts, w, strict=True)]
        assert res.sample_weights == pytest.approx([w[c] / total for c in y], rel=1e-6)
        if init == "inverse_frequency":
            assert expect_mass == pytest.approx([1 / 3] * 3)
    else:
        assert res.raw_sample_weights == pytest.approx([w[c] for c in y], rel=1e-6)
        total = sum(n * math.exp(x) for n, x in zip(counts, w, strict=True))
        expect_mass = [n * math.exp(x) / total for n, x in zip(counts, w, strict=True)]
    assert res.start_mass == pytest.approx(expect_mass, rel=1e-6)
    assert res.weight_mass[-1] == pytest.approx(expect_mass, rel=1e-6)  # held: the control
