"""A population of stage-2 settings against an independent implementation of the same steps:
the stage 2 that runs f1 at every step (torch.optim, ``WeightVector`` / ``WeightNet``,
``reweight_step``) on a model whose f1 has no parameters. In float64 member m gives that run's
per-epoch metrics, weights and selected model (same seed); in float32 the difference is bounded;
a single cached-feature trial is a population of one; a diverging member leaves the others
untouched; successive halving culls the worst members at a rung; settings a population cannot
mix are refused."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from trainables.config import Stage2Config
from trainables.data.arrays import StageData, TensorSplit
from trainables.models import SplitNet
from trainables.models.common import NormedLinear
from trainables.population import check_population, halving_rungs, train_population
from trainables.reweight import WeightNet
from trainables.stage2 import train_stage2

from ._synthetic import three_class_features

BASE = Stage2Config(train="classifier", epochs=4, batch_size=5, lr=0.1, weight_lr=2.0, max_iter=30)
VECTOR_SETTINGS = [
    {},
    {"lr": 0.3, "eps": 0.05, "max_iter": 12, "tol": 1e-3},
    {"weight_param": "class", "weight_optimizer": "adam", "weight_lr": 0.1},
    {
        "weight_param": "class_residual",
        "weight_normalize": True,
        "feature_weight": 3.0,
        "weight_momentum": 0.5,
    },
    {"learn_weights": False},
    {"eps": 0.004, "weight_decay_w": 0.01, "meta_ce_coef": 2.0},  # the log-domain path
    {"cost": "combined", "label_weight": 0.3, "momentum": 0.0, "weight_decay": 0.0},
]


def _data(dtype: torch.dtype) -> StageData:
    d = three_class_features()
    cast = {s: TensorSplit(getattr(d, s).x.to(dtype), getattr(d, s).y) for s in _SPLITS}
    return dataclasses.replace(d, **cast)


_SPLITS = ("train", "meta", "val", "test")


def _model() -> SplitNet:
    torch.manual_seed(1)
    head = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    return SplitNet(nn.Identity(), head, 8)


def _single(cfg: Stage2Config, data: StageData):
    """``cfg`` through the path that trains f1 (``stage2.train=all``): with f1 an identity it
    computes what the cached-feature stage 2 computes, by other code."""
    log = []
    torch.manual_seed(3)  # the weight net's initialisation draws from the global generator
    res = train_stage2(
        _model(), data, dataclasses.replace(cfg, train="all"),
        generator=torch.Generator().manual_seed(5),
        callback=lambda stage, epoch, m: log.append(m),
    )  # fmt: skip
    return res, log


def _population(cfgs, data: StageData, **kw):
    logs = {i: [] for i in range(len(cfgs))}
    torch.manual_seed(3)
    outs = train_population(
        _model(), data, cfgs, generator=torch.Generator().manual_seed(5), features=data,
        callback=lambda i, stage, epoch, m: logs[i].append(m), **kw,
    )  # fmt: skip
    return outs, logs


def _largest_difference(single, log, outcome, member_log) -> float:
    assert len(log) == len(member_log)
    worst = max(abs(a[k] - b[k]) for a, b in zip(log, member_log, strict=True) for k in a)
    assert len(outcome.result.weight_mass) == len(member_log)
    if not single.weight_mass:  # a weight net through f1 records no masses (they need f1)
        return worst
    for x, y in zip(single.sample_weights, outcome.result.sample_weights, strict=True):
        worst = max(worst, abs(x - y))
    for mass_s, mass_p in zip(single.weight_mass, outcome.result.weight_mass, strict=True):
        worst = max(worst, *(abs(x - y) for x, y in zip(mass_s, mass_p, strict=True)))
    return worst


def _settings(weights: str) -> list[Stage2Config]:
    base = dataclasses.replace(BASE, weights=weights)
    rows = [s for s in VECTOR_SETTINGS if weights == "vector" or "weight_param" not in s]
    return [dataclasses.replace(base, **s) for s in rows]


@pytest.mark.parametrize("weights", ["vector", "net"])
def test_float64_members_equal_their_single_trials(weights):
    torch.set_default_dtype(torch.float64)
    try:
        data = _data(torch.float64)
        cfgs = _settings(weights)
        outs, logs = _population(cfgs, data)
        for i, cfg in enumerate(cfgs):
            single, log = _single(cfg, data)
            assert _largest_difference(single, log, outs[i], logs[i]) < 1e-9, cfg
            assert outs[i].result.selected["epoch"] == single.selected["epoch"]
            state = outs[i].result.state
            for k, v in single.state.items():
                if k.startswith("classifier."):
                    torch.testing.assert_close(state[k], v, rtol=1e-9, atol=1e-11)
            assert outs[i].error is None and outs[i].stopped_epoch is None
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize(
    "shared",
    [
        {"weight_param": "sample"},
        {"weight_param": "sample", "weight_mode": "scratch"},
        {"weight_param": "class", "weight_optimizer": "adam", "weight_lr": 0.1},
        {"weight_param": "class_residual", "weight_momentum": 0.5},
        {"learn_weights": False},
    ],
)
def test_uniform_populations_skip_unused_work_and_still_equal_their_single_trials(shared):
    """A population whose members share a parametrisation (or none learns weights) carries
    only the weight tensors some member uses and skips the steps nobody needs (no decay, no
    meta term, no normalisation, no mask): each member still gives its single trial's run."""
    torch.set_default_dtype(torch.float64)
    try:
        data = _data(torch.float64)
        base = dataclasses.replace(BASE, **shared)
        cfgs = [
            base,
            dataclasses.replace(base, lr=0.3, eps=0.05, max_iter=12, tol=1e-3, weight_lr=0.5),
        ]
        outs, logs = _population(cfgs, data)
        for i, cfg in enumerate(cfgs):
            single, log = _single(cfg, data)
            assert _largest_difference(single, log, outs[i], logs[i]) < 1e-9, cfg
            assert outs[i].result.selected["epoch"] == single.selected["epoch"]
    finally:
        torch.set_default_dtype(torch.float32)


