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
from trainables.reweight.ot import IMPLS


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


# ---------------------------------------------------------------- the fields a config reads
# (tests/trainables/test_unused_fields.py changes each unread field and runs the code)


def _unused(name: str, *overrides: str, smoke: bool = True) -> frozenset[str]:
    return C.unused_fields(resolve(name, smoke=smoke, overrides=list(overrides)))


def test_mnist_reads_no_text_point_cloud_or_stage0_field_but_every_ot_knob():
    unused = _unused("image_mnist_lt")
    assert {"data.image_size", "data.max_length", "data.num_points", "model.encoder"} <= unused
    assert {f"stage0.{f.name}" for f in dataclasses.fields(C.Stage0Config)} <= unused
    assert not {"stage2.eps", "stage2.max_iter", "stage2.lr", "stage2.weight_lr"} & unused
    assert not {"data.test_per_class", "data.imbalance_factor", "model.arch"} & unused


def test_text_reads_stage0_and_its_tokens_but_no_image_or_point_field():
    unused = _unused("text_tweets")
    assert not {"stage0.epochs", "stage0.lr", "stage0.head", "data.max_length"} & unused
    assert not {"model.encoder", "model.fcn_hidden", "data.minority"} & unused
    assert {"data.image_size", "data.num_points", "model.k", "data.augment"} <= unused
    # without epochs stage 0 reads nothing but its epochs (vanilla BERT)
    no_stage0 = _unused("text_tweets", "stage0.epochs=0")
    assert "stage0.epochs" not in no_stage0 and "stage0.lr" in no_stage0


@pytest.mark.parametrize(
    "name, overrides, key, read",
    [
        ("image_imagenet_lt", [], "data.image_size", True),  # file lists are resized
        ("image_cifar10_lt", [], "data.image_size", False),
        ("pointcloud_shapes", [], "data.num_points", True),
        ("pointcloud_shapes", [], "model.k", False),  # PointNet has no kNN graph
        ("pointcloud_shapes", ["model.arch=dgcnn"], "model.k", True),
        ("image_mnist_lt", [], "stage1.focal_gamma", False),
        ("image_mnist_lt", ["stage1.loss=focal"], "stage1.focal_gamma", True),
        ("image_mnist_lt", ["stage1.loss=ldam_drw"], "stage1.cb_beta", True),
        ("image_mnist_lt", ["stage1.loss=ldam_drw"], "stage1.drw_epoch", True),
        ("image_mnist_lt", ["stage1.loss=ldam"], "stage1.drw_epoch", False),
        ("image_mnist_lt", ["stage1.reweight=metasaug"], "stage1.cb_beta", False),
        (
            "image_mnist_lt",
            ["stage1.reweight=metasaug", "stage1.metasaug_loss=ldam"],
            "stage1.cb_beta",
            True,
        ),
        ("image_mnist_lt", ["stage1.loss=logit_adjustment_posthoc"], "stage1.la_tau", True),
        ("image_mnist_lt", ["stage1.reweight=l2rw"], "stage1.meta_batch", True),
        ("image_mnist_lt", ["stage1.reweight=l2rw"], "stage1.meta_lr", False),
        ("image_mnist_lt", ["stage1.reweight=mwn"], "stage1.meta_hidden", True),
        ("text_tweets", [], "stage1.momentum", False),  # AdamW
        ("text_tweets", ["stage1.epochs=0"], "stage1.lr", False),
        ("image_mnist_lt", [], "stage2.weight_net_hidden", False),
        ("text_tweets", [], "stage2.weight_net_hidden", True),
        ("text_tweets", [], "stage2.weight_init", False),
        ("image_mnist_lt", [], "stage2.check_every", False),  # no tolerance: no early stop
        ("image_mnist_lt", ["stage2.tol=0.01"], "stage2.check_every", True),
        ("image_mnist_lt", ["stage2.released_mixing=true"], "stage2.feature_weight", False),
        ("image_mnist_lt", ["stage2.cost=label"], "stage2.label_weight", True),
        ("image_mnist_lt", ["stage2.cost=label"], "stage2.feature_weight", False),
        ("image_mnist_lt", ["stage2.train=all"], "stage2.virtual_step", True),
        ("image_mnist_lt", [], "stage2.virtual_step", False),  # f1 frozen
        ("image_mnist_lt", ["stage2.weight_optimizer=adam"], "stage2.weight_momentum", False),
        ("image_mnist_lt", ["stage2.grad=implicit"], "stage2.impl", False),
        ("image_mnist_lt", ["stage2.method=none"], "stage2.eps", False),
        ("image_mnist_lt", ["stage2.method=none"], "stage2.train", True),
    ],
)
def test_a_field_is_read_under_the_choices_that_read_it(name, overrides, key, read):
    assert (key not in _unused(name, *overrides)) is read


