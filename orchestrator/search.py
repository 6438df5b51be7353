"""Optuna TPE behind Ray Tune when one Tune trial trains a population of settings.

:class:`PopulationSearch` is a Tune ``Searcher`` that asks the Optuna study for P settings per
Tune trial (``study.ask()`` and the define-by-run space, P times) and tells it P results when
the trial completes (``study.tell`` per member, from the member's selection metric in the
trial's last result). The published setting is enqueued first, and the sampler is seeded, as
with ``OptunaSearch``; the study and the open asks are saved with the Tuner's state, so a
resumed sweep goes on with the same study.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable

from . import names

__all__ = ["MEMBER_KEY", "PopulationSearch", "member_key"]

MEMBER_KEY = "member_{}_" + names.SELECT_METRIC


def member_key(i: int) -> str:
    """The key of member ``i``'s selection metric in a population trial's Tune results."""
    return MEMBER_KEY.format(i)


def PopulationSearch(
    space: Callable,
    *,
    population: int,
    total: int,
    metric: str,
    mode: str,
    points_to_evaluate: list[dict],
    seed: int,
):
    """A Tune searcher giving each trial ``{"population": [up to P settings]}``, ``total``
    settings in all (the last trial may get fewer). A class defined on first use: Ray and
    Optuna are imported lazily."""
    import optuna
    from ray.tune.search import Searcher

    class _PopulationSearch(Searcher):
        def __init__(self) -> None:
            super().__init__(metric=metric, mode=mode)
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self.study = optuna.create_study(
                sampler=optuna.samplers.TPESampler(seed=seed),
                direction="maximize" if mode == "max" else "minimize",
            )
            for point in points_to_evaluate:
                self.study.enqueue_trial(point)
            self.asks: dict[str, list[int]] = {}  # Tune trial id -> its Optuna trial numbers
            self.asked = 0

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True  # the space is define-by-run, given at construction

        def suggest(self, trial_id: str):
            n = min(population, total - self.asked)
            if n <= 0:
                return Searcher.FINISHED
            trials = []
            for _ in range(n):
                t = self.study.ask()
                space(t)
                trials.append(t)
            self.asked += n
            self.asks[trial_id] = [t.number for t in trials]
            return {"population": [dict(t.params) for t in trials]}

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            pass  # members are culled inside the trial; Optuna hears the end only

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
            numbers = self.asks.pop(trial_id, [])
            for i, t in enumerate(numbers):
                value = (result or {}).get(member_key(i))
                if error or value is None or not math.isfinite(value):
                    self.study.tell(t, state=optuna.trial.TrialState.FAIL)
                else:
                    self.study.tell(t, value)

        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "wb") as f:
                pickle.dump({"study": self.study, "asks": self.asks, "asked": self.asked}, f)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "rb") as f:
                state = pickle.load(f)
            self.study, self.asks, self.asked = state["study"], state["asks"], state["asked"]

    return _PopulationSearch()