def test_float32_members_stay_within_a_stated_bound_of_their_single_trials():
    """Largest difference seen on these settings: 1.7e-5 on the weights and 1e-5 on a loss of
    the class + residual member with normalised steps (the stacked heads' products round
    differently), 4e-7 elsewhere (the log-domain member runs the same compiled loop as its
    single trial); accuracies equal. The bound tested is 1e-4."""
    data = _data(torch.float32)
    cfgs = _settings("vector")
    outs, logs = _population(cfgs, data)
    for i, cfg in enumerate(cfgs):
        single, log = _single(cfg, data)
        assert _largest_difference(single, log, outs[i], logs[i]) < 1e-4, cfg


@pytest.mark.parametrize("grad", ["implicit", "envelope"])
def test_populations_take_every_gradient_mode(grad):
    """The implicit and envelope gradients (the reference solver, stacked) give each member
    what its run through f1 gives."""
    torch.set_default_dtype(torch.float64)
    try:
        data = _data(torch.float64)
        base = dataclasses.replace(BASE, grad=grad, tol=1e-9, max_iter=300)
        cfgs = [base, dataclasses.replace(base, eps=0.05, weight_lr=0.5, lr=0.3)]
        outs, logs = _population(cfgs, data)
        for i, cfg in enumerate(cfgs):
            single, log = _single(cfg, data)
            assert _largest_difference(single, log, outs[i], logs[i]) < 1e-9, cfg
        w0, w1 = (torch.tensor(o.result.sample_weights) for o in outs)
        assert (w0 - w1).abs().max() > 1e-4  # the members really differ
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_cached_feature_trial_is_a_population_of_one():
    """``train_stage2`` on cached features runs ``train_population`` with one member: the same
    epochs, weights and selected model bit for bit, the last epoch's classifier left in the
    model, and a divergence raised as FloatingPointError."""
    data = _data(torch.float32)
    cfg = dataclasses.replace(BASE, weight_param="class_residual", meta_ce_coef=1.0)
    log, improved = [], []
    model = _model()
    torch.manual_seed(3)
    single = train_stage2(
        model, data, cfg, generator=torch.Generator().manual_seed(5), features=data,
        callback=lambda stage, epoch, m: log.append((stage, epoch, m)),
        on_improve=lambda r: improved.append(r.selected["epoch"]),
    )  # fmt: skip
    (member,), logs = _population([cfg], data)
    assert [m for _, _, m in log] == logs[0] and len(log) == cfg.epochs
    assert [(s, e) for s, e, _ in log] == [("stage2", e) for e in range(cfg.epochs)]
    assert single.sample_weights == member.result.sample_weights
    assert single.selected == member.result.selected and improved[-1] == single.selected["epoch"]
    for k, v in member.result.state.items():
        assert torch.equal(single.state[k], v)
    for k, v in member.last_state.items():
        assert torch.equal(model.classifier.state_dict()[k], v)
    assert not torch.equal(model.classifier.state_dict()["0.weight"], _model().classifier[0].weight)
    with pytest.raises(FloatingPointError, match="stage 2"):
        train_stage2(_model(), data, dataclasses.replace(cfg, lr=1e30),
                     generator=torch.Generator().manual_seed(5), features=data)  # fmt: skip


