"""ASHA whose decisions do not depend on which trial reports first.

Tune's ``ASHAScheduler`` decides a trial at a rung against the values recorded there so far: of
two trials running at once, the one that reaches a rung second is compared with the first, and
which one is second depends on timing (load, machine, an actor that starts late). The same
sweep could then stop a different trial and rank differently from run to run.

:func:`OrderedASHA` keeps ASHA's rule (at a rung, stop a trial whose value is below the
``1 - 1/reduction_factor`` quantile of the values recorded there) and changes only the order in
which trials are recorded: a trial that reaches a rung while an earlier trial (in the order
Tune added them) is still running and has not been decided there waits, its report held
(``NOOP``: its training blocks in ``tune.report`` until Tune asks it for the next result), and
is decided when every earlier trial has been recorded at that rung or has ended. Each decision
is therefore the one Tune's ASHA makes when the trials run one after another in that order,
whatever the concurrency and however long each trial takes (tests: random interleavings
against the sequential run). A trial waits only for trials that are running: one that failed
and waits to be retried is not waited for (it could not start while the waiting trials hold
the resources), so after a retry the order can differ.

Tune offers a scheduler no public way to resume a held trial: this calls the controller's
``_schedule_trial_train`` (Ray 2.60; the Tune tests of this project run through it).
"""

from __future__ import annotations

__all__ = ["OrderedASHA"]


def OrderedASHA(**kwargs):
    """An ``ASHAScheduler(**kwargs)`` (one bracket) that records the trials at each rung in the
    order Tune added them. A class defined on first use: Ray is imported lazily."""
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
            elif self._waits(trial.trial_id, rung):
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

        def _waits(self, trial_id: str, milestone: float) -> bool:
            """Whether an earlier trial, still running, has not been recorded at
            ``milestone`` yet."""
            recorded = dict(self._brackets[0]._rungs)[milestone]
            mine = self._order[trial_id]
            return any(
                self._order[other] < mine
                and other not in recorded
                and other in self._trial_info
                and other not in self._failing
                and self._trials[other].status == Trial.RUNNING
                for other in self._order
            )

        def _decide(self, trial: Trial, t, value: float) -> str:
            action = self._brackets[0].on_result(trial, t, self._metric_op * value)
            if action == TrialScheduler.STOP:
                self._num_stopped += 1
            return action

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
                    if self._waits(trial_id, self._rung_reached(trial_id, t)):
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
