from __future__ import annotations

import dataclasses

import pytest

from search_spaces import EXPERIMENTS
from trainables.config import PRESETS, ConfigError, apply_overrides, apply_preset
from trainables.loop import lr_at, step_config


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
@pytest.mark.parametrize("smoke", [False, True])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_experiment_builds(name, smoke, preset):
    cfg = EXPERIMENTS[name](smoke=smoke, preset=preset)
    assert cfg.name == name and cfg.table and cfg.description
    assert cfg.preset == preset
    if smoke:
        assert cfg.stage1.epochs <= 2 and cfg.stage2.epochs <= 1


def test_overrides_are_typed():
    cfg = EXPERIMENTS["image_mnist_lt"]()
    out = apply_overrides(
        cfg,
        [
            "stage2.eps=0.05",
            "seed=3",
            "stage2.tol=none",
            "stage1.milestones=10,20",
            "stage2.virtual_step=false",
            "data.imbalance_factor=50",
        ],
    )
    assert out.stage2.eps == 0.05 and out.seed == 3 and out.stage2.tol is None
    assert out.stage1.milestones == (10, 20) and out.stage2.virtual_step is False
    assert out.data.imbalance_factor == 50.0
    assert apply_overrides(out, ["stage2.tol=1e-3"]).stage2.tol == 1e-3


@pytest.mark.parametrize(
    "bad,msg",
    [
        ("stage2.epz=1", "unknown config key 'stage2.epz'"),
        ("stage2.eps=abc", "bad value for stage2.eps"),
        ("stage2.epochs=1.5", "bad value for stage2.epochs"),
        ("stage2.virtual_step=maybe", "bad value"),
        ("stage2", "malformed override"),
        ("stage2=3", "is a section"),
        ("stage2.eps=nan", "bad value"),
    ],
)
def test_bad_overrides_raise_one_line(bad, msg):
    with pytest.raises(ConfigError, match=msg) as err:
        apply_overrides(EXPERIMENTS["image_mnist_lt"](), [bad])
    assert "\n" not in str(err.value)


def test_presets_differ_in_exactly_the_documented_fields():
    base = EXPERIMENTS["image_cifar10_lt"]()
    paper = apply_preset(base, "paper").stage2
    released = apply_preset(base, "released_code").stage2
    diff = {
        f.name
        for f in dataclasses.fields(paper)
        if getattr(paper, f.name) != getattr(released, f.name)
    }
    assert diff == {
        "epochs",
        "train",
        "nesterov",
        "weight_lr",
        "weight_decay_w",
        "weight_init",
        "released_mixing",
        "tol",
        "check_every",
        "stop",
        "virtual_step",
        "loss_weights",
        "meta_ce_coef",
    }
    assert paper.epochs == 40 and released.epochs == 90
    assert (paper.loss_weights, released.loss_weights) == ("simplex", "raw")
    assert (paper.weight_init, released.weight_init) == ("uniform", "class_balanced")
    assert (paper.meta_ce_coef, released.meta_ce_coef) == (0.0, 10.0)
    assert (paper.train, released.train) == ("all", "classifier")
    s_paper, s_rel = step_config(paper, 10), step_config(released, 10)
    assert (s_paper.feature_weight, s_paper.label_weight) == (1.0, 1.0)
    assert (s_rel.feature_weight, s_rel.label_weight) == (0.5, 0.1)  # 0.5 * 2 / K
    assert (s_paper.max_iter, s_paper.tol, s_paper.eps) == (200, None, 0.1)
    assert (s_rel.stop, s_rel.tol, s_rel.check_every) == ("potential_change", 0.1, 1)
    assert (paper.lr, paper.weight_lr, paper.batch_size) == (2e-5, 1e-3, 16)
    with pytest.raises(ConfigError, match="unknown preset"):
        apply_preset(base, "nope")


def test_stage1_schedule_is_ldam_drw():
    s1 = EXPERIMENTS["image_cifar10_lt"]().stage1
    assert s1.epochs == 200 and s1.lr == 0.1 and s1.momentum == 0.9
    assert lr_at(s1, 0) == pytest.approx(0.02)  # warm-up 1/5
    assert lr_at(s1, 4) == pytest.approx(0.1)
    assert lr_at(s1, 159) == pytest.approx(0.1)
    assert lr_at(s1, 160) == pytest.approx(1e-3)
    assert lr_at(s1, 180) == pytest.approx(1e-5)
