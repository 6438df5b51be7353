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
resources), so after a retry the order can differ. A trial whose actor is still starting
(Tune calls it PENDING, its resources already held) counts as running: on a busy machine the
second trial of a pair can report before the first one's process has started.

Tune offers a scheduler no public way to resume a held trial, nor to read its rungs: those
calls go through :mod:`orchestrator.ray_internals` (Ray 2.60; the Tune tests of this project
run through it).

Tune saves a searcher's state with the experiment's but not a scheduler's: a restored Tuner
gets the scheduler as it was pickled when the Tuner was created, its rungs empty, and re-adds
the restored trials most recent first. :func:`RungsKept` is a Tune callback that saves an
ASHA scheduler's rungs (and OrderedASHA's trial order) with each experiment checkpoint and
puts them back on restore, before the trials are re-added: a resumed sweep decides as the
uninterrupted one would have.
"""

from __future__ import annotations

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from . import ray_internals as internals

__all__ = ["OrderedASHA", "RungsKept", "rung_state", "set_rung_state"]


class OrderedASHA(ASHAScheduler):
    """An ``ASHAScheduler(**kwargs)`` (one bracket) that decides each trial at a rung against
    the trials created at least ``lag`` before it."""

    def __init__(self, *, lag: int = 1, **kwargs) -> None:
        if lag < 1:
            raise ValueError(f"OrderedASHA needs lag >= 1, got {lag}")
        super().__init__(**kwargs)
        self.bracket = internals.asha_bracket(self)
        self.created: dict[str, int] = {}  # trial id -> when Tune first added it
        self.trials: dict[str, Trial] = {}
        self.held: dict[str, tuple[int, float]] = {}  # trial id -> (epoch, value)
        self.failing: set[str] = set()
        self.releasing = False
        self.lag = lag

    # -- Tune's hooks ---------------------------------------------------------------------

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self.created.setdefault(trial.trial_id, len(self.created))
        self.trials[trial.trial_id] = trial
        self.failing.discard(trial.trial_id)  # a retry: running again from its start
        self._release(tune_controller)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        time_attr, metric, _, max_t = internals.asha_settings(self)
        t, value = result.get(time_attr), result.get(metric)
        rung = self._rung_reached(trial.trial_id, t)
        if rung is None or value is None or t >= max_t:
            action = super().on_trial_result(tune_controller, trial, result)
        elif self._waits(tune_controller, trial.trial_id, rung, value):
            self.held[trial.trial_id] = (t, value)
            action = TrialScheduler.NOOP
        else:
            action = self._decide(trial, t, value)
        self._release(tune_controller)
        return action

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self.held.pop(trial.trial_id, None)
        if internals.tracks_trial(self, trial.trial_id):
            super().on_trial_complete(tune_controller, trial, result)
        self._release(tune_controller)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self.held.pop(trial.trial_id, None)
        internals.forget_trial(self, trial.trial_id)
        self._release(tune_controller)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        # Called while the trial still reads RUNNING; it is retried (re-added) or ended.
        self.held.pop(trial.trial_id, None)
        self.failing.add(trial.trial_id)
        self._release(tune_controller)

    def debug_string(self) -> str:
        return super().debug_string() + f"\nheld at a rung: {len(self.held)}"

    # -- the order --------------------------------------------------------------------------

    def _rung_reached(self, trial_id: str, t) -> float | None:
        """The milestone a report at ``t`` is decided at (None: no rung decision)."""
        if t is None or not internals.tracks_trial(self, trial_id):
            return None
        for milestone, recorded in internals.bracket_rungs(self.bracket):  # highest first
            if t >= milestone and trial_id not in recorded:
                return milestone
        return None

    def _recorded(self, milestone: float) -> dict:
        return dict(internals.bracket_rungs(self.bracket))[milestone]

    def _compared(self, trial_id: str, other: str) -> bool:
        """Whether ``trial_id`` is compared with ``other`` at a rung: ``other`` was created at
        least ``lag`` trials before it."""
        return self.created[other] <= self.created[trial_id] - self.lag

    def _waits(self, tune_controller, trial_id: str, milestone: float, value: float) -> bool:
        """Whether a trial it is compared with, still running (or starting) and not recorded
        at ``milestone`` yet, could change its decision there (:func:`_undecided`)."""
        recorded = self._recorded(milestone)
        pending = sum(
            self._compared(trial_id, other)
            and other not in recorded
            and internals.tracks_trial(self, other)
            and other not in self.failing
            and self._active(tune_controller, other)
            for other in self.created
        )
        if not pending:
            return False
        known = [v for k, v in recorded.items() if self._compared(trial_id, k)]
        sign = internals.asha_settings(self)[2]
        return _undecided(self.bracket.cutoff, known, pending, sign * value)

    def _active(self, tune_controller, trial_id: str) -> bool:
        """Running, or starting with its resources held: it will reach the rung (or end)."""
        trial = self.trials[trial_id]
        return trial.status == Trial.RUNNING or (
            trial.status == Trial.PENDING and internals.holds_resources(tune_controller, trial)
        )

    def _decide(self, trial: Trial, t, value: float) -> str:
        """ASHA's rule at the rung ``t`` reaches (Tune's ``_Bracket.on_result``), against the
        values of the trials it is compared with."""
        recorded = self._recorded(self._rung_reached(trial.trial_id, t))
        earlier = {k: v for k, v in recorded.items() if self._compared(trial.trial_id, k)}
        cutoff = self.bracket.cutoff(earlier)
        reward = internals.asha_settings(self)[2] * value
        recorded[trial.trial_id] = reward
        if cutoff is not None and reward < cutoff:
            internals.count_stop(self)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _release(self, tune_controller) -> None:
        """Decide the held trials that wait for nothing any more, earliest first, and resume
        or stop each through the controller."""
        if self.releasing or not self.held:
            return
        self.releasing = True
        try:
            # one pass, earliest first: a trial waits only for earlier ones, so a decision can
            # free only the trials after it, which the pass reaches next
            for trial_id in sorted(self.held, key=self.created.__getitem__):
                t, value = self.held[trial_id]
                if self._waits(tune_controller, trial_id, self._rung_reached(trial_id, t), value):
                    continue
                del self.held[trial_id]
                trial = self.trials[trial_id]
                if self._decide(trial, t, value) == TrialScheduler.STOP:
                    tune_controller.stop_trial(trial)
                else:
                    internals.resume_held_trial(tune_controller, trial)
        finally:
            self.releasing = False


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


def rung_state(scheduler: ASHAScheduler) -> dict:
    """What an ASHA scheduler has decided so far: each bracket's values at each rung, the
    count it stopped, and OrderedASHA's trial order."""
    state = internals.rung_state(scheduler)
    if isinstance(scheduler, OrderedASHA):
        state["order"] = dict(scheduler.created)
    return state


def set_rung_state(scheduler: ASHAScheduler, state: dict) -> None:
    """Put back what :func:`rung_state` saved (into the same scheduler's brackets)."""
    internals.set_rung_state(scheduler, state)
    if "order" in state and isinstance(scheduler, OrderedASHA):
        scheduler.created.clear()
        scheduler.created.update(state["order"])


class RungsKept(Callback):
    """A Tune callback that saves ``scheduler``'s rungs (an ``ASHAScheduler`` or
    :class:`OrderedASHA`) with every experiment checkpoint and restores them on resume. Pass
    the same scheduler object to the Tuner: Tune pickles the Tuner's config and callbacks
    together, so the restored callback still holds the restored scheduler."""

    def __init__(self, scheduler: ASHAScheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return rung_state(self.scheduler)

    def set_state(self, state: dict) -> None:
        set_rung_state(self.scheduler, state)
