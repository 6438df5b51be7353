"""Stage-1 losses against values worked out by hand with ``math`` from each paper's formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from trainables.losses import LOSSES, StageLoss, make_loss, posthoc_logit_adjustment

LOGITS = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.2], [-0.5, 0.4, 0.1]]
LABELS = [0, 2, 1]
COUNTS = [100, 10, 1]
K = 3


# ---- plain-Python references --------------------------------------------------------------


def _ce(row: list[float], y: int) -> float:
    """-log softmax(row)_y."""
    return math.log(sum(math.exp(v) for v in row)) - row[y]


def _focal(row: list[float], y: int, gamma: float) -> float:
    """-(1 - p_y)^gamma log p_y."""
    nll = _ce(row, y)
    return (1.0 - math.exp(-nll)) ** gamma * nll


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _cui_cb_focal(rows, labels, w: list[float], gamma: float) -> float:
    """Cui et al.'s class-balanced focal loss transcribed: for every sample i and class j, a
    sigmoid focal term on the one-hot target, weighted by w_{y_i}; summed, over the batch size."""
    total = 0.0
    for row, y in zip(rows, labels, strict=True):
        for j, z in enumerate(row):
            p_t = _sigmoid(z) if j == y else 1.0 - _sigmoid(z)
            total += w[y] * (1.0 - p_t) ** gamma * -math.log(p_t)
    return total / len(rows)


def _ldam_cb_focal(rows, labels, w: list[float], gamma: float) -> float:
    """LDAM-DRW's FocalLoss(weight=w): l_i = w_{y_i} CE_i, p_i = exp(-l_i), mean (1-p_i)^g l_i."""
    out = []
    for row, y in zip(rows, labels, strict=True):
        li = w[y] * _ce(row, y)
        out.append((1.0 - math.exp(-li)) ** gamma * li)
    return sum(out) / len(out)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _wmean(xs: list[float], w: list[float]) -> float:
    """sum_i w_{y_i} l_i / sum_i w_{y_i}, with w already picked per sample."""
    return sum(a * b for a, b in zip(xs, w, strict=True)) / sum(w)


def _cb(counts: list[int], beta: float) -> list[float]:
    """Cui et al. effective-number weights, normalised to sum to K."""
    raw = [(1.0 - beta) / (1.0 - beta**n) for n in counts]
    return [r * len(counts) / sum(raw) for r in raw]


def _margins(counts: list[int], max_m: float) -> list[float]:
    raw = [n**-0.25 for n in counts]
    return [r * max_m / max(raw) for r in raw]


def _ldam_rows(counts: list[int], max_m: float, s: float) -> list[list[float]]:
    m = _margins(counts, max_m)
    rows = []
    for row, y in zip(LOGITS, LABELS, strict=True):
        shifted = [v - (m[y] if j == y else 0.0) for j, v in enumerate(row)]
        rows.append([s * v for v in shifted])
    return rows


def _shifted_rows(shift: list[float]) -> list[list[float]]:
    return [[v + c for v, c in zip(row, shift, strict=True)] for row in LOGITS]


def _expected(name: str) -> float:
    """Default hyperparameters: gamma 1, beta 0.9999, max_m 0.5, s 30, tau 1; epoch 0."""
    ce = [_ce(r, y) for r, y in zip(LOGITS, LABELS, strict=True)]
    fl = [_focal(r, y, 1.0) for r, y in zip(LOGITS, LABELS, strict=True)]
    cb = _cb(COUNTS, 0.9999)
    cb_y = [cb[y] for y in LABELS]
    total = sum(COUNTS)
    if name == "ce":
        return _mean(ce)
    if name == "focal":
        return _mean(fl)
    if name == "cb_ce":
        return _wmean(ce, cb_y)
    if name == "cb_focal":
        return _cui_cb_focal(LOGITS, LABELS, cb, 1.0)
    if name == "cb_focal_ldam":
        return _ldam_cb_focal(LOGITS, LABELS, cb, 1.0)
    if name in ("ldam", "ldam_drw"):  # ldam_drw is unweighted at epoch 0
        rows = _ldam_rows(COUNTS, 0.5, 30.0)
        return _mean([_ce(r, y) for r, y in zip(rows, LABELS, strict=True)])
    if name == "proportion":
        inv = [1.0 / n for n in COUNTS]
        w = [v * K / sum(inv) for v in inv]
        return _wmean(ce, [w[y] for y in LABELS])
    if name == "logit_adjustment":
        rows = _shifted_rows([math.log(n / total) for n in COUNTS])
        return _mean([_ce(r, y) for r, y in zip(rows, LABELS, strict=True)])
    if name == "balanced_softmax":
        rows = _shifted_rows([math.log(n) for n in COUNTS])
        return _mean([_ce(r, y) for r, y in zip(rows, LABELS, strict=True)])
    raise AssertionError(name)