def test_each_modalitys_fields_are_read_for_its_own_sources_only():
    """The modality registry decides which sources are text or point clouds; the table's
    conditions follow it for every source."""
    from trainables.modalities import MODALITIES

    only = {"text": "data.max_length", "point_cloud": "data.num_points", "image": None}
    for kind, modality in MODALITIES.items():
        for source in modality.sources:
            cfg = resolve("image_mnist_lt", overrides=[f"data.source={source}"])
            unused = C.unused_fields(cfg)
            for other, key in only.items():
                if key is not None:
                    assert (key in unused) is (other != kind), (source, key)
            assert ("stage0.epochs" in unused) is (kind != "text"), source


def _configs():
    from search_spaces import EXPERIMENTS

    for name in EXPERIMENTS:
        for smoke in (True, False):
            for preset in C.PRESETS:
                yield (
                    f"{name}{' --smoke' if smoke else ''} {preset}",
                    resolve(name, smoke=smoke, preset=preset),
                )


# read by the commands whatever the experiment: what the run is, its resources and sizes
ALWAYS_READ = (
    *C.IDENTITY_KEYS, "seed", "seeds", "data.dataset", "data.source", "data.num_classes",
    "data.imbalance_factor", "model.arch", "stage1.loss", "stage1.epochs", "stage1.workers",
    "stage1.reweight", "stage2.method", "stage2.train",
)  # fmt: skip


def test_every_registered_experiment_keeps_what_names_and_sizes_its_runs():
    for label, cfg in _configs():
        unused = C.unused_fields(cfg)
        assert unused <= set(C.flatten(cfg)), label
        assert not unused & set(ALWAYS_READ), label
        if cfg.stage2.method == "ot":
            assert "stage2.epochs" not in unused, label  # ASHA's time axis


def test_every_key_a_sweep_searches_is_read_by_its_experiment():
    """The experiment's own search space (its published settings, asked first) samples knobs
    the experiment reads: a knob it does not read would be a search dimension that does
    nothing (or a condition here that hides a knob in use)."""
    from search_spaces import EXPERIMENTS, SPACES

    for name in EXPERIMENTS:
        for smoke in (True, False):
            best = SPACES[name].best(resolve(name, smoke=smoke))
            cfg = C.apply_values(resolve(name, smoke=smoke), best)
            assert not set(best) & C.unused_fields(cfg), name


def test_every_key_a_paper_table_row_sets_is_read_in_that_row():
    """Each cell of every table (fidelity rows included) sets keys that its run reads: a row
    that set a key its config ignores would not run what it says."""
    from search_spaces.tables import TABLES, cell_config

    for table in TABLES.values():
        for cell in table.cells(fidelity=True):
            for smoke in (True, False):
                column = resolve(
                    cell.column.experiment,
                    smoke=smoke,
                    preset=cell.method.preset or "paper",
                    overrides=list(cell.column.overrides),
                )
                sets = [*cell.column.overrides, *cell.method.overrides(column)]
                keys = {item.split("=", 1)[0] for item in sets}
                unused = C.unused_fields(cell_config(cell, seed=0, smoke=smoke))
                assert not keys & unused, f"{table.name} {cell.key}: {sorted(keys & unused)}"
