"""Every stage 2 also records its post-hoc logit-adjusted reading (a row's ``+la``): each epoch
read through ``z - la_tau * log(prior)``, selected on its own validation score, in both loops
(cached features: the population; through f1) and for every member of a population."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from orchestrator.stages import flat_summary
from trainables.config import POSTHOC_PREFIX, Stage2Config
from trainables.loop import check_stage2
from trainables.metrics import classification_metrics
from trainables.models import SplitNet
from trainables.population import train_population
from trainables.stage2 import train_stage2
from trainables.trial import POSTHOC_SUMMARY, scalar_summary

from ._synthetic import three_class_features

TAU = 2.0
BASE = Stage2Config(epochs=4, batch_size=8, lr=0.1, weight_lr=0.5, max_iter=30, la_tau=TAU)


def _model() -> SplitNet:
    torch.manual_seed(1)
    return SplitNet(nn.Sequential(nn.Linear(8, 6), nn.Tanh()), nn.Linear(6, 3), 6)


def _by_hand(model: nn.Module, data, tau: float) -> tuple[dict, bool]:
    """The model's val/test metrics with ``tau * log(prior)`` subtracted, written out here, and
    whether the adjustment changed any prediction."""
    counts = torch.tensor(data.train_counts, dtype=torch.float64)
    log_prior = torch.log(counts / counts.sum()).float()
    out, changed = {}, False
    model.eval()
    with torch.no_grad():
        for name in ("val", "test"):
            split = getattr(data, name)
            logits = model(split.x)
            pred = (logits - tau * log_prior).argmax(1)
            changed |= not torch.equal(pred, logits.argmax(1))
            out[name] = classification_metrics(pred, split.y, 3, data.train_counts)
    return out, changed


def _train(cfg: Stage2Config):
    data, model, epochs = three_class_features(), _model(), []
    res = train_stage2(
        model, data, cfg, generator=torch.Generator().manual_seed(5),
        callback=lambda s, e, m: epochs.append(m),
    )  # fmt: skip
    return data, model, res, epochs


@pytest.mark.parametrize("train", ["classifier", "all"])
def test_the_last_epochs_adjusted_reading_by_hand(train):
    data, model, res, epochs = _train(dataclasses.replace(BASE, train=train))
    expect, changed = _by_hand(model, data, TAU)  # the model holds the last epoch's parameters
    assert changed  # tau 2 moves predictions toward the rare classes here
    for split in ("val", "test"):
        for metric in ("top1_error", "balanced_acc"):
            want = expect[split][metric]
            assert res.posthoc.last[split][metric] == pytest.approx(want, abs=1e-9)
            assert epochs[-1][f"{POSTHOC_PREFIX}{split}_{metric}"] == pytest.approx(want, abs=1e-9)
    # the unadjusted reading is still the row's own
    assert res.last["test"]["top1_error"] == epochs[-1]["test_top1_error"]


@pytest.mark.parametrize("train", ["classifier", "all"])
def test_the_adjusted_reading_selects_on_its_own_validation_score(train):
    _, _, res, epochs = _train(dataclasses.replace(BASE, train=train))
    vals = [m[f"{POSTHOC_PREFIX}val_balanced_acc"] for m in epochs]
    best = max(range(len(vals)), key=lambda i: (vals[i], -i))  # ties keep the earlier epoch
    assert res.posthoc.selected["epoch"] == best
    assert res.posthoc.selected["test"]["top1_error"] == pytest.approx(
        epochs[best][f"{POSTHOC_PREFIX}test_top1_error"]
    )
    assert res.posthoc.state is None  # no model copy kept for a reading
    # the summary carries it, and it is logged under the prefix
    summary = scalar_summary(res)
    flat = flat_summary(summary)
    picked = summary[POSTHOC_SUMMARY]["validation_selected"]
    assert picked["epoch"] == best + 1  # counted from 1 where a user reads it
    key = f"{POSTHOC_PREFIX}best_val_epoch/test_top1_error"
    assert flat[key] == picked["test"]["top1_error"]
    assert flat["best_val_epoch/test_top1_error"] == res.selected["test"]["top1_error"]


def test_tau_zero_reads_the_logits_themselves():
    _, _, res, _ = _train(dataclasses.replace(BASE, la_tau=0.0))
    assert res.posthoc.last == res.last and res.posthoc.selected == res.selected


def test_every_population_member_has_its_own_adjusted_reading():
    data = three_class_features()
    cfgs = [dataclasses.replace(BASE, train="classifier", lr=lr) for lr in (0.05, 0.3)]
    seen: dict[int, list[dict]] = {0: [], 1: []}
    model = _model()
    outcomes = train_population(
        model, data, cfgs, generator=torch.Generator().manual_seed(5),
        callback=lambda m, s, e, metrics: seen[m].append(metrics),
    )  # fmt: skip
    readings = []
    for m, out in enumerate(outcomes):
        head = nn.Linear(6, 3)
        head.load_state_dict(out.last_state)
        expect, _ = _by_hand(SplitNet(model.features, head, 6), data, TAU)  # f1 stays frozen
        got = out.result.posthoc.last["test"]["balanced_acc"]
        assert got == pytest.approx(expect["test"]["balanced_acc"], abs=1e-9)
        assert seen[m][-1][f"{POSTHOC_PREFIX}test_balanced_acc"] == got
        readings.append([e[f"{POSTHOC_PREFIX}val_balanced_acc"] for e in seen[m]])
    assert readings[0] != readings[1]  # each member read from its own head


@pytest.mark.parametrize("tau", [-0.5, math.inf, math.nan])
def test_a_tau_that_is_not_a_finite_non_negative_number_is_refused(tau):
    with pytest.raises(ValueError, match=r"stage2\.la_tau=.* must be a finite number >= 0"):
        check_stage2(dataclasses.replace(BASE, la_tau=tau), 3)
