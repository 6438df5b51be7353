"""The population searcher: Optuna is asked for P settings per Tune trial (the published one
first), told P results per completed trial, stops at the total, and survives save/restore."""

from __future__ import annotations

import optuna
import pytest

from orchestrator import names
from orchestrator.search import PopulationSearch, member_key
from search_spaces import offline


def _searcher(population=3, total=7, seed=0):
    return PopulationSearch(
        offline.space,
        population=population,
        total=total,
        metric=names.SELECT_METRIC,
        mode="max",
        points_to_evaluate=[offline.best()],
        seed=seed,
    )


def test_asks_p_settings_per_trial_the_published_one_first_and_stops_at_the_total():
    from ray.tune.search import Searcher

    s = _searcher()
    first = s.suggest("t1")["population"]
    assert len(first) == 3 and first[0] == offline.best()
    assert first[1] != first[0] and set(first[1]) == set(offline.best())
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