def test_a_diverging_member_leaves_the_population_and_the_others_go_on():
    data = _data(torch.float32)
    good = dataclasses.replace(BASE, lr=0.1)
    bad = dataclasses.replace(BASE, lr=1e30)  # the head's step overflows in the first epoch
    ended = []
    outs, logs = _population([good, bad], data, on_member_end=lambda i, o: ended.append(i))
    assert outs[1].error is not None and "stage 2" in str(outs[1].error)
    assert logs[1] == [] and ended[0] == 1  # ended at the first epoch's check, nothing logged
    single, log = _single(good, data)
    assert _largest_difference(single, log, outs[0], logs[0]) < 1e-4
    with pytest.raises(FloatingPointError):
        _single(bad, data)  # the single trial of the bad setting fails the same way


def test_successive_halving_culls_the_worst_at_each_rung():
    data = _data(torch.float32)
    cfgs = [dataclasses.replace(BASE, lr=lr, epochs=6) for lr in (1e-4, 0.1, 0.3, 3e-4, 0.05)]
    outs, logs = _population(cfgs, data, rungs=[2, 4], reduction=2)
    stopped = {i: o.stopped_epoch for i, o in enumerate(outs)}
    # after epoch 2: 3 of 5 kept; after epoch 4: 2 of 3 kept (ties: the lower index stays)
    assert sorted(stopped.values(), key=lambda v: -1 if v is None else v) == [None, None, 1, 1, 3]
    for i, o in enumerate(outs):
        assert len(logs[i]) == (6 if o.stopped_epoch is None else o.stopped_epoch + 1)
    # every culled member had a best validation score no better than each one kept then
    for i, o in enumerate(outs):
        if o.stopped_epoch is not None:
            best = max(m["val_balanced_acc"] for m in logs[i])
            for j in range(len(outs)):
                if len(logs[j]) > o.stopped_epoch + 1:
                    kept = max(m["val_balanced_acc"] for m in logs[j][: o.stopped_epoch + 1])
                    assert kept >= best
    assert halving_rungs(40, 10, 3) == [10, 30] and halving_rungs(2, 1, 3) == [1]


def test_what_members_cannot_mix_is_refused():
    a = BASE
    with pytest.raises(ValueError, match=r"stage2\.batch_size differs between members"):
        check_population([a, dataclasses.replace(a, batch_size=8)], 3)
    with pytest.raises(ValueError, match="f1 trains in stage 2"):
        check_population([dataclasses.replace(a, train="all")], 3)
    with pytest.raises(ValueError, match="no stage 2 to batch"):
        check_population([dataclasses.replace(a, method="none")], 3)
    with pytest.raises(ValueError, match="augmented"):
        check_population([dataclasses.replace(a, features="augmented")], 3)


@pytest.mark.parametrize(
    "members, nesterov",
    [
        # (lr, momentum, weight decay, adam) per member
        ([(0.1, 0.9, 1e-3, False), (0.5, 0.0, 0.0, False), (0.01, 0.0, 0.0, True)], False),
        ([(0.1, 0.9, 0.0, False), (0.2, 0.5, 0.0, False)], True),
        ([(0.1, 0.0, 0.0, False), (0.3, 0.0, 0.0, False)], False),  # no momentum buffer
        ([(0.01, 0.0, 0.0, True), (0.2, 0.0, 0.0, True)], False),  # Adam only
    ],
)
@pytest.mark.parametrize("compiled", [True, False])
def test_the_stacked_optimiser_steps_each_member_as_torch_optim_does(members, nesterov, compiled):
    """Each member's rows of the stacked tensor follow torch.optim.SGD / Adam on that row alone,
    in one compiled pass and as tensor operations; a masked member's rows stay bit-equal."""
    from trainables.population import _Optim

    gen = torch.Generator().manual_seed(0)
    start = torch.randn(len(members), 4, 3, generator=gen, dtype=torch.float64)
    grads = [torch.randn(len(members), 4, 3, generator=gen, dtype=torch.float64) for _ in range(5)]
    grads[1] = grads[1].transpose(1, 2).contiguous().transpose(1, 2)  # a strided gradient
    stacked = {"w": start.clone()}
    lr, mom, wd, adam = zip(*members, strict=True)
    opt = _Optim(lr, mom, wd, nesterov, adam, start)
    opt.compiled_min = 0 if compiled else None
    for g in grads:
        opt.step(stacked, {"w": g}, {"w": torch.ones(len(members), dtype=torch.bool)})
    for m, (lr_m, mom_m, wd_m, adam_m) in enumerate(members):
        w = start[m].clone().requires_grad_(True)
        ref = (
            torch.optim.Adam([w], lr=lr_m)
            if adam_m
            else torch.optim.SGD([w], lr=lr_m, momentum=mom_m, weight_decay=wd_m,
                                 nesterov=nesterov and mom_m > 0)
        )  # fmt: skip
        for g in grads:
            w.grad = g[m].clone()
            ref.step()
        torch.testing.assert_close(stacked["w"][m], w.detach(), rtol=1e-12, atol=1e-14)
    before = stacked["w"].clone()
    keep = torch.zeros(len(members), dtype=torch.bool)
    keep[0] = True
    opt.step(stacked, {"w": grads[0]}, {"w": keep})
    assert torch.equal(stacked["w"][1:], before[1:]) and not torch.equal(stacked["w"][0], before[0])


