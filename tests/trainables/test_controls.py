"""The control of an OT run (``stage2.learn_weights=false``): the same stage 2 with the weights
held at their start. They stay bit-equal; everything else (batches, Q's random draws, the
model's step) is the OT run's, so a run with a zero weight step size gives the same model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from trainables.config import Stage2Config
from trainables.data.arrays import StageData
from trainables.models import SplitNet
from trainables.reweight import WeightVector
from trainables.stage2 import train_stage2

from ._synthetic import three_class_features


def _data() -> StageData:
    return three_class_features()


def _run(cfg: Stage2Config):
    torch.manual_seed(1)
    model = SplitNet(nn.Sequential(nn.Linear(8, 6), nn.Tanh()), nn.Linear(6, 3), 6)
    res = train_stage2(model, _data(), cfg, generator=torch.Generator().manual_seed(5))
    return model.state_dict(), res


# random_sample draws Q from the generator at every step: the streams must stay aligned
@pytest.mark.parametrize("train", ["classifier", "all"])
@pytest.mark.parametrize("init", ["uniform", "class_balanced"])
def test_weights_stay_bit_equal_to_their_start_and_the_rest_is_the_ot_run(train, init):
    base = Stage2Config(
        epochs=2, batch_size=8, train=train, lr=0.1, weight_lr=2.0, max_iter=30,
        weight_init=init, meta_distribution="random_sample", virtual_step=False,
    )  # fmt: skip
    control_state, control = _run(dataclasses.replace(base, learn_weights=False))
    y = _data().train.y
    start = WeightVector(len(y), init=init, labels=y, num_classes=3)
    # bit-equal to the start after each epoch
    assert control.sample_weights == torch.softmax(start.logits.detach(), 0).tolist()
    assert control.weight_mass == [control.start_mass] * 2
    learned_state, learned = _run(base)
    assert control.weight_mass != learned.weight_mass  # the OT run's weights did move
    # a zero step on the weights is the same run as the control, bit for bit
    zero_state, zero = _run(dataclasses.replace(base, weight_lr=0.0))
    for k, v in control_state.items():
        assert torch.equal(v, zero_state[k]), k
    assert control.weight_mass == zero.weight_mass
    assert any(not torch.equal(v, learned_state[k]) for k, v in control_state.items())


def test_the_control_still_logs_the_ot_loss_at_its_fixed_weights():
    seen: list[dict] = []
    cfg = Stage2Config(epochs=1, batch_size=8, train="classifier", lr=0.1, weight_lr=2.0,
                       max_iter=30, learn_weights=False)  # fmt: skip
    torch.manual_seed(1)
    model = SplitNet(nn.Sequential(nn.Linear(8, 6), nn.Tanh()), nn.Linear(6, 3), 6)
    train_stage2(model, _data(), cfg, generator=torch.Generator().manual_seed(5),
                 callback=lambda s, e, m: seen.append(m))  # fmt: skip
    (m,) = seen
    assert m["ot_loss"] > 0.0 and m["train_loss"] > 0.0


@pytest.mark.parametrize("train", ["classifier", "all"])
def test_raw_loss_weights_record_the_raw_weights_beside_the_softmax_mass(train):
    cfg = Stage2Config(
        epochs=2, batch_size=8, train=train, lr=0.1, weight_lr=0.5, max_iter=30,
        weight_init="class_balanced", loss_weights="raw",
    )  # fmt: skip
    _, res = _run(cfg)
    logits = torch.tensor(res.raw_sample_weights)  # the logits after the last epoch
    y = _data().train.y
    raw = torch.zeros(3, dtype=logits.dtype).index_add(0, y, logits)
    assert len(res.raw_mass) == len(res.weight_mass) == 2
    torch.testing.assert_close(torch.tensor(res.raw_mass[-1], dtype=logits.dtype), raw)
    soft = torch.zeros(3, dtype=logits.dtype).index_add(0, y, torch.softmax(logits, 0))
    torch.testing.assert_close(torch.tensor(res.weight_mass[-1], dtype=logits.dtype), soft)
    assert abs(sum(res.raw_mass[-1]) - 1.0) > 0.5  # raw weights are not a distribution
    _, simplex = _run(dataclasses.replace(cfg, loss_weights="simplex"))
    assert simplex.raw_mass == [] and simplex.raw_sample_weights == []
