"""The dry-run's device-time estimate (orchestrator/costs.py) against hand arithmetic, and
stage 2 on cached features kept apart from stage 2 that trains f1 (their costs differ by
orders of magnitude, so one may not stand in for the other)."""

from __future__ import annotations

import pytest

from orchestrator.costs import COSTS, estimate_seconds
from search_spaces.tables import TABLES, cell_config
from trainables.data.longtail import longtail_counts


def _cell(method: str):
    cells = TABLES["table1"].cells(None, fidelity=True, columns=["cifar10_if100"])
    return next(c for c in cells if c.method.name == method)


def test_the_cifar_estimate_by_hand():
    cfg = cell_config(_cell("ot_weight_vector"), seed=0)
    assert cfg.stage2.train == "all" and cfg.data.imbalance_factor == 100
    n = sum(longtail_counts(5000 - 10 - 20, 10, 100.0))  # 10 meta + 20 validation per class
    stage1 = 200 * (5.7 * 60 / 200)
    stage2 = 40 * (n / 16 * 0.0673)
    sec, device = estimate_seconds(cfg, stage1=True, stage2=True)
    assert device == "H100"
    assert sec == pytest.approx(stage1 + stage2)
    assert estimate_seconds(cfg, stage1=False, stage2=True)[0] == pytest.approx(stage2)
    # a baseline row is stage 1 alone
    ce = cell_config(_cell("ce"), seed=0)
    assert estimate_seconds(ce, stage1=True, stage2=True)[0] == pytest.approx(stage1)


def test_stage2_on_cached_features_is_not_priced_as_training_f1():
    cfg = cell_config(_cell("ot@released_code"), seed=0)
    assert cfg.stage2.train == "classifier"
    assert COSTS["image_cifar10_lt"].stage2_cached_epoch_s is None  # not measured on a GPU
    with pytest.raises(KeyError, match="on cached features"):
        estimate_seconds(cfg, stage1=False, stage2=True)
    # the offline MNIST analogue was measured on cached features
    mnist = cell_config(
        next(c for c in TABLES["offline_image"].cells(None) if c.method.name == "ot_weight_vector"),
        seed=0,
    )
    assert mnist.stage2.train == "classifier"
    sec, device = estimate_seconds(mnist, stage1=False, stage2=True)
    assert device == "2-core CPU" and sec == pytest.approx(mnist.stage2.epochs * 0.22)


def test_the_wall_clock_plan_of_the_smoke_offline_table_by_hand():
    from orchestrator.costs import FIXED, META_STAGE1, estimate_plan
    from orchestrator.stage_cache import stage1_hash

    # the +la cells are read from their rows' runs: never run, never estimated
    cells = [c for c in TABLES["offline_image"].cells(None) if not c.method.la_of]
    cfgs = [cell_config(c, seed=0, smoke=True) for c in cells]
    runs = [(cfg, stage1_hash(cfg)) for cfg in cfgs]
    # 8 baselines, posthoc_la, the OT row and its +no_ot control, OT on the CB-CE and LDAM-DRW
    # stage 1 with their controls: the CE stage 1 is shared by ce, the OT row and its control,
    # cb_ce's and ldam_drw's by their OT rows and controls; posthoc_la reads the CE build
    # (its adjusted selection is recorded there)
    assert len(runs) == 15 and len({k for _, k in runs}) == 8
    epoch1 = COSTS["image_mnist_lt"].stage1_epoch_s
    builds = 0.0
    for cfg in {k: cfg for cfg, k in reversed(runs)}.values():  # one build per key
        factor = META_STAGE1.get(cfg.stage1.reweight, 1.0)
        s1 = cfg.stage1
        meta = s1.epochs - min(s1.meta_start, s1.epochs) if s1.reweight != "none" else 0
        builds += FIXED.build_s + ((s1.epochs - meta) + meta * factor) * epoch1
    stage2 = sum(cfg.stage2.epochs * 0.22 for cfg in cfgs if cfg.stage2.method != "none")
    assert stage2 > 0  # the OT rows and their controls
    slots = 15 * FIXED.run_s + stage2
    plan = estimate_plan(runs, concurrency=2)
    assert plan.wall_s == pytest.approx(FIXED.invocation_s + builds + slots / 2)
    assert plan.device_s == {"2-core CPU": pytest.approx(builds - 8 * FIXED.build_s + stage2)}
    assert not plan.unmeasured
    # a cached stage 1 is not built again; more runs at a time shorten only the runs' part
    cached = {runs[0][1]}
    fewer = estimate_plan(runs, concurrency=2, cached=cached)
    plain = FIXED.build_s + cfgs[0].stage1.epochs * epoch1
    assert plan.wall_s - fewer.wall_s == pytest.approx(plain)
    wide = estimate_plan(runs, concurrency=8)
    assert plan.wall_s - wide.wall_s == pytest.approx(slots / 2 - slots / 8)
    assert estimate_plan([], concurrency=2).wall_s == 0.0
    # an OT row and its control as one population: one trial slot, one fixed cost, the same
    # stage-2 epochs
    ot = [i for i, cfg in enumerate(cfgs) if cfg.stage2.method == "ot"]
    assert len(ot) >= 2
    pair = [ot[0], ot[1]]
    grouped = estimate_plan(runs, concurrency=2, groups=[pair])
    assert grouped.device_s == plan.device_s
    assert plan.wall_s - grouped.wall_s == pytest.approx(FIXED.run_s / 2)


def test_a_meta_baseline_pays_its_multiple_only_after_meta_start():
    from orchestrator.costs import META_STAGE1

    cfg = cell_config(
        next(c for c in TABLES["offline_image"].cells(None) if c.method.name == "metasaug_ce"),
        seed=0,
    )
    s1 = cfg.stage1
    assert 0 < s1.meta_start < s1.epochs  # plain CE first, MetaSAug from the first milestone
    epoch1 = COSTS["image_mnist_lt"].stage1_epoch_s
    want = (s1.meta_start + (s1.epochs - s1.meta_start) * META_STAGE1["metasaug"]) * epoch1
    assert estimate_seconds(cfg, stage1=True, stage2=False)[0] == pytest.approx(want)
