"""The population searcher: Optuna is asked for P settings per Tune trial (the published one
first), told P results per completed trial, stops at the total, and survives save/restore."""

from __future__ import annotations

import optuna
import pytest

from orchestrator import names
from orchestrator.search import PinnedSpace, PopulationSearch, member_key
from search_spaces import SEARCH_SPACES, resolve

offline = SEARCH_SPACES["offline"]
MNIST = resolve("image_mnist_lt")
OFFLINE = PinnedSpace("offline", {}, offline.best(MNIST))  # the space as a sweep runs it


def _searcher(population=3, total=7, seed=0):
    return PopulationSearch(
        OFFLINE,
        population=population,
        total=total,
        metric=names.SELECT_METRIC,
        mode="max",
        points_to_evaluate=[offline.best(MNIST)],
        seed=seed,
    )


def test_asks_p_settings_per_trial_the_published_one_first_and_stops_at_the_total():
    from ray.tune.search import Searcher

    s = _searcher()
    first = s.suggest("t1")["population"]
    assert len(first) == 3 and first[0] == offline.best(MNIST)
    assert first[1] != first[0] and set(first[1]) == set(offline.best(MNIST))
    assert len(s.suggest("t2")["population"]) == 3
    assert len(s.suggest("t3")["population"]) == 1  # 7 settings in all
    assert s.suggest("t4") == Searcher.FINISHED


def test_tells_each_member_its_own_result_and_fails_the_missing():
    s = _searcher()
    s.suggest("t1")
    s.on_trial_complete("t1", {member_key(0): 81.5, member_key(1): 40.0, member_key(2): None})
    trials = s.study.get_trials(deepcopy=False)
    assert [t.value for t in trials[:2]] == [81.5, 40.0]
    assert trials[2].state == optuna.trial.TrialState.FAIL
    s.suggest("t2")
    s.on_trial_complete("t2", {member_key(0): 50.0}, error=True)
    assert {t.state for t in s.study.get_trials(deepcopy=False)[3:]} == {
        optuna.trial.TrialState.FAIL
    }


@pytest.mark.parametrize("told", [True, False])
def test_save_and_restore_keep_the_study_and_the_open_asks(tmp_path, told):
    a, b = _searcher(seed=4), _searcher(seed=4)
    for s in (a, b):
        s.suggest("t1")
        if told:
            s.on_trial_complete("t1", {member_key(i): 10.0 * i for i in range(3)})
    a.save(str(tmp_path / "state.pkl"))
    c = _searcher(seed=99)
    c.restore(str(tmp_path / "state.pkl"))
    assert c.asked == 3 and (("t1" in c.asks) != told)
    assert c.suggest("t2") == b.suggest("t2")  # the same sampler state goes on


def _optuna(seed=0):
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(
        space=OFFLINE,
        metric=names.SELECT_METRIC,
        mode="max",
        points_to_evaluate=[offline.best(MNIST)],
        seed=seed,
    )


def _score(config: dict) -> float:
    """A made-up result, a fixed function of the setting."""
    return float(sum(abs(v) ** 0.5 for v in config.values() if isinstance(v, (int, float))))


def _drive(searcher, n: int, concurrency: int, rng) -> list[dict]:
    """Tune's loop: at most ``concurrency`` trials live (Tune's ConcurrencyLimiter), a new one
    asked whenever there is room, a random live one ending otherwise (or when the searcher
    says not yet). Returns the settings in the order they were asked."""
    asked, live, tries = [], [], 0
    while len(asked) < n or live:
        if len(asked) < n and len(live) < concurrency:
            tries += 1
            config = searcher.suggest(f"trial{tries}")
            if config is not None:
                asked.append(config)
                live.append((f"trial{tries}", config))
                continue
        assert live, "nothing live and nothing asked: the searcher deadlocked"
        tid, config = live.pop(rng.randrange(len(live)))
        step = {names.SELECT_METRIC: _score(config), "training_iteration": 1}
        searcher.on_trial_result(tid, step)
        searcher.on_trial_complete(tid, {names.SELECT_METRIC: _score(config)})
    return asked


