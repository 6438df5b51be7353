"""Contract tests of the modality registry: every config source has exactly one modality, an
unknown one is refused, and what an adapter builds is what its direct builders build (on the
offline smoke configs)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from search_spaces import EXPERIMENTS, resolve
from trainables import trial
from trainables.config import Source
from trainables.data import DatasetMissing
from trainables.data.arrays import StageData
from trainables.image import build_image_data, build_image_model
from trainables.modalities import MODALITIES, Modality, modality_of
from trainables.point_cloud import build_point_data, build_point_model
from trainables.text import build_text_data, build_text_model, classifier_only, finetune_encoder

CPU = torch.device("cpu")
SOURCES = typing.get_args(Source)
_METHODS = ("check_data", "data_and_model", "start_stage1", "feature_model")


def test_every_source_has_exactly_one_modality():
    for source in SOURCES:
        owners = [name for name, m in MODALITIES.items() if source in m.sources]
        assert len(owners) == 1, (source, owners)
        assert modality_of(source) is MODALITIES[owners[0]]
    declared = [s for m in MODALITIES.values() for s in m.sources]
    assert sorted(declared) == sorted(SOURCES)  # no modality serves a source configs can't name


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_every_entry_has_the_protocol(name):
    entry: Modality = MODALITIES[name]
    assert isinstance(entry.sources, tuple) and entry.sources
    for method in _METHODS:
        assert callable(getattr(entry, method)), (name, method)


def test_every_experiment_has_its_modality():
    for name, build in EXPERIMENTS.items():
        cfg = build(smoke=True)
        assert cfg.data.source in modality_of(cfg.data.source).sources, name


@pytest.mark.parametrize("source", ["", "cifar-10", "MNIST", "modelnet40"])
def test_unknown_source_is_refused_with_the_registered_choices(source):
    with pytest.raises(ValueError, match="no registered modality") as err:
        modality_of(source)
    msg = str(err.value)
    assert repr(source) in msg and "\n" not in msg
    for name, entry in MODALITIES.items():
        assert name in msg and all(s in msg for s in entry.sources)


def _assert_same_data(a: StageData, b: StageData) -> None:
    for split in ("train", "meta", "val", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert torch.equal(sa.x, sb.x), split
        assert torch.equal(sa.y, sb.y), split
    assert (a.num_classes, a.train_counts, a.source) == (b.num_classes, b.train_counts, b.source)
    assert (a.mean, a.std, a.crop_pad, a.hflip, a.point_augment) == (
        b.mean,
        b.std,
        b.crop_pad,
        b.hflip,
        b.point_augment,
    )


def _assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _state(model: torch.nn.Module) -> dict:
    return model.state_dict()


def test_image_entry_builds_what_the_image_builders_build():
    cfg = resolve("image_mnist_lt", smoke=True)
    entry = modality_of(cfg.data.source)
    assert entry is MODALITIES["image"]
    entry.check_data(cfg)  # images: nothing to check early
    torch.manual_seed(3)
    old_data = build_image_data(cfg.data, cfg.seed)
    old_model = build_image_model(cfg.model, old_data, load_pretrained=True)
    after_old = torch.get_rng_state()
    torch.manual_seed(3)
    data, model = entry.start_stage1(cfg, CPU, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), after_old)  # the same draws, in the same order
    _assert_same_data(data, old_data)
    _assert_same_state(_state(model), _state(old_model))
    torch.manual_seed(3)
    data2, model2 = trial.data_and_model(cfg, CPU, load_pretrained=False)
    _assert_same_data(data2, old_data)
    _assert_same_state(_state(model2), _state(old_model))
    # stage 2 on cached features: the whole model, its channels from stage 1's info
    info = {"in_channels": int(data.train.x.shape[1])}
    torch.manual_seed(5)
    old = build_image_model(cfg.model, data, in_channels=info["in_channels"], load_pretrained=False)
    torch.manual_seed(5)
    fm, state = entry.feature_model(cfg, data, _state(old_model), info)
    _assert_same_state(_state(fm), _state(old))
    assert list(state) == list(_state(old_model))


def test_point_entry_builds_what_the_point_builders_build():
    cfg = resolve("pointcloud_shapes", smoke=True)
    entry = modality_of(cfg.data.source)
    assert entry is MODALITIES["point_cloud"]
    entry.check_data(cfg)  # generated shapes: nothing to check
    torch.manual_seed(3)
    old_data = build_point_data(cfg.data, cfg.seed)
    old_model = build_point_model(cfg.model, old_data.num_classes)
    after_old = torch.get_rng_state()
    torch.manual_seed(3)
    data, model = entry.start_stage1(cfg, CPU, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), after_old)
    _assert_same_data(data, old_data)
    _assert_same_state(_state(model), _state(old_model))
    torch.manual_seed(3)
    data2, model2 = trial.data_and_model(cfg, CPU, load_pretrained=False)
    _assert_same_data(data2, old_data)
    _assert_same_state(_state(model2), _state(old_model))
    torch.manual_seed(5)
    old = build_point_model(cfg.model, data.num_classes)
    torch.manual_seed(5)
    fm, state = entry.feature_model(cfg, data, _state(old_model), {})
    _assert_same_state(_state(fm), _state(old))
    assert list(state) == list(_state(old_model))


def test_modelnet10_is_checked_early(tmp_path):
    cfg = resolve("pointcloud_modelnet10", smoke=True)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(tmp_path)))
    with pytest.raises(DatasetMissing):
        trial.check_data(cfg)


def test_text_with_an_explicit_missing_root_is_checked_early(tmp_path):
    cfg = resolve("text_sst2", smoke=True)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(tmp_path)))
    with pytest.raises(DatasetMissing):
        trial.check_data(cfg)


def test_text_entry_builds_and_runs_stage0_as_the_text_builders_do():
    torch.set_num_threads(2)
    cfg = resolve("text_tweets", smoke=True)
    assert cfg.stage0.epochs > 0  # stage 0 runs, and draws from the generator
    entry = modality_of(cfg.data.source)
    assert entry is MODALITIES["text"]
    entry.check_data(cfg)  # the tweets ship with an installed package
    torch.manual_seed(3)
    g_old = torch.Generator().manual_seed(cfg.seed)
    text = build_text_data(cfg)
    old_model = build_text_model(cfg.model, cfg, text.pad_id)
    finetune_encoder(old_model, text.extra, cfg.stage0, text.data.num_classes, generator=g_old)
    after_old = torch.get_rng_state()
    torch.manual_seed(3)
    g_new = torch.Generator().manual_seed(cfg.seed)
    seen: list[tuple[str, int]] = []
    data, model = entry.start_stage1(
        cfg, CPU, generator=g_new, callback=lambda stage, epoch, _: seen.append((stage, epoch))
    )
    assert torch.equal(torch.get_rng_state(), after_old)
    assert torch.equal(g_new.get_state(), g_old.get_state())
    assert seen == [("stage0", e) for e in range(cfg.stage0.epochs)]
    _assert_same_data(data, text.data)
    _assert_same_state(_state(model), _state(old_model))
    # stage 2 on cached features: the FCN alone and the classifier's part of the state
    width = model.feature_dim
    feats = dataclasses.replace(
        data, train=dataclasses.replace(data.train, x=torch.zeros(len(data.train), width))
    )
    torch.manual_seed(5)
    old = classifier_only(cfg, width)
    torch.manual_seed(5)
    fm, state = entry.feature_model(cfg, feats, _state(model), {})
    _assert_same_state(_state(fm), _state(old))
    assert state and all(k.startswith("classifier.") for k in state)
    fm.load_state_dict(state)  # exactly the keys the FCN alone has
