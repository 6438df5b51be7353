"""What learns the weights: per-sample logits, per-class logits, or class + per-sample residual;
gradients against finite differences, the step's optimiser and normalised steps."""

from __future__ import annotations

import pytest
import torch

from trainables.reweight import StepConfig, WeightVector, class_prototypes, reweight_step
from trainables.reweight.step import step_cost, step_ot_loss

K = 3
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 0, 1, 2, 2])  # the 10 training samples' classes


def _vector(param: str, init: str = "class_balanced") -> WeightVector:
    return WeightVector(10, init=init, labels=LABELS, num_classes=K, param=param).double()


def _objective(wv: WeightVector, idx: torch.Tensor) -> torch.Tensor:
    """The batch's OT loss under a fixed combined cost, as step (b) takes it."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(len(idx), 5, generator=g, dtype=torch.float64)
    meta_z = torch.randn(6, 5, generator=g, dtype=torch.float64)
    q = class_prototypes(meta_z, torch.tensor([0, 0, 1, 1, 2, 2]), K)
    cfg = StepConfig(max_iter=50, impl="reference")
    cost = step_cost(cfg, z, LABELS[idx], q, K).double()
    return step_ot_loss(cfg, cost, torch.softmax(wv.logits[idx], 0), q.b.double())


@pytest.mark.parametrize("param", ["sample", "class", "class_residual"])
def test_each_parametrisation_gradient_matches_finite_differences(param):
    wv = _vector(param)
    with torch.no_grad():  # away from the symmetric start, so every entry's gradient differs
        for p in wv.parameters():
            p.add_(torch.linspace(-0.3, 0.4, p.numel(), dtype=torch.float64))
    idx = torch.tensor([7, 2, 0, 9, 4, 5])
    params = list(wv.parameters())
    grads = torch.autograd.grad(_objective(wv, idx), params)
    h = 1e-6
    checked = 0
    for p, g in zip(params, grads, strict=True):
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += h
                up = _objective(wv, idx).item()
                p.view(-1)[i] -= 2 * h
                down = _objective(wv, idx).item()
                p.view(-1)[i] += h
            assert g.view(-1)[i].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)
            checked += 1
    assert checked == {"sample": 10, "class": K, "class_residual": K + 10}[param]


def test_per_class_logits_are_shared_and_the_residual_starts_at_zero():
    cls = _vector("class")
    res = _vector("class_residual")
    plain = _vector("sample")
    torch.testing.assert_close(cls.logits, plain.logits)  # the same class-balanced start
    torch.testing.assert_close(res.logits, plain.logits)
    assert res.residual.abs().sum() == 0 and cls.class_logits.shape == (K,)
    with torch.no_grad():
        cls.class_logits[1] += 2.0
    assert torch.equal(cls.logits[LABELS == 1], plain.logits[LABELS == 1] + 2.0)
    with pytest.raises(ValueError, match="scratch"):
        WeightVector(10, labels=LABELS, num_classes=K, param="class", mode="scratch")
    with pytest.raises(ValueError, match="needs labels"):
        WeightVector(10, param="class")


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh())
        self.classifier = torch.nn.Linear(5, K)


def _one_step(wv: WeightVector, weight_opt, **cfg_kw) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = _Tiny().double()
    model.features.requires_grad_(False)  # frozen f1: step (b) alone moves the weights
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    idx = torch.tensor([7, 2, 0, 9, 4, 5])
    meta_x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    meta_y = torch.tensor([0, 0, 1, 1, 2, 2])
    before = [p.detach().clone() for p in wv.parameters()]
    with torch.no_grad():
        q = class_prototypes(model.features(meta_x), meta_y, K)
    reweight_step(
        model, x, LABELS[idx], idx, wv, torch.optim.SGD(model.classifier.parameters(), lr=0.1),
        weight_opt, StepConfig(max_iter=50, **cfg_kw), num_classes=K, q=q,
    )  # fmt: skip
    return [p.detach() - b for p, b in zip(wv.parameters(), before, strict=True)]


@pytest.mark.parametrize("param", ["sample", "class_residual"])
def test_a_normalised_step_has_the_step_size_as_its_length(param):
    wv = _vector(param)
    moved = _one_step(wv, torch.optim.SGD(wv.parameters(), lr=0.7), normalize_weight_grad=True)
    length = torch.sqrt(sum((d**2).sum() for d in moved))
    assert length.item() == pytest.approx(0.7, rel=1e-12)
    plain = _vector(param)
    raw = _one_step(plain, torch.optim.SGD(plain.parameters(), lr=0.7))
    raw_len = torch.sqrt(sum((d**2).sum() for d in raw)).item()
    assert raw_len != pytest.approx(0.7, rel=1e-3)  # the OT gradient's own scale
    for a, b in zip(moved, raw, strict=True):  # the same direction
        torch.testing.assert_close(a * raw_len / 0.7, b)


def test_adam_takes_a_first_step_of_the_step_size_per_coordinate():
    wv = _vector("class")
    moved = _one_step(wv, torch.optim.Adam(wv.parameters(), lr=0.05))[0]
    assert moved.shape == (K,)
    torch.testing.assert_close(moved.abs(), torch.full((K,), 0.05, dtype=torch.float64))


def test_the_weight_net_and_scratch_mode_refuse_other_parametrisations():
    from trainables.config import Stage2Config
    from trainables.loop import check_stage2

    check_stage2(Stage2Config(weight_param="class_residual"), K)
    with pytest.raises(ValueError, match="weight net"):
        check_stage2(Stage2Config(weights="net", weight_param="class"), K)
    with pytest.raises(ValueError, match="scratch"):
        check_stage2(Stage2Config(weight_param="class", weight_mode="scratch"), K)
