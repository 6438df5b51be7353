"""ASHA whose decisions do not depend on which trial reports first.

Tune's ``ASHAScheduler`` decides a trial at a rung against the values recorded there so far: of
two trials running at once, the one that reaches a rung second is compared with the first, and
which one is second depends on timing (load, machine, an actor that starts late). The same
sweep could then stop a different trial and rank differently from run to run.

:func:`OrderedASHA` keeps ASHA's rule (at a rung, stop a trial whose value is below the
``1 - 1/reduction_factor`` quantile of the values it is compared with) and fixes what each
trial is compared with: the values recorded at that rung by the trials created at least
``lag`` trials before it (in the order Tune added them). A trial that reaches a rung while one
of those, still running, has not been recorded there waits, its report held (``NOOP``: its
training blocks in ``tune.report`` until Tune asks it for the next result), and is decided
once each of them has been recorded at that rung or has ended. Each decision is therefore the
same whatever the concurrency and however long each trial takes (tests: random interleavings
against a sequential run). With ``lag=1`` (every earlier trial) it is the decision Tune's
ASHA makes when the trials run one after another in that order; a larger lag leaves out the
``lag - 1`` trials just before, which are the ones most likely still short of the rung, so a
trial rarely waits (the sweep's single trials, whose settings run at different speeds, use
twice the concurrency). A trial waits only for trials that are running: one that failed and
waits to be retried is not waited for (it could not start while the waiting trials hold the
resources), so after a retry the order can differ.

Tune offers a scheduler no public way to resume a held trial: this calls the controller's
``_schedule_trial_train`` (Ray 2.60; the Tune tests of this project run through it).

Tune saves a searcher's state with the experiment's but not a scheduler's: a restored Tuner
gets the scheduler as it was pickled when the Tuner was created, its rungs empty, and re-adds
the restored trials most recent first. :func:`RungsKept` is a Tune callback that saves an
ASHA scheduler's rungs (and OrderedASHA's trial order) with each experiment checkpoint and
puts them back on restore, before the trials are re-added: a resumed sweep decides as the
uninterrupted one would have.
"""

from __future__ import annotations

__all__ = ["OrderedASHA", "RungsKept"]


def OrderedASHA(*, lag: int = 1, **kwargs):
    """An ``ASHAScheduler(**kwargs)`` (one bracket) that decides each trial at a rung against
    the trials created at least ``lag`` before it. A class defined on first use: Ray is
    imported lazily."""
    if lag < 1:
        raise ValueError(f"OrderedASHA needs lag >= 1, got {lag}")
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class _OrderedASHA(ASHAScheduler):
        def __init__(self) -> None:
            super().__init__(**kwargs)
            if len(self._brackets) != 1:
                raise ValueError("OrderedASHA runs one bracket")
            self._order: dict[str, int] = {}  # trial id -> when Tune first added it
            self._trials: dict[str, Trial] = {}
            self._held: dict[str, tuple[int, float]] = {}  # trial id -> (epoch, value)
            self._failing: set[str] = set()
            self._releasing = False
            self.lag = lag

        # -- Tune's hooks ---------------------------------------------------------------

        def on_trial_add(self, tune_controller, trial: Trial) -> None:
            super().on_trial_add(tune_controller, trial)
            self._order.setdefault(trial.trial_id, len(self._order))
            self._trials[trial.trial_id] = trial
            self._failing.discard(trial.trial_id)  # a retry: running again from its start
            self._release(tune_controller)

        def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
            t, value = result.get(self._time_attr), result.get(self._metric)
            rung = self._rung_reached(trial.trial_id, t)
            if rung is None or value is None or t >= self._max_t:
                action = super().on_trial_result(tune_controller, trial, result)
            elif self._waits(trial.trial_id, rung, value):
                self._held[trial.trial_id] = (t, value)
                action = TrialScheduler.NOOP
            else:
                action = self._decide(trial, t, value)
            self._release(tune_controller)
            return action

        def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
            self._held.pop(trial.trial_id, None)
            if trial.trial_id in self._trial_info:
                super().on_trial_complete(tune_controller, trial, result)
            self._release(tune_controller)

        def on_trial_remove(self, tune_controller, trial: Trial) -> None:
            self._held.pop(trial.trial_id, None)
            self._trial_info.pop(trial.trial_id, None)
            self._release(tune_controller)

        def on_trial_error(self, tune_controller, trial: Trial) -> None:
            # Called while the trial still reads RUNNING; it is retried (re-added) or ended.
            self._held.pop(trial.trial_id, None)
            self._failing.add(trial.trial_id)
            self._release(tune_controller)

        def debug_string(self) -> str:
            return super().debug_string() + f"\nheld at a rung: {len(self._held)}"

        # -- the order ------------------------------------------------------------------

        def _rung_reached(self, trial_id: str, t) -> float | None:
            """The milestone a report at ``t`` is decided at (None: no rung decision)."""
            if t is None or trial_id not in self._trial_info:
                return None
            for milestone, recorded in self._brackets[0]._rungs:  # highest first, as ASHA
                if t >= milestone and trial_id not in recorded:
                    return milestone
            return None

        def _compared(self, trial_id: str, other: str) -> bool:
            """Whether ``trial_id`` is compared with ``other`` at a rung: ``other`` was
            created at least ``lag`` trials before it."""
            return self._order[other] <= self._order[trial_id] - self.lag

        def _waits(self, trial_id: str, milestone: float, value: float) -> bool:
            """Whether a trial it is compared with, still running and not recorded at
            ``milestone`` yet, could change its decision there (:func:`_undecided`)."""
            recorded = dict(self._brackets[0]._rungs)[milestone]
            pending = sum(
                self._compared(trial_id, other)
                and other not in recorded
                and other in self._trial_info
                and other not in self._failing
                and self._trials[other].status == Trial.RUNNING
                for other in self._order
            )
            if not pending:
                return False
            known = [v for k, v in recorded.items() if self._compared(trial_id, k)]
            return _undecided(self._brackets[0].cutoff, known, pending, self._metric_op * value)

        def _decide(self, trial: Trial, t, value: float) -> str:
            """ASHA's rule at the rung ``t`` reaches (``_Bracket.on_result``), against the
            values of the trials it is compared with."""
            bracket = self._brackets[0]
            recorded = dict(bracket._rungs)[self._rung_reached(trial.trial_id, t)]
            earlier = {k: v for k, v in recorded.items() if self._compared(trial.trial_id, k)}
            cutoff = bracket.cutoff(earlier)
            reward = self._metric_op * value
            recorded[trial.trial_id] = reward
            if cutoff is not None and reward < cutoff:
                self._num_stopped += 1
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

        def _release(self, tune_controller) -> None:
            """Decide the held trials that wait for nothing any more, earliest first, and
            resume or stop each through the controller."""
            if self._releasing or not self._held:
                return
            self._releasing = True
            try:
                controller = getattr(tune_controller, "_tune_controller", tune_controller)
                # one pass, earliest first: a trial waits only for earlier ones, so a decision
                # can free only the trials after it, which the pass reaches next
                for trial_id in sorted(self._held, key=self._order.__getitem__):
                    t, value = self._held[trial_id]
                    if self._waits(trial_id, self._rung_reached(trial_id, t), value):
                        continue
                    del self._held[trial_id]
                    trial = self._trials[trial_id]
                    if self._decide(trial, t, value) == TrialScheduler.STOP:
                        controller.stop_trial(trial)
                    else:
                        controller._schedule_trial_train(trial)
            finally:
                self._releasing = False

    return _OrderedASHA()


