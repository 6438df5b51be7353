"""The paper tables as grids: every cell builds, methods set what they claim, stage 1 is shared
where it should be, and every cell is joined to the right published number."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from orchestrator.stage_cache import stage1_hash
from search_spaces.tables import TABLES, cell_config, paper_value, parse_paper_cell, published_only
from trainables.data.longtail import longtail_counts, make_longtail_split
from trainables.trial import check_config


@pytest.mark.parametrize("name", list(TABLES))
@pytest.mark.parametrize("smoke", [False, True])
def test_every_cell_of_every_table_builds(name, smoke):
    """Every cell builds and passes the pre-flight check; where a cell caps the images per
    class (the smoke variants), the long tail drawn from that many labels keeps a training
    image in every class at the column's imbalance factor."""
    for cell in TABLES[name].cells(fidelity=True, every_column=True):
        cfg = cell_config(cell, seed=3, smoke=smoke)
        assert cfg.seed == 3
        check_config(cfg)
        d = cfg.data
        if d.limit_per_class:
            labels = np.repeat(np.arange(d.num_classes), d.limit_per_class)
            split = make_longtail_split(
                labels, d.num_classes, d.imbalance_factor, meta_per_class=d.meta_per_class,
                val_per_class=d.val_per_class, protocol=d.protocol,
            )  # fmt: skip
            assert min(split.counts) >= 1, cell.key


def test_the_preflight_refuses_a_long_tail_with_an_empty_class():
    """``data.limit_per_class`` too small for the imbalance factor: one line, before any data
    loads, naming the smallest limit that works (the smallest that keeps the last class)."""
    cfg = cell_config(_cell("table1", "cifar10_if100|ce"), seed=0, smoke=True)
    held = cfg.data.meta_per_class + cfg.data.val_per_class
    short = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, limit_per_class=60))
    with pytest.raises(ValueError, match=r"limit_per_class=60 .* at least (\d+)") as err:
        check_config(short)
    need = int(str(err.value).rsplit(" ", 1)[1])
    assert "\n" not in str(err.value)
    counts = longtail_counts(need - held, 10, 100.0)
    assert counts[-1] == 1 and longtail_counts(need - held - 1, 10, 100.0)[-1] == 0
    ok = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, limit_per_class=need))
    check_config(ok)


def _cell(table, key, fidelity=False):
    return next(c for c in TABLES[table].cells(fidelity=fidelity) if c.key == key)


def test_table1_grid():
    t = TABLES["table1"]
    # 10 baselines + posthoc_la + the OT row and its +no_ot control, both read adjusted (+la)
    assert len(t.columns) == 8 and len(t.cells()) == 8 * 15
    # fidelity rows (3, each with its control; no +la) in the first column only
    assert len(t.cells(fidelity=True)) == 8 * 15 + 6
    # the control and the +la readings follow their row
    assert len(t.cells(["ce", "ot_weight_vector"])) == 8 * 5
    assert len(t.cells(["metasaug_ldam"])) == 8  # the released MetaSAug recipe, run
    with pytest.raises(ValueError, match="no method metasaug_focal"):
        t.cells(["metasaug_focal"])
    assert len(t.cells(["ce"], columns=["cifar10_if100"], fidelity=True)) == 1 + 6


def test_methods_set_what_they_claim():
    ce = cell_config(_cell("table1", "cifar10_if100|ce"), seed=0)
    ot = cell_config(_cell("table1", "cifar10_if100|ot_weight_vector"), seed=0)
    focal = cell_config(_cell("table1", "cifar10_if100|focal"), seed=0)
    assert ce.data.imbalance_factor == 100.0 and ce.stage2.method == "none"
    assert ot.stage2.method == "ot" and ot.stage1.loss == "ce"
    # the CE row and the OT row of a column share stage 1; another loss does not
    assert stage1_hash(ce) == stage1_hash(ot) != stage1_hash(focal)
    drw = cell_config(_cell("table1", "cifar100_if20|ldam_drw"), seed=0)
    assert drw.stage1.drw_epoch == 160 and drw.model.normed_classifier
    mnist = cell_config(_cell("offline_image", "mnist_if100|ldam_drw"), seed=0)
    assert mnist.stage1.drw_epoch == 20  # its first lr milestone, not CIFAR's 160
    sst = cell_config(_cell("table5", "sst2_1000_20|ot_weight_net"), seed=0)
    assert sst.data.minority == 20 and sst.data.imbalance_factor == 50.0
    ablation = cell_config(_cell("table2", "cifar100_if200|combined|whole|maintained"), seed=0)
    assert ablation.stage2.meta_distribution == "whole" and ablation.data.num_classes == 100
    msa = cell_config(_cell("table1", "cifar10_if100|metasaug_ldam"), seed=0)
    assert (msa.stage1.reweight, msa.stage1.metasaug_loss) == ("metasaug", "ldam")
    assert (msa.stage1.loss, msa.stage1.meta_start, msa.stage1.meta_lr) == ("ce", 160, 0.1)
    assert not msa.model.normed_classifier  # MetaSAug's ResNet-32 has a plain linear layer
    assert paper_value(TABLES["table1"], _cell("table1", "cifar10_if100|metasaug_ldam"))[0] == 19.34
    mwn = cell_config(_cell("table1", "cifar10_if200|meta_weight_net"), seed=0)
    assert mwn.stage1.reweight == "mwn" and mwn.stage2.method == "none"
    s1 = mwn.stage1  # MWN's published CIFAR-LT schedule
    assert (s1.epochs, s1.batch_size, s1.lr, s1.milestones, s1.gamma) == (
        100,
        100,
        0.1,
        (80, 90),
        0.1,
    )
    mnist_mwn = cell_config(_cell("offline_image", "mnist_if100|meta_weight_net"), seed=0)
    assert mnist_mwn.stage1.epochs == 30  # the offline column keeps its own schedule
    assert stage1_hash(mwn) != stage1_hash(ce)
    assert paper_value(TABLES["table1"], _cell("table1", "cifar10_if100|l2rw")) == (25.84, None)
    msa = cell_config(_cell("table1", "cifar100_if50|metasaug_ce"), seed=0)
    assert (msa.stage1.reweight, msa.stage1.meta_lr, msa.stage1.meta_start) == (
        "metasaug",
        0.1,
        160,
    )
    reduced = _cell("table4", "imagenet_lt|ot_weight_vector_reduced_prototype")
    assert cell_config(reduced, seed=0).stage2.prototype_batch == 100