@pytest.mark.parametrize(
    "make, direct",
    [
        (lambda: nn.Linear(8, 3), True),
        (lambda: nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)), True),
        (lambda: nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3, bias=False)), True),
        (lambda: WeightNet(8, 5), True),
        (lambda: NormedLinear(8, 3), False),
    ],
)
def test_stacked_members_compute_what_each_module_computes(make, direct):
    """Linear classifiers, FCNs and weight nets run as batched matrix products, anything else
    through vmap; either way member m's output is its own module's on the shared input."""
    from trainables.population import _Stacked

    torch.manual_seed(0)
    module = make().double()
    stacked = _Stacked(module, 3)
    assert (stacked.layers is not None) == direct
    with torch.no_grad():  # members differ
        for t in stacked.params.values():
            t.add_(0.1 * torch.randn_like(t))
    x = torch.randn(5, 8, dtype=torch.float64)
    out = stacked(x)
    for m in range(3):
        one = copy.deepcopy(module)
        one.load_state_dict(stacked.member_state(m, ""))
        torch.testing.assert_close(out[m], one(x), rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(out.square().sum(), list(stacked.params.values()))
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in g)


def test_large_stacked_tensors_take_the_compiled_pass_and_small_ones_tensor_operations(
    monkeypatch,
):
    """Which path a stacked tensor takes goes by its size; both follow torch.optim.SGD."""
    import trainables.compiled_optim as co
    from trainables.population import COMPILED_MIN_ELEMENTS, _Optim

    seen = []
    real = co.stacked_step
    monkeypatch.setattr(
        co, "stacked_step", lambda p, *a, **k: seen.append(p.numel()) or real(p, *a, **k)
    )
    gen = torch.Generator().manual_seed(0)
    params = {"big": torch.randn(2, COMPILED_MIN_ELEMENTS // 2, generator=gen),
              "small": torch.randn(2, 3, generator=gen)}  # fmt: skip
    start = {n: t.clone() for n, t in params.items()}
    grads = {n: torch.randn(t.shape, generator=gen) for n, t in params.items()}
    opt = _Optim([0.1, 0.2], [0.9, 0.0], [1e-3, 0.0], False, [False, False], params["big"])
    masks = {n: torch.ones(2, dtype=torch.bool) for n in params}
    opt.step(params, grads, masks)
    opt.step(params, grads, masks)
    assert seen == [COMPILED_MIN_ELEMENTS] * 2  # the big one, at each step; never the small one
    for n in params:
        for m, (lr, mom, wd) in enumerate([(0.1, 0.9, 1e-3), (0.2, 0.0, 0.0)]):
            w = start[n][m].clone().requires_grad_(True)
            ref = torch.optim.SGD([w], lr=lr, momentum=mom, weight_decay=wd)
            for _ in range(2):
                w.grad = grads[n][m].clone()
                ref.step()
            torch.testing.assert_close(params[n][m], w.detach(), rtol=1e-5, atol=1e-6)


def test_a_strided_buffer_from_a_tensor_step_is_taken_by_the_compiled_pass():
    """A tensor-operation step clones a strided gradient into the momentum buffer; a compiled
    step after it writes through the buffer's memory, so it must get a contiguous one."""
    from trainables.population import _Optim

    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(2, 4, 3, generator=gen)
    grads = [torch.randn(2, 3, 4, generator=gen).transpose(1, 2) for _ in range(3)]  # strided
    stacked = {"w": p0.clone()}
    opt = _Optim([0.1, 0.3], [0.9, 0.5], [0.0, 0.0], False, [False, False], p0)
    masks = {"w": torch.ones(2, dtype=torch.bool)}
    for i, g in enumerate(grads):
        opt.compiled_min = None if i == 0 else 0  # tensor operations first, then compiled
        opt.step(stacked, {"w": g}, masks)
    for m, (lr, mom) in enumerate([(0.1, 0.9), (0.3, 0.5)]):
        w = p0[m].clone().requires_grad_(True)
        ref = torch.optim.SGD([w], lr=lr, momentum=mom)
        for g in grads:
            w.grad = g[m].clone()
            ref.step()
        torch.testing.assert_close(stacked["w"][m], w.detach(), rtol=1e-5, atol=1e-6)
