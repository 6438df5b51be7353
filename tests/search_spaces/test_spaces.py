"""Contract tests over every search space (search_spaces.SEARCH_SPACES) and each experiment's own
(search_spaces.SPACES)."""

from __future__ import annotations

import optuna
import pytest

from search_spaces import EXPERIMENTS, SEARCH_SPACES, SPACES, Space, resolve
from search_spaces.spaces import WEIGHT_LR
from trainables.config import ExperimentConfig, apply_overrides

optuna.logging.set_verbosity(optuna.logging.WARNING)

NAMES = sorted(EXPERIMENTS)
SUGGEST = {"suggest_float", "suggest_int", "suggest_categorical"}


def _study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))


def _sample(name: str, study: optuna.Study | None = None) -> optuna.Trial:
    trial = (study or _study()).ask()
    space = SPACES[name]
    assert space.space(trial, space.best(resolve(name))) is None
    return trial


def _get(cfg: ExperimentConfig, key: str) -> object:
    obj: object = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _apply(cfg: ExperimentConfig, params: dict[str, object]) -> ExperimentConfig:
    return apply_overrides(cfg, [f"{k}={v}" for k, v in params.items()])


def test_every_experiment_has_a_space_that_fits_it():
    assert set(SPACES) == set(EXPERIMENTS)
    for name in NAMES:
        space = SPACES[name]
        assert isinstance(space, Space) and SEARCH_SPACES[space.name] is space, name
        space.check(resolve(name))  # its own space never refuses it
    assert {s.name for s in SPACES.values()} == {"paper", "offline", "text"}


def test_the_experiments_of_one_space_share_their_published_setting():
    """A space's first setting is each of its experiments' own stage 2 (the copies merged:
    one range set per protocol)."""
    for space in {s.name: s for s in SPACES.values()}.values():
        firsts = {repr(space.best(resolve(n))) for n in NAMES if SPACES[n] is space}
        assert len(firsts) == 1, space.name


@pytest.mark.parametrize("name", NAMES)
def test_space_samples_and_applies(name):
    trial = _sample(name)
    params = trial.params
    assert params, name
    # At least the stage-2 knobs the sweep is for.
    assert {
        "stage2.lr",
        "stage2.weight_lr",
        "stage2.eps",
        "stage2.max_iter",
        "stage2.tol",
        "stage2.feature_weight",
    } <= set(params)
    cfg = _apply(resolve(name), params)
    for key, value in params.items():
        got = _get(cfg, key)
        assert got == value and type(got) is type(value), (key, value, got)


@pytest.mark.parametrize("name", NAMES)
def test_space_tol_none_round_trips(name):
    trial = _sample(name)
    assert None in trial.distributions["stage2.tol"].choices
    cfg = _apply(resolve(name), {"stage2.tol": 1e-3})
    assert _apply(cfg, {"stage2.tol": None}).stage2.tol is None


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_params(name):
    a, b = _study(seed=0), _study(seed=0)
    first = [_sample(name, a).params for _ in range(5)]
    second = [_sample(name, b).params for _ in range(5)]
    assert first == second
    assert len({tuple(sorted(p.items(), key=lambda kv: kv[0])) for p in first}) > 1


@pytest.mark.parametrize("name", NAMES)
def test_best_lies_in_space_and_equals_config(name):
    best = SPACES[name].best(resolve(name))
    dists = _sample(name).distributions
    assert set(best) == set(dists), name
    for key, value in best.items():
        dist = dists[key]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            assert value in dist.choices, (key, value)
        else:
            assert dist._contains(dist.to_internal_repr(value)), (key, value, dist)
    cfg = resolve(name)
    assert _apply(cfg, best) == cfg, name
    for key, value in best.items():
        assert _get(cfg, key) == value, (key, value)


@pytest.mark.parametrize("name", NAMES)
def test_best_enqueued_first(name):
    study = _study()
    best = SPACES[name].best(resolve(name))
    study.enqueue_trial(best)
    trial = _sample(name, study)
    assert trial.params == best
    for key, value in best.items():
        assert type(trial.params[key]) is type(value), key


class _RecordingTrial:
    """Stands in for an Optuna trial and records every attribute the space touches."""

    def __init__(self) -> None:
        self.touched: list[str] = []
        self.suggested: list[str] = []

    def __getattr__(self, attr: str):
        self.touched.append(attr)

        def call(*args, **kwargs):
            if attr in SUGGEST:
                self.suggested.append(args[0])
            if attr == "suggest_categorical":
                return next(iter(args[1]))
            return args[1] if len(args) > 1 else None

        return call


@pytest.mark.parametrize("name", NAMES)
def test_space_only_suggests(name):
    fake = _RecordingTrial()
    assert SPACES[name].space(fake, SPACES[name].best(resolve(name))) is None
    assert fake.touched and set(fake.touched) <= SUGGEST, fake.touched
    assert len(fake.suggested) == len(set(fake.suggested))
    assert set(fake.suggested) == set(_sample(name).params)


@pytest.mark.parametrize("name", sorted(SEARCH_SPACES))
def test_every_space_samples_config_keys_and_enqueues_best(name):
    space = SEARCH_SPACES[name]
    cfg = resolve("image_mnist_lt")
    trial = _study().ask()
    space.space(trial, space.best(cfg))
    _apply(cfg, trial.params)  # every key exists and every value parses
    study = _study()
    study.enqueue_trial(space.best(cfg))
    first = study.ask()
    space.space(first, space.best(cfg))
    assert first.params == space.best(cfg)
    stage1_keys = any(k.startswith(("stage0.", "stage1.")) for k in trial.params)
    assert stage1_keys == space.stage1  # the sweep must know: each trial builds its stage 1


@pytest.mark.parametrize("name", ["image_mnist_lt", "pointcloud_shapes", "image_cifar10_lt"])
def test_ot_learn_starts_from_the_experiments_own_step_and_samples_every_choice(name):
    ot_learn = SEARCH_SPACES["ot_learn"]
    cfg = resolve(name)
    first = ot_learn.best(cfg)
    assert first["stage2.weight_lr"] == cfg.stage2.weight_lr  # not the paper's for every one
    lo, hi = WEIGHT_LR
    assert lo <= cfg.stage2.weight_lr <= hi
    assert _apply(cfg, first) == cfg  # the first trial is the experiment as it is
    seen = {"stage2.weight_param": set(), "stage2.weight_optimizer": set()}
    study = _study()
    for _ in range(40):
        t = study.ask()
        ot_learn.space(t, first)
        got = _apply(cfg, t.params)
        for k in seen:
            seen[k].add(t.params[k])
        assert got.stage2.weight_param == t.params["stage2.weight_param"]
        study.tell(t, 0.0)
    assert seen["stage2.weight_param"] == {"sample", "class", "class_residual"}
    assert seen["stage2.weight_optimizer"] == {"sgd", "adam"}


def test_ot_learn_refuses_the_weight_net_experiments():
    ot_learn = SEARCH_SPACES["ot_learn"]
    ot_learn.check(resolve("image_mnist_lt"))
    with pytest.raises(
        ValueError,
        match=r"^--space ot_learn: .*text_tweets has stage2\.method=ot, stage2\.weights=net",
    ):
        ot_learn.check(resolve("text_tweets"))
