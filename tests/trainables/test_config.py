"""The config schema (trainables/config.py): typed overrides, the presets, each enumerated
field's choices equal to the names its implementation knows, and a bad choice refused where a
config is built or overridden, in one line."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from search_spaces import resolve
from trainables import config as C
from trainables import models, reweight
from trainables.config import ConfigError, apply_overrides, apply_preset
from trainables.loop import lr_at, step_config
from trainables.reweight.sinkhorn import IMPLS


def test_overrides_are_typed():
    cfg = resolve("image_mnist_lt")
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
        apply_overrides(resolve("image_mnist_lt"), [bad])
    assert "\n" not in str(err.value)


def test_presets_differ_in_exactly_the_documented_fields():
    base = resolve("image_cifar10_lt")
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
    s1 = resolve("image_cifar10_lt").stage1
    assert s1.epochs == 200 and s1.lr == 0.1 and s1.momentum == 0.9
    assert lr_at(s1, 0) == pytest.approx(0.02)  # warm-up 1/5
    assert lr_at(s1, 4) == pytest.approx(0.1)
    assert lr_at(s1, 159) == pytest.approx(0.1)
    assert lr_at(s1, 160) == pytest.approx(1e-3)
    assert lr_at(s1, 180) == pytest.approx(1e-5)


@pytest.mark.parametrize(
    "cls, field, names",
    [
        (C.Stage2Config, "cost", reweight.COSTS),
        (C.Stage2Config, "grad", reweight.GRAD_MODES),
        (C.Stage2Config, "stop", reweight.STOP_RULES),
        (C.Stage2Config, "impl", IMPLS),
        (C.Stage2Config, "loss_weights", reweight.LOSS_WEIGHTINGS),
        (C.Stage2Config, "weight_init", reweight.WEIGHT_INITS),
        (C.Stage2Config, "weight_param", reweight.WEIGHT_PARAMS),
        (C.Stage2Config, "weight_mode", reweight.WEIGHT_MODES),
        (C.Stage2Config, "meta_distribution", reweight.META_DISTRIBUTIONS),
        (C.ModelConfig, "arch", tuple(models.MODELS)),
        (C.ExperimentConfig, "preset", tuple(C.PRESETS)),
    ],
)
def test_choices_are_what_the_implementation_knows(cls, field, names):
    assert sorted(C.choices(cls, field)) == sorted(names)


def test_every_source_belongs_to_one_modality():
    from trainables.image import IMAGE_SOURCES
    from trainables.point_cloud import POINT_SOURCES
    from trainables.text import TEXT_SOURCES

    known = [*IMAGE_SOURCES, *TEXT_SOURCES, *POINT_SOURCES]
    assert sorted(C.choices(C.DataConfig, "source")) == sorted(known)
    assert len(set(known)) == len(known)


def test_every_enumerated_field_is_a_literal():
    """No bare ``str`` field left that a builder or --set could fill with a typo: the free-text
    ones are names and paths."""
    free = {"name", "table", "description", "dataset", "root", "encoder"}
    for cls in (C.DataConfig, C.ModelConfig, C.Stage0Config, C.Stage1Config, C.Stage2Config,
                C.ExperimentConfig):  # fmt: skip
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] is str:
                assert f.name in free, f"{cls.__name__}.{f.name} is a bare str"


@pytest.mark.parametrize(
    "build",
    [
        lambda: C.Stage2Config(cost="l2"),
        lambda: dataclasses.replace(C.Stage1Config(), amp="fp16"),
        lambda: C.apply_overrides(resolve("image_mnist_lt"), ["stage2.cost=l2"]),
        lambda: C.apply_values(resolve("image_mnist_lt"), {"stage2.cost": "l2"}),
    ],
)
def test_a_bad_choice_fails_where_the_config_is_made(build):
    with pytest.raises(C.ConfigError, match=r"^bad value for stage\d\.\w+: '\w+'; choose from "):
        build()


def test_apply_values_keeps_types_without_a_string_round_trip():
    import numpy as np

    cfg = resolve("image_mnist_lt")
    values = {
        "stage2.eps": 1,
        "stage2.max_iter": np.int64(7),
        "stage2.tol": None,
        "stage2.lr": np.float64(0.1) / 3,
    }
    out = C.apply_values(cfg, values)
    assert out.stage2.eps == 1.0 and isinstance(out.stage2.eps, float)
    assert out.stage2.max_iter == 7 and type(out.stage2.max_iter) is int
    assert out.stage2.tol is None and out.stage2.lr == 0.1 / 3
    for key, bad in (("stage2.max_iter", 2.5), ("stage2.eps", "0.1"), ("stage2.virtual_step", 1),
                     ("stage2.eps", float("nan"))):  # fmt: skip
        with pytest.raises(C.ConfigError, match=f"bad value for {key}"):
            C.apply_values(cfg, {key: bad})