@pytest.mark.parametrize("concurrency, lag", [(2, 2), (3, 3), (2, 4), (3, 1)])
def test_in_order_the_settings_asked_do_not_depend_on_which_trial_ends_first(concurrency, lag):
    import random

    from orchestrator.search import InOrder

    n = 18  # past TPE's 10 random startup trials: later asks depend on what it was told
    runs = [_drive(InOrder(_optuna(), lag=lag), n, concurrency, random.Random(r))
            for r in range(4)]  # fmt: skip
    assert all(r == runs[0] for r in runs[1:])
    assert len({str(c) for c in runs[0]}) == n and runs[0][0] == offline.best(MNIST)
    # the same as with the trials ending one after another in the order they started
    assert runs[0] == _drive(InOrder(_optuna(), lag=lag), n, concurrency, _FirstLive())
    # the plain searcher, told in the order trials end, asks for other settings
    plain = [_drive(_optuna(), n, concurrency, random.Random(r)) for r in range(4)]
    assert any(p != runs[0] for p in plain)


class _FirstLive:
    """An 'rng' that always ends the earliest live trial."""

    def randrange(self, n: int) -> int:
        return 0


def test_in_order_waits_for_the_earlier_trial_and_survives_save_and_restore(tmp_path):
    from orchestrator.search import InOrder

    a = InOrder(_searcher(population=2, total=10, seed=3), lag=2)
    assert a.suggest("t0") is not None and a.suggest("t1") is not None
    a.on_trial_complete("t1", {member_key(0): 1.0, member_key(1): 2.0})
    assert a.suggest("t2") is None  # trial 0 still runs: trial 2 must not hear trial 1 first
    a.save(str(tmp_path / "state.pkl"))  # as Tune saves a wrapper: its state, then the base
    state = a.get_state()
    b = InOrder(_searcher(population=2, total=10, seed=77), lag=2)
    b.set_state(state)
    b.restore(str(tmp_path / "state.pkl"))
    for s in (a, b):
        s.on_trial_complete("t0", {member_key(0): 3.0, member_key(1): 4.0}, error=True)
        assert s.suggest("t2") is not None and s.searcher.asks.keys() == {"t1", "t2"}
        # trial 0 told (failed, both members), trial 1 not yet: it is, before trial 3's ask
        states = [t.state.name for t in s.searcher.study.get_trials(deepcopy=False)]
        assert states == ["FAIL", "FAIL"] + ["RUNNING"] * 4
    assert a.suggest("t3") == b.suggest("t3")
    assert a.searcher.asks.keys() == {"t2", "t3"}


def test_a_pinned_key_is_a_constant_of_every_setting_and_never_sampled(tmp_path):
    """``sweep --set stage2.eps=0.05`` pins a searched key: Tune's OptunaSearch and the
    population searcher give every setting 0.05, the study holds no eps parameter, and the
    other keys are still sampled (and differ between settings)."""
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.search import PinnedSpace

    pinned = PinnedSpace("offline", {"stage2.eps": 0.05}, offline.best(MNIST))
    first = {k: v for k, v in offline.best(MNIST).items() if k != "stage2.eps"}
    single = OptunaSearch(
        space=pinned, metric=names.SELECT_METRIC, mode="max", points_to_evaluate=[first], seed=0
    )
    singles = [single.suggest(f"t{i}") for i in range(14)]
    assert singles[0] == {**first, "stage2.eps": 0.05}  # the published setting, eps pinned
    pop = PopulationSearch(
        pinned,
        population=7,
        total=14,
        metric=names.SELECT_METRIC,
        mode="max",
        points_to_evaluate=[first],
        seed=0,
    )
    members = pop.suggest("p1")["population"] + pop.suggest("p2")["population"]
    for settings in (singles, members):
        assert [s["stage2.eps"] for s in settings] == [0.05] * 14
        assert len({s["stage2.lr"] for s in settings}) == 14  # the rest is searched
        assert set(settings[3]) == set(offline.best(MNIST))
    for study in (single._ot_study, pop.study):
        assert all("stage2.eps" not in t.params for t in study.trials)
    path = tmp_path / "searcher.pkl"  # saved with the Tuner's state: the space pickles too
    pop.save(str(path))
    pop.restore(str(path))