def test_fidelity_rows_switch_one_extra_off_each():
    key = "mnist_if100|ot@released_code"
    full = cell_config(_cell("offline_image", key, True), seed=0)
    no_cb = cell_config(_cell("offline_image", key + "-cb_init", True), seed=0)
    no_meta = cell_config(_cell("offline_image", key + "-meta_ce", True), seed=0)
    assert full.preset == no_cb.preset == no_meta.preset == "released_code"
    assert (full.stage2.weight_init, full.stage2.loss_weights) == ("class_balanced", "raw")
    assert full.stage2.meta_ce_coef == 10.0
    assert (no_cb.stage2.weight_init, no_cb.stage2.loss_weights) == ("uniform", "simplex")
    assert no_cb.stage2.meta_ce_coef == 10.0
    assert no_meta.stage2.meta_ce_coef == 0.0 and no_meta.stage2.weight_init == "class_balanced"


def test_paper_numbers_join():
    t1 = TABLES["table1"]
    assert paper_value(t1, _cell("table1", "cifar10_if100|ot_weight_vector")) == (18.13, None)
    assert paper_value(t1, _cell("table1", "cifar100_if20|ce")) == (48.94, None)
    assert paper_value(
        TABLES["table2"], _cell("table2", "cifar100_if200|combined|whole|maintained")
    ) == (54.98, None)
    t4 = TABLES["table4"]
    assert paper_value(t4, _cell("table4", "imagenet_lt|ot_weight_vector_reduced_prototype")) == (
        52.41,
        None,
    )
    t5 = TABLES["table5"]
    assert paper_value(t5, _cell("table5", "sst5_500_60|ot_weight_net")) == (44.79, 0.82)
    assert paper_value(t5, _cell("table5", "sst5_500_75|ot_weight_net")) == (44.95, 0.56)
    # hu_et_al has no SST-5 500:75 number: an empty published cell stays missing
    assert paper_value(TABLES["offline_image"], _cell("offline_image", "mnist_if100|ce")) is None
    assert parse_paper_cell("76.84±11.3") == (76.84, 11.3) and parse_paper_cell(" ") is None


def test_published_only_rows_are_the_ones_not_run():
    names = [n for n, _ in published_only(TABLES["table1"])]
    assert {"metasaug_focal", "bbn"} <= set(names) and "l2rw" not in names
    assert "metasaug_ce" not in names and "metasaug_ldam" not in names
    assert "ce" not in names and "ot_weight_vector" not in names
    bbn = dict(published_only(TABLES["table1"]))["bbn"]
    assert bbn["cifar10_if200"] == "" and bbn["cifar10_if100"] == "20.18"


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_ot_row_of_every_table_has_its_control(name):
    t = TABLES[name]
    names = [m.name for m in t.methods]
    ots = [m for m in t.methods if m.ot]
    assert ots, name
    for m in ots:
        ctl = names[names.index(m.name) + 1]
        assert ctl == m.name + "+no_ot"
        cell = next(c for c in t.cells(fidelity=True) if c.method.name == m.name)
        twin = next(c for c in t.cells(fidelity=True) if c.method.name == ctl)
        assert twin.column == cell.column
        a, b = cell_config(cell, seed=0), cell_config(twin, seed=0)
        # the same run, weight learning off: nothing else differs, stage 1 is shared
        assert a.stage2.learn_weights and not b.stage2.learn_weights
        assert a.stage2.method == b.stage2.method == "ot"
        assert dataclasses.replace(b.stage2, learn_weights=True) == a.stage2
        assert stage1_hash(a) == stage1_hash(b) and a.data == b.data and a.model == b.model
    assert not [m for m in t.methods if m.name.endswith("+no_ot") and m.ot]
    if name not in ("table2", "table5", "offline_text"):  # image and point-cloud tables
        la = cell_config(next(c for c in t.cells() if c.method.name == "posthoc_la"), seed=0)
        assert la.stage1.loss == "logit_adjustment_posthoc" and la.stage2.method == "none"
