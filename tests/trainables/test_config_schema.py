"""The config schema: each enumerated field's choices are the names its implementation knows,
and a bad choice is refused when a config is built or overridden, in one line."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from search_spaces import resolve
from trainables import config as C
from trainables import losses, models, reweight
from trainables.reweight.sinkhorn import IMPLS


@pytest.mark.parametrize(
    "cls, field, names",
    [
        (C.Stage2Config, "cost", reweight.COSTS),
        (C.Stage2Config, "grad", reweight.GRAD_MODES),
        (C.Stage2Config, "stop", reweight.STOP_RULES),
        (C.Stage2Config, "impl", IMPLS),
        (C.Stage2Config, "loss_weights", reweight.LOSS_WEIGHTINGS),
        (C.Stage2Config, "weight_init", reweight.WEIGHT_INITS),
        (C.Stage2Config, "weight_mode", reweight.WEIGHT_MODES),
        (C.Stage2Config, "meta_distribution", reweight.META_DISTRIBUTIONS),
        (C.Stage1Config, "loss", (*losses.LOSSES, "logit_adjustment_posthoc")),
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