_FAR = 1e300  # beyond any value a rung records (a balanced accuracy), still finite when mixed


def _undecided(cutoff, known: list[float], pending: int, reward: float) -> bool:
    """Whether ASHA's decision for ``reward`` (stop when below ``cutoff`` of the values it is
    compared with) depends on the ``pending`` values not recorded yet, given the ``known``
    ones. Each pending trial may record any value, or none (it can be stopped or fail before
    the rung). The quantile is non-decreasing in each value, so over every outcome it lies
    between the quantile with all pending values far below and all far above: a reward below
    the first is stopped whatever they record (when any value is known: with none recorded
    at all, ASHA continues), one at or above the second continues."""
    low = cutoff({i: v for i, v in enumerate(known + [-_FAR] * pending)})
    high = cutoff({i: v for i, v in enumerate(known + [_FAR] * pending)})
    if any(v == v for v in known) and reward < low:
        return False
    return not reward >= high


def rung_state(scheduler) -> dict:
    """What an ASHA scheduler has decided so far: each bracket's values at each rung, the
    count it stopped, and OrderedASHA's trial order."""
    state = {
        "rungs": [[[m, dict(rec)] for m, rec in b._rungs] for b in scheduler._brackets],
        "num_stopped": scheduler._num_stopped,
    }
    if hasattr(scheduler, "_order"):
        state["order"] = dict(scheduler._order)
    return state


def set_rung_state(scheduler, state: dict) -> None:
    """Put back what :func:`rung_state` saved (into the same scheduler's brackets)."""
    brackets = scheduler._brackets
    if len(state["rungs"]) != len(brackets):
        raise ValueError("the saved rungs are not this scheduler's: a different bracket count")
    for bracket, rungs in zip(brackets, state["rungs"], strict=True):
        if [m for m, _ in bracket._rungs] != [m for m, _ in rungs]:
            raise ValueError("the saved rungs are not this scheduler's: different milestones")
        for (_, recorded), (_, saved) in zip(bracket._rungs, rungs, strict=True):
            recorded.clear()
            recorded.update(saved)
    scheduler._num_stopped = state["num_stopped"]
    if "order" in state and hasattr(scheduler, "_order"):
        scheduler._order.clear()
        scheduler._order.update(state["order"])


def RungsKept(scheduler):
    """A Tune callback that saves ``scheduler``'s rungs (an ``ASHAScheduler`` or
    :func:`OrderedASHA`) with every experiment checkpoint and restores them on resume. Pass
    the same scheduler object to the Tuner: Tune pickles the Tuner's config and callbacks
    together, so the restored callback still holds the restored scheduler."""
    from ray.tune import Callback

    class _RungsKept(Callback):
        def __init__(self) -> None:
            self.scheduler = scheduler

        def get_state(self) -> dict:
            return rung_state(self.scheduler)

        def set_state(self, state: dict) -> None:
            set_rung_state(self.scheduler, state)

    return _RungsKept()
