from __future__ import annotations

import math

import pytest
import torch

from trainables.reweight import (
    WeightNet,
    WeightVector,
    class_balanced_weights,
    class_prototypes,
    combined_cost,
    feature_cost,
    label_cost,
    random_prototype_batch,
    random_sample_per_class,
    released_code_mixing,
    whole_meta_set,
)


def test_label_cost_hand_example():
    c = label_cost(torch.tensor([0, 1, 2]), torch.tensor([1, 2]), num_classes=3)
    assert c.tolist() == [[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="outside"):
        label_cost(torch.tensor([3]), torch.tensor([0]), num_classes=3)


def test_feature_cost_hand_example():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    z_q = torch.tensor([[3.0, 0.0], [-1.0, 0.0]])
    expect = torch.tensor([[0.0, 2.0], [1.0, 1.0], [1 - 1 / math.sqrt(2), 1 + 1 / math.sqrt(2)]])
    torch.testing.assert_close(feature_cost(z, z_q), expect)


def test_combined_cost_is_sum_and_released_mixing_matches_released_formula():
    g = torch.Generator().manual_seed(0)
    z, z_q = torch.rand(6, 4, generator=g), torch.rand(10, 4, generator=g)
    y, y_q = torch.randint(0, 10, (6,), generator=g), torch.arange(10)
    torch.testing.assert_close(
        combined_cost(z, y, z_q, y_q, 10), feature_cost(z, z_q) + label_cost(y, y_q, 10)
    )
    fw, lw = released_code_mixing(10)
    assert (fw, lw) == (0.5, 0.1)
    # The released code: 0.5 * (1 - cos) + 0.5 * mean_k (onehot_i - onehot_j)_k^2
    oh, oh_q = torch.eye(10)[y], torch.eye(10)[y_q]
    lab = ((oh.unsqueeze(1) - oh_q.unsqueeze(0)) ** 2).mean(-1)
    released = 0.5 * feature_cost(z, z_q) + 0.5 * lab
    torch.testing.assert_close(
        combined_cost(z, y, z_q, y_q, 10, feature_weight=fw, label_weight=lw), released
    )


def test_prototypes_are_class_means():
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    z = torch.randn(7, 5, generator=g)
    q = class_prototypes(z, y, 3)
    for c in range(3):
        torch.testing.assert_close(q.z[c], z[y == c].mean(0))
    assert q.y.tolist() == [0, 1, 2]
    torch.testing.assert_close(q.b, torch.full((3,), 1 / 3))
    with pytest.raises(ValueError, match="no sample of classes \\[3\\]"):
        class_prototypes(z, y, 4)
    whole = whole_meta_set(z, y)
    assert whole.z.shape == (7, 5) and torch.allclose(whole.b.sum(), torch.tensor(1.0))


def test_random_sample_per_class_one_of_each_seeded():
    y = torch.arange(5).repeat_interleave(10)
    z = torch.arange(50, dtype=torch.float32).unsqueeze(1)
    picks = []
    for seed in (0, 0, 1):
        q = random_sample_per_class(z, y, 5, torch.Generator().manual_seed(seed))
        assert q.y.tolist() == [0, 1, 2, 3, 4]
        assert all(y[int(v)] == c for c, v in enumerate(q.z.squeeze(1)))
        picks.append(q.z.squeeze(1).tolist())
    assert picks[0] == picks[1] and picks[0] != picks[2]


def test_random_prototype_batch_has_m_distinct_classes():
    q = class_prototypes(torch.randn(1000, 8), torch.arange(100).repeat(10), 100)
    sub = random_prototype_batch(q, 30, torch.Generator().manual_seed(0))
    assert sub.y.unique().numel() == 30 and sub.z.shape == (30, 8)
    torch.testing.assert_close(sub.b, torch.full((30,), 1 / 30))
    for zi, yi in zip(sub.z, sub.y, strict=False):
        torch.testing.assert_close(zi, q.z[yi])
    with pytest.raises(ValueError):
        random_prototype_batch(q, 101, torch.Generator())


def test_class_balanced_weights_released_code_values():
    # CIFAR-10-LT IF 200 counts (official-code-facts.md) and the weights printed there.
    counts = torch.tensor([4990, 2769, 1537, 853, 473, 262, 145, 80, 44, 24])
    w = class_balanced_weights(counts, 0.9999)
    expect = [0.027, 0.045, 0.076, 0.132, 0.234, 0.418, 0.75, 1.355, 2.459, 4.504]
    torch.testing.assert_close(w, torch.tensor(expect), atol=1.5e-3, rtol=0)
    torch.testing.assert_close(w.sum(), torch.tensor(10.0))


def test_weight_vector_init_measure_and_scratch():
    labels = torch.tensor([0, 0, 0, 1])
    # under the softmax the logits are the log of the weights: the measure is proportional
    # to them; as raw CE weights (the released code) they are the weights themselves
    cb = torch.log(class_balanced_weights(torch.tensor([3, 1])))
    raw = WeightVector(4, init="class_balanced", labels=labels, num_classes=2, raw=True)
    torch.testing.assert_close(raw.logits.data, cb.exp()[labels])
    wv = WeightVector(4, init="class_balanced", labels=labels, num_classes=2)
    torch.testing.assert_close(wv.logits.data, cb[labels])
    idx = torch.tensor([1, 3])
    measure = torch.softmax(wv.logits[idx], 0)  # the batch's OT measure: in proportion to cb
    torch.testing.assert_close(measure, cb.exp()[torch.tensor([0, 1])] / cb.exp()[[0, 1]].sum())
    with torch.no_grad():
        wv.logits.add_(1.0)
    wv.reset_(idx)
    torch.testing.assert_close(wv.logits.data[idx], cb[torch.tensor([0, 1])])
    assert torch.allclose(wv.logits.data[0], cb[0] + 1.0)
    assert WeightVector(3).logits.abs().sum() == 0
    with pytest.raises(ValueError, match="needs labels"):
        WeightVector(3, init="class_balanced")


def test_weight_net_is_eq11_and_a_distribution():
    torch.manual_seed(0)
    net = WeightNet(6, hidden=5)
    z = torch.randn(9, 6)
    w = net(z)
    assert w.shape == (9,) and torch.all(w > 0)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    s = torch.tanh(z @ net.proj.weight.T + net.proj.bias) @ net.att.weight.T
    torch.testing.assert_close(w, torch.softmax(s.squeeze(1), 0))