def _inputs(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(LOGITS, dtype=dtype), torch.tensor(LABELS)


# Class-balanced weights come from trainables.reweight in float32, hence the looser rtol.
TOL = {"rtol": 1e-6, "atol": 1e-9}


# ---- every loss against its hand value ----------------------------------------------------


def test_names_are_the_table1_set():
    assert set(LOSSES) == {
        "ce",
        "focal",
        "cb_ce",
        "cb_focal",
        "cb_focal_ldam",
        "ldam",
        "ldam_drw",
        "proportion",
        "logit_adjustment",
        "balanced_softmax",
    }
    assert len(set(LOSSES)) == len(LOSSES)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_matches_hand_value(name):
    loss = make_loss(name, COUNTS)
    assert isinstance(loss, StageLoss)
    assert loss.name == name
    logits, y = _inputs()
    out = loss(logits, y)
    assert out.dim() == 0
    assert out.dtype == torch.float64
    assert_close(out, torch.tensor(_expected(name), dtype=torch.float64), **TOL)


def test_losses_differ_from_each_other():
    """Guards against two names silently building the same loss."""
    logits, y = _inputs()
    vals = {n: float(make_loss(n, COUNTS)(logits, y)) for n in LOSSES}
    # ldam_drw == ldam at epoch 0; balanced_softmax == logit_adjustment (tau 1) by design
    same = ("ldam_drw", "balanced_softmax")
    distinct = {n: v for n, v in vals.items() if n not in same}
    rounded = {round(v, 9) for v in distinct.values()}
    assert len(rounded) == len(distinct), vals


def test_float32_matches_too():
    logits, y = _inputs(torch.float32)
    for name in LOSSES:
        out = make_loss(name, COUNTS)(logits, y)
        assert out.dtype == torch.float32
        assert_close(out, torch.tensor(_expected(name), dtype=torch.float32))


# ---- hyperparameters ----------------------------------------------------------------------


def test_focal_gamma_two_and_cb_focal_beta():
    logits, y = _inputs()
    fl2 = [_focal(r, t, 2.0) for r, t in zip(LOGITS, LABELS, strict=True)]
    assert_close(
        make_loss("focal", COUNTS, focal_gamma=2.0)(logits, y),
        torch.tensor(_mean(fl2), dtype=torch.float64),
        **TOL,
    )
    cb = _cb(COUNTS, 0.99)
    assert_close(
        make_loss("cb_focal", COUNTS, focal_gamma=2.0, cb_beta=0.99)(logits, y),
        torch.tensor(_cui_cb_focal(LOGITS, LABELS, cb, 2.0), dtype=torch.float64),
        **TOL,
    )
    assert_close(
        make_loss("cb_focal_ldam", COUNTS, focal_gamma=2.0, cb_beta=0.99)(logits, y),
        torch.tensor(_ldam_cb_focal(LOGITS, LABELS, cb, 2.0), dtype=torch.float64),
        **TOL,
    )
    # the weighted softmax focal mean is neither of the published forms
    wmean = _wmean(fl2, [cb[t] for t in LABELS])
    for name in ("cb_focal", "cb_focal_ldam"):
        got = float(make_loss(name, COUNTS, focal_gamma=2.0, cb_beta=0.99)(logits, y))
        assert abs(got - wmean) > 1e-3


def test_focal_gamma_zero_is_ce():
    logits, y = _inputs()
    assert_close(
        make_loss("focal", COUNTS, focal_gamma=0.0)(logits, y), make_loss("ce", COUNTS)(logits, y)
    )
    # gamma 0: Cui's form is the class-weighted sigmoid BCE summed over classes / B, and
    # LDAM-DRW's is the plain mean of the weighted CE (not the weighted mean of cb_ce)
    cb = _cb(COUNTS, 0.9999)

    def bce(row: list[float], t: int) -> float:
        p_t = [_sigmoid(z) if j == t else 1.0 - _sigmoid(z) for j, z in enumerate(row)]
        return sum(-math.log(p) for p in p_t)

    cui0 = sum(cb[t] * bce(r, t) for r, t in zip(LOGITS, LABELS, strict=True)) / len(LABELS)
    assert_close(
        make_loss("cb_focal", COUNTS, focal_gamma=0.0)(logits, y),
        torch.tensor(cui0, dtype=torch.float64),
        **TOL,
    )
    plain = _mean([cb[t] * _ce(r, t) for r, t in zip(LOGITS, LABELS, strict=True)])
    assert_close(
        make_loss("cb_focal_ldam", COUNTS, focal_gamma=0.0)(logits, y),
        torch.tensor(plain, dtype=torch.float64),
        **TOL,
    )


def test_ldam_custom_margin_and_scale():
    logits, y = _inputs()
    rows = _ldam_rows(COUNTS, 0.3, 5.0)
    expected = _mean([_ce(r, t) for r, t in zip(rows, LABELS, strict=True)])
    out = make_loss("ldam", COUNTS, ldam_max_m=0.3, ldam_s=5.0)(logits, y)
    assert_close(out, torch.tensor(expected, dtype=torch.float64))
    # rarest class gets exactly the max margin
    assert_close(
        make_loss("ldam", COUNTS, ldam_max_m=0.3).margins,
        torch.tensor(_margins(COUNTS, 0.3), dtype=torch.float64),
    )


def test_ldam_drw_switches_on_weights_at_drw_epoch():
    logits, y = _inputs()
    drw = make_loss("ldam_drw", COUNTS, drw_epoch=5, cb_beta=0.999)
    ldam = make_loss("ldam", COUNTS)
    for epoch in (0, 4):
        assert_close(drw(logits, y, epoch=epoch), ldam(logits, y, epoch=epoch))
    rows = _ldam_rows(COUNTS, 0.5, 30.0)
    per = [_ce(r, t) for r, t in zip(rows, LABELS, strict=True)]
    cb = _cb(COUNTS, 0.999)
    expected = torch.tensor(_wmean(per, [cb[t] for t in LABELS]), dtype=torch.float64)
    for epoch in (5, 6, 199):
        assert_close(drw(logits, y, epoch=epoch), expected, **TOL)
    assert not torch.isclose(drw(logits, y, epoch=5), ldam(logits, y, epoch=5))
    # plain ldam never turns weights on
    assert_close(ldam(logits, y, epoch=500), ldam(logits, y, epoch=0))


def test_logit_adjustment_tau_and_uniform_counts():
    logits, y = _inputs()
    total = sum(COUNTS)
    rows = _shifted_rows([0.5 * math.log(n / total) for n in COUNTS])
    expected = _mean([_ce(r, t) for r, t in zip(rows, LABELS, strict=True)])
    out = make_loss("logit_adjustment", COUNTS, la_tau=0.5)(logits, y)
    assert_close(out, torch.tensor(expected, dtype=torch.float64))
    uniform = [7, 7, 7]
    assert_close(
        make_loss("logit_adjustment", uniform)(logits, y), make_loss("ce", uniform)(logits, y)
    )
    assert_close(
        make_loss("balanced_softmax", uniform)(logits, y), make_loss("ce", uniform)(logits, y)
    )
    assert_close(make_loss("proportion", uniform)(logits, y), make_loss("ce", uniform)(logits, y))


def test_balanced_softmax_equals_logit_adjustment_tau_one():
    logits, y = _inputs()
    assert_close(
        make_loss("balanced_softmax", COUNTS)(logits, y),
        make_loss("logit_adjustment", COUNTS, la_tau=1.0)(logits, y),
    )


def test_cb_beta_zero_is_ce():
    """beta = 0 makes every effective-number weight 1: the weighted mean is the plain mean."""
    logits, y = _inputs()
    assert_close(
        make_loss("cb_ce", COUNTS, cb_beta=0.0)(logits, y), make_loss("ce", COUNTS)(logits, y)
    )


def test_weighted_mean_not_sum():
    """Duplicating the batch must not change a weighted-mean loss."""
    logits, y = _inputs()
    for name in LOSSES:
        loss = make_loss(name, COUNTS)
        assert_close(
            loss(torch.cat([logits, logits]), torch.cat([y, y]), epoch=200),
            loss(logits, y, epoch=200),
        )


# ---- post-hoc adjustment ------------------------------------------------------------------


def test_posthoc_logit_adjustment_hand_value():
    logits, _ = _inputs()
    total = sum(COUNTS)
    for tau in (1.0, 0.7):
        expected = [
            [v - tau * math.log(n / total) for v, n in zip(r, COUNTS, strict=True)] for r in LOGITS
        ]
        out = posthoc_logit_adjustment(logits, COUNTS, tau=tau)
        assert_close(out, torch.tensor(expected, dtype=torch.float64))
    # Sample 0 is predicted class 1 (z=2.0); after adjustment the rare class 2 wins:
    # 0.5 + log(111) = 5.21 > 2.0 + log(11.1) = 4.41 > 1.0 + log(1.11) = 1.10.
    assert int(logits[0].argmax()) == 1
    assert int(posthoc_logit_adjustment(logits, COUNTS)[0].argmax()) == 2
    # float32 and batched leading dims keep their dtype/shape
    out32 = posthoc_logit_adjustment(logits.float().unsqueeze(0), COUNTS)
    assert out32.dtype == torch.float32
    assert out32.shape == (1, 3, 3)


# ---- errors -------------------------------------------------------------------------------


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown loss") as err:
        make_loss("dice", COUNTS)
    for name in LOSSES:
        assert name in str(err.value)


@pytest.mark.parametrize("counts", [[10, 0, 3], [10, -1, 3], [], [[1, 2], [3, 4]]])
def test_bad_counts_raise(counts):
    with pytest.raises(ValueError):
        make_loss("ce", counts)
    with pytest.raises(ValueError):
        posthoc_logit_adjustment(torch.zeros(2, 3), counts)


def test_bad_shapes_raise():
    loss = make_loss("ce", COUNTS)
    with pytest.raises(ValueError):
        loss(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        posthoc_logit_adjustment(torch.zeros(2, 4), COUNTS)


def test_counts_may_be_a_tensor():
    logits, y = _inputs()
    assert_close(
        make_loss("ldam_drw", torch.tensor(COUNTS))(logits, y, epoch=200),
        make_loss("ldam_drw", COUNTS)(logits, y, epoch=200),
    )


# ---- gradients, dtype, device -------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_finite_float64(name):
    loss = make_loss(name, COUNTS, drw_epoch=1)
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(LABELS)
    for epoch in (0, 1):
        (grad,) = torch.autograd.grad(loss(logits, y, epoch=epoch), logits)
        assert grad.dtype == torch.float64
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda z: loss(z, y, epoch=1), (logits,))


def test_focal_gradient_finite_at_confident_prediction():
    """p_y -> 1 underflows 1 - p_y; the loss and its gradient must stay finite."""
    loss = make_loss("focal", COUNTS, focal_gamma=0.5)
    logits = torch.tensor([[60.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = loss(logits, torch.tensor([0]))
    out.backward()
    assert torch.isfinite(out)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_buffers_follow_logits_device(name):
    """On the meta device any buffer left on the CPU would raise a device-mismatch error."""
    loss = make_loss(name, COUNTS)
    logits = torch.empty(3, 3, dtype=torch.float64, device="meta")
    y = torch.empty(3, dtype=torch.long, device="meta")
    out = loss(logits, y, epoch=500)
    assert out.device.type == "meta"
    assert out.dtype == torch.float64
