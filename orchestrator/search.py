"""Optuna TPE behind Ray Tune when one Tune trial trains a population of settings.

:class:`PopulationSearch` is a Tune ``Searcher`` that asks the Optuna study for P settings per
Tune trial (``study.ask()`` and the define-by-run space, P times) and tells it P results when
the trial completes (``study.tell`` per member, from the member's selection metric in the
trial's last result). The published setting is enqueued first, and the sampler is seeded, as
with ``OptunaSearch``; the study and the open asks are saved with the Tuner's state, so a
resumed sweep goes on with the same study.

:func:`InOrder` wraps either searcher so that what it is told before each ask does not depend
on timing: the searcher hears the results of trials ``0 .. k - lag`` (in that order, however
they finished) before it is asked for trial ``k``, and trial ``k`` waits for them.

:class:`PinnedSpace` takes keys out of a space (``sweep --set`` on a searched key): they are
constants of every trial, as in Tune's ``param_space``, and the study never samples them.
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable

import optuna
from ray.tune.search import Searcher

from search_spaces import SEARCH_SPACES

from . import names, ray_internals

__all__ = ["MEMBER_KEY", "InOrder", "PinnedSpace", "PopulationSearch", "member_key"]

MEMBER_KEY = "member_{}_" + names.SELECT_METRIC


def member_key(i: int) -> str:
    """The key of member ``i``'s selection metric in a population trial's Tune results."""
    return MEMBER_KEY.format(i)


class _PinnedTrial:
    """An Optuna trial whose pinned names answer their value without asking the study."""

    def __init__(self, trial, pinned: dict) -> None:
        self.trial, self.pinned = trial, pinned

    def suggest_float(self, name: str, *args, **kwargs):
        return self._ask("suggest_float", name, args, kwargs)

    def suggest_int(self, name: str, *args, **kwargs):
        return self._ask("suggest_int", name, args, kwargs)

    def suggest_categorical(self, name: str, *args, **kwargs):
        return self._ask("suggest_categorical", name, args, kwargs)

    def _ask(self, how: str, name: str, args: tuple, kwargs: dict):
        if name in self.pinned:
            return self.pinned[name]
        return getattr(self.trial, how)(name, *args, **kwargs)


class PinnedSpace:
    """The search space named ``space`` (``search_spaces.SEARCH_SPACES``) with the ``pinned``
    keys fixed: the space still runs (a later choice may depend on a pinned one), a pinned
    key's ``suggest_*`` returns its value without asking the study, and the call returns the
    pinned values, which Tune's ``OptunaSearch`` (and :func:`PopulationSearch`) put into every
    setting as constants; ``around`` is the published setting the space's relative ranges are
    placed around. A class holding the space's name, not a closure: searchers are saved with
    ``pickle``."""

    def __init__(self, space: str, pinned: dict, around: dict) -> None:
        if space not in SEARCH_SPACES:
            raise ValueError(f"no search space {space!r}; choose from {sorted(SEARCH_SPACES)}")
        self.space, self.pinned, self.around = space, dict(pinned), dict(around)

    def __call__(self, trial) -> dict:
        SEARCH_SPACES[self.space].space(_PinnedTrial(trial, self.pinned), self.around)
        return dict(self.pinned)


class PopulationSearch(Searcher):
    """A Tune searcher giving each trial ``{"population": [up to P settings]}``, ``total``
    settings in all (the last trial may get fewer)."""

    def __init__(
        self,
        space: Callable,
        *,
        population: int,
        total: int,
        metric: str,
        mode: str,
        points_to_evaluate: list[dict],
        seed: int,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.space, self.population, self.total = space, population, total
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
        n = min(self.population, self.total - self.asked)
        if n <= 0:
            return Searcher.FINISHED
        trials, settings = [], []
        for _ in range(n):
            t = self.study.ask()
            constants = self.space(t) or {}  # a define-by-run space may return constants
            trials.append(t)
            settings.append({**t.params, **constants})
        self.asked += n
        self.asks[trial_id] = [t.number for t in trials]
        return {"population": settings}

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


class InOrder(Searcher):
    """``searcher`` (a Tune ``Searcher``) asked for trial ``k`` only once trials ``0 .. k -
    lag`` have ended, and told their results in trial order just before: each suggestion then
    depends on the seed and ``lag`` only, not on which trial ended first. Until then
    ``suggest`` returns None (Tune asks again later), so a free slot can wait for an earlier
    trial; with ``lag`` at least the trials run at once that is rare (the sweep uses twice
    the concurrency)."""

    def __init__(self, searcher: Searcher, *, lag: int) -> None:
        if lag < 1:
            raise ValueError(f"InOrder needs lag >= 1, got {lag}")
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.lag = searcher, lag
        self.index: dict[str, int] = {}  # trial id -> its place in the order
        self.ended: dict[int, tuple[str, dict | None, bool]] = {}  # not told yet
        self.told = 0  # trials 0 .. told - 1 are told

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        ray_internals.set_searcher_properties(self, self.searcher.metric, self.searcher.mode)
        return ok

    def suggest(self, trial_id: str):
        k = len(self.index)
        needed = k - self.lag + 1  # trials 0 .. k - lag
        if any(i not in self.ended for i in range(self.told, needed)):
            return None
        for i in range(self.told, needed):
            tid, result, error = self.ended.pop(i)
            self.searcher.on_trial_complete(tid, result=result, error=error)
        self.told = max(self.told, needed)
        config = self.searcher.suggest(trial_id)
        if config is not None and config != Searcher.FINISHED:
            self.index[trial_id] = k
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        i = self.index.get(trial_id)
        if i is None or i < self.told:
            return
        self.ended[i] = (trial_id, result, error)

    # Tune saves a wrapper (a searcher with a ``searcher``) as its ``get_state()`` and the
    # innermost searcher through its own ``save``, as with its ConcurrencyLimiter.
    def get_state(self) -> dict:
        return copy.deepcopy({"index": self.index, "ended": self.ended, "told": self.told})

    def set_state(self, state: dict) -> None:
        self.index, self.ended, self.told = state["index"], state["ended"], state["told"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
