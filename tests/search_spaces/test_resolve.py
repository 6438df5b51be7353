"""The resolver: every registered experiment x {full, smoke} x {default, paper, released_code}
against the configs its builder gave before the resolver existed (``golden_configs.json``).

The golden file was written from ``EXPERIMENTS[name](smoke=..., preset=...)``, i.e. the preset
passed into the builder. ``orchestrator.run`` and ``orchestrator.sweep`` used to patch the preset
on after the builder instead, which lost the smoke sizes and the experiments' own step sizes;
the resolver now gives every command the builder's config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search_spaces import EXPERIMENTS, resolve
from trainables.config import PRESETS, ConfigError, to_dict

GOLDEN = json.loads((Path(__file__).parent / "golden_configs.json").read_text())
CASES = [
    (name, smoke, preset)
    for name in EXPERIMENTS
    for smoke in (False, True)
    for preset in (None, "paper", "released_code")
]


def _key(name: str, smoke: bool, preset: str | None) -> str:
    return f"{name}|{'smoke' if smoke else 'full'}|{preset or 'default'}"


def test_the_golden_file_covers_every_registered_experiment():
    assert sorted(GOLDEN) == sorted(_key(*c) for c in CASES)


@pytest.mark.parametrize("name, smoke, preset", CASES)
def test_resolved_config_equals_the_golden_one(name, smoke, preset):
    cfg = resolve(name, smoke=smoke, preset=preset)
    assert json.loads(json.dumps(to_dict(cfg))) == GOLDEN[_key(name, smoke, preset)]


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
@pytest.mark.parametrize("smoke", [False, True])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_experiment_builds(name, smoke, preset):
    cfg = resolve(name, smoke=smoke, preset=preset)
    assert cfg.name == name and cfg.table and cfg.description
    assert cfg.preset == preset
    if smoke:
        assert cfg.stage1.epochs <= 2 and cfg.stage2.epochs <= 1


def test_seed_then_overrides_in_order():
    cfg = resolve(
        "image_mnist_lt", smoke=True, seed=4, overrides=["stage2.eps=0.2", "stage2.eps=0.3"]
    )
    assert cfg.seed == 4 and cfg.stage2.eps == 0.3
    assert resolve("image_mnist_lt", overrides=["seed=9"], seed=4).seed == 9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="nope"), r"unknown experiment 'nope' \(choose from image_cifar10_lt"),
        (dict(name="text_sst"), "unknown experiment 'text_sst'; did you mean 'text_sst5'"),
        (dict(name="image_mnist_lt", preset="mine"), "unknown preset 'mine'"),
        (dict(name="image_mnist_lt", overrides=["preset=paper"]), "preset names the run"),
        (dict(name="image_mnist_lt", overrides=["stage2.cost=l2"]), "choose from label"),
    ],
)
def test_bad_input_is_one_config_error(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ConfigError, match=message):
        resolve(name, **kwargs)
