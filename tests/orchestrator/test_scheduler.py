"""OrderedASHA: ASHA's decisions, made in the trials' order whatever order their results
arrive in. The oracles: Tune's own ASHAScheduler with the trials run one after another (lag 1),
and ASHA's rule written out here for a trial compared with those ``lag`` or more before it."""

from __future__ import annotations

import random

import numpy as np
import pytest

EPOCHS, GRACE, RF = 10, 2, 3  # rungs at epochs 2 and 6, as a 10-epoch sweep's


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.status = "PENDING"


def _scheduler(ordered: bool, lag: int = 1):
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.scheduler import OrderedASHA

    kw = dict(
        time_attr="epoch", metric="score", mode="max", max_t=EPOCHS, grace_period=GRACE,
        reduction_factor=RF,
    )  # fmt: skip
    return OrderedASHA(lag=lag, **kw) if ordered else ASHAScheduler(**kw)


def _sequential(scores: list[list[float]]) -> list[int]:
    """Tune's ASHA, each trial run to its end before the next starts: the epoch each ends at."""
    from ray.tune.schedulers import TrialScheduler

    sched, ends = _scheduler(False), []
    for i, row in enumerate(scores):
        trial = _Trial(f"t{i}")
        sched.on_trial_add(None, trial)
        trial.status = "RUNNING"
        for epoch, value in enumerate(row, start=1):
            result = {"epoch": epoch, "score": value}
            if sched.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                sched.on_trial_complete(None, trial, result)
                break
        ends.append(epoch)
    return ends


def _sequential_lagged(scores: list[list[float]], lag: int) -> list[int]:
    """ASHA's rule by hand, each trial run to its end before the next: at each rung (epochs 2
    and 6), stop a trial whose score is below the 2/3 quantile of the scores recorded there by
    the trials ``lag`` or more before it (none recorded: it continues)."""
    rungs = [GRACE * RF**k for k in range(10) if GRACE * RF**k < EPOCHS]
    recorded: dict[int, list[tuple[int, float]]] = {r: [] for r in rungs}
    ends = []
    for i, row in enumerate(scores):
        end = EPOCHS
        for r in rungs:
            value = row[r - 1]
            earlier = [v for j, v in recorded[r] if j <= i - lag]
            recorded[r].append((i, value))
            if earlier and value < np.nanpercentile(earlier, (1 - 1 / RF) * 100):
                end = r
                break
        ends.append(end)
    return ends


class _Controller:
    """What OrderedASHA calls on Tune's controller, and the trials' life as Tune runs them:
    at most ``concurrency`` running, results from a random running trial not held."""

    def __init__(self, sched, scores, concurrency: int, rng: random.Random) -> None:
        self.sched, self.scores, self.conc, self.rng = sched, scores, concurrency, rng
        self.trials: list[_Trial] = []
        self.next_epoch: dict[str, int] = {}
        self.held: set[str] = set()
        self.ends: dict[str, int] = {}
        self.resumed = self.stopped = self.held_count = 0
        self._trial_to_actor: dict = {}  # Tune's: a trial's actor, from its request on
        self._actor_manager = self
        self.started: set = set()  # the actors that hold their resources

    def is_actor_started(self, actor) -> bool:  # the actor manager's
        return actor in self.started

    def stop_trial(self, trial: _Trial) -> None:  # Tune's: the scheduler hears the end
        self.stopped += 1
        self._end(trial)

    def _schedule_trial_train(self, trial: _Trial) -> None:
        assert trial.trial_id in self.held and trial.status == "RUNNING"
        self.resumed += 1
        self.held.discard(trial.trial_id)

    def _end(self, trial: _Trial) -> None:
        epoch = self.next_epoch[trial.trial_id] - 1
        result = {"epoch": epoch, "score": self._score(trial, epoch)}
        self.sched.on_trial_complete(self, trial, result)
        trial.status = "TERMINATED"
        self.held.discard(trial.trial_id)
        self.ends[trial.trial_id] = epoch

    def _score(self, trial: _Trial, epoch: int) -> float:
        return self.scores[int(trial.trial_id[1:])][epoch - 1]

    def run(self, until: int | None = None) -> list[int]:
        """Run to the end (or until ``until`` trials have ended); the epoch each trial ended."""
        from ray.tune.schedulers import TrialScheduler

        while len(self.ends) < (until or len(self.scores)):
            live = [t for t in self.trials if t.status == "RUNNING"]
            if len(live) < self.conc and len(self.trials) < len(self.scores):
                trial = _Trial(f"t{len(self.trials)}")
                self.trials.append(trial)
                self.sched.on_trial_add(self, trial)
                trial.status, self.next_epoch[trial.trial_id] = "RUNNING", 1
                continue
            ready = [t for t in live if t.trial_id not in self.held]
            assert ready, "every running trial is held: the scheduler deadlocked"
            trial = self.rng.choice(ready)
            epoch = self.next_epoch[trial.trial_id]
            self.next_epoch[trial.trial_id] = epoch + 1
            result = {"epoch": epoch, "score": self._score(trial, epoch)}
            decision = self.sched.on_trial_result(self, trial, result)
            if decision == TrialScheduler.STOP:
                self._end(trial)
            elif decision == TrialScheduler.NOOP:
                self.held.add(trial.trial_id)
                self.held_count += 1
        if until:
            return []
        return [self.ends[f"t{i}"] for i in range(len(self.scores))]

    def resumed_by(self, sched) -> _Controller:
        """What Tune's restore does after a kill: the trials created so far re-added to
        ``sched`` most recent first, the ended ones as ended, the others to run again from
        their first epoch."""
        ctl = _Controller(sched, self.scores, self.conc, self.rng)
        ctl.trials = [_Trial(t.trial_id) for t in self.trials]
        ctl.ends = dict(self.ends)
        for trial in reversed(ctl.trials):
            ended = trial.trial_id in ctl.ends
            trial.status = "TERMINATED" if ended else "PENDING"
            sched.on_trial_add(ctl, trial)
            if not ended:
                trial.status, ctl.next_epoch[trial.trial_id] = "RUNNING", 1
        return ctl


@pytest.mark.parametrize("concurrency", [2, 3, 8])
def test_decisions_are_those_of_the_trials_run_one_after_another_in_any_interleaving(
    concurrency,
):
    rng = random.Random(concurrency)
    held = stopped = 0
    for case in range(40):
        n = rng.randint(2, 12)
        gen = np.random.default_rng(case)
        scores = gen.normal(size=(n, EPOCHS)).round(1).tolist()  # rounded: ties happen too
        expected = _sequential(scores)
        stopped += sum(e < EPOCHS for e in expected)
        for _ in range(5):
            ctl = _Controller(_scheduler(True), scores, concurrency, rng)
            assert ctl.run() == expected, (case, scores)
            held += ctl.resumed + ctl.stopped
    # trials were stopped early, and held at rungs (else this would not test the order)
    assert stopped > 40 and held > 40


def test_the_rule_written_out_is_tunes_asha_at_lag_one():
    gen = np.random.default_rng(7)
    for n in (2, 5, 12, 30):
        scores = gen.normal(size=(n, EPOCHS)).round(1).tolist()
        assert _sequential_lagged(scores, 1) == _sequential(scores)


@pytest.mark.parametrize("lag", [2, 4, 6])
@pytest.mark.parametrize("concurrency", [2, 3])
def test_with_a_lag_each_trial_is_compared_with_those_lag_or_more_before_it(concurrency, lag):
    rng = random.Random(100 * lag + concurrency)
    stopped = differs = 0
    for case in range(30):
        n = rng.randint(lag + 2, 14)
        scores = np.random.default_rng(case).normal(size=(n, EPOCHS)).round(1).tolist()
        expected = _sequential_lagged(scores, lag)
        stopped += sum(e < EPOCHS for e in expected)
        differs += expected != _sequential(scores)
        for _ in range(4):
            ctl = _Controller(_scheduler(True, lag), scores, concurrency, rng)
            assert ctl.run() == expected, (case, scores)
    # the lag changes decisions (else this would test lag 1 again), trials stop early
    assert stopped > 30 and differs > 5


def test_a_lag_of_twice_the_concurrency_waits_far_less_than_one():
    """With a random running trial reporting next, lag 1 holds many reports (35 in these 30
    sweeps); twice the concurrency few (none here)."""
    holds = {}
    for lag in (1, 4):
        rng, count = random.Random(3), 0
        for case in range(30):
            scores = np.random.default_rng(case).normal(size=(12, EPOCHS)).tolist()
            ctl = _Controller(_scheduler(True, lag), scores, 2, rng)
            ctl.run()
            count += ctl.held_count
        holds[lag] = count
    assert holds[4] * 4 < holds[1], holds


@pytest.mark.parametrize("lag", [1, 4])
def test_rungs_kept_across_a_resume_decide_as_the_uninterrupted_run(lag):
    """Killed when some trials have ended, restored into the scheduler as Tune pickled it at
    the start (rungs empty) with RungsKept's saved state (pickled, as Tune saves it): the same
    decisions as without the kill. Without the saved state they differ."""
    import pickle

    from orchestrator.scheduler import RungsKept

    rng, lost = random.Random(lag), 0
    for case in range(40):
        n = rng.randint(4, 12)
        scores = np.random.default_rng(case).normal(size=(n, EPOCHS)).round(1).tolist()
        expected = _sequential_lagged(scores, lag)
        first = _Controller(_scheduler(True, lag), scores, 2, rng)
        first.run(until=rng.randint(1, n - 2))
        saved = pickle.loads(pickle.dumps(RungsKept(first.sched).get_state()))
        fresh = _scheduler(True, lag)
        RungsKept(fresh).set_state(saved)
        assert first.resumed_by(fresh).run() == expected, (case, scores)
        lost += first.resumed_by(_scheduler(True, lag)).run() != expected
    assert lost > 5, lost  # forgetting the rungs does change decisions


def test_rungs_kept_restores_tunes_own_asha_too():
    """Arrival order (Tune's ASHAScheduler), one trial at a time: killed and resumed with the
    rungs kept, it decides as the sequential run."""
    from orchestrator.scheduler import RungsKept

    rng, lost = random.Random(5), 0
    for case in range(30):
        scores = np.random.default_rng(case).normal(size=(8, EPOCHS)).round(1).tolist()
        first = _Controller(_scheduler(False), scores, 1, rng)
        first.run(until=4)
        fresh = _scheduler(False)
        RungsKept(fresh).set_state(RungsKept(first.sched).get_state())
        assert first.resumed_by(fresh).run() == _sequential(scores)
        lost += first.resumed_by(_scheduler(False)).run() != _sequential(scores)
    assert lost > 5, lost


def test_rungs_of_another_scheduler_are_refused():
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.scheduler import RungsKept

    state = RungsKept(_scheduler(True)).get_state()
    other = ASHAScheduler(time_attr="epoch", max_t=30, grace_period=1, reduction_factor=3)
    with pytest.raises(ValueError, match="different milestones"):
        RungsKept(other).set_state(state)


def test_a_trial_is_decided_without_waiting_only_when_no_pending_value_can_change_it():
    """``_undecided`` against every outcome of the pending trials (each records one of a grid
    of values, NaN, or nothing): where it says decided, ASHA's rule gives one decision over
    all of them; it does say decided for most rewards far from the known values."""
    import itertools
    import warnings

    from ray.tune.schedulers.async_hyperband import _Bracket

    from orchestrator.scheduler import _undecided

    cutoff = _Bracket(1, 10, RF, 0).cutoff
    rng = np.random.default_rng(0)
    grid = [None, float("nan"), -3.0, -0.5, 0.0, 0.2, 1.0, 3.0]
    decided = 0
    for _ in range(300):
        known = rng.normal(size=rng.integers(0, 6)).round(1).tolist()
        pending = int(rng.integers(1, 3))
        reward = float(rng.normal() * 1.5)
        decisions = set()
        for extra in itertools.product(grid, repeat=pending):
            values = known + [v for v in extra if v is not None]
            with warnings.catch_warnings():  # numpy on all-NaN values: ASHA then continues
                warnings.simplefilter("ignore", RuntimeWarning)
                c = cutoff({i: v for i, v in enumerate(values)})
            decisions.add(bool(c is not None and c == c and reward < c))
        if not _undecided(cutoff, known, pending, reward):
            decided += 1
            assert len(decisions) == 1, (known, pending, reward)
    assert decided > 100, decided


@pytest.mark.parametrize(("value", "decision"), [(0.9, "CONTINUE"), (0.05, "STOP"), (0.45, "NOOP")])
def test_a_value_far_from_the_others_is_decided_at_once(value, decision):
    """Six earlier trials recorded at the rung (0.1 .. 0.6), a seventh still short of it: a
    value above or below anything it could change the cutoff to is decided at once; one in
    between waits for it."""
    from ray.tune.schedulers import TrialScheduler

    sched = _scheduler(True)
    trials = [_Trial(f"t{i}") for i in range(8)]
    for t in trials:
        sched.on_trial_add(None, t)
        t.status = "RUNNING"
    for i, t in enumerate(trials[:6]):
        for epoch in (1, GRACE):
            r = sched.on_trial_result(None, t, {"epoch": epoch, "score": 0.1 * (i + 1)})
        assert r in (TrialScheduler.CONTINUE, TrialScheduler.STOP)
        t.status = "RUNNING" if r == TrialScheduler.CONTINUE else "TERMINATED"
    sched.on_trial_result(None, trials[6], {"epoch": 1, "score": 0.5})
    sched.on_trial_result(None, trials[7], {"epoch": 1, "score": value})
    got = sched.on_trial_result(None, trials[7], {"epoch": GRACE, "score": value})
    assert got == getattr(TrialScheduler, decision)


def test_tunes_asha_itself_decides_by_arrival_order():
    """Why the order matters: the worse trial 1, reaching the first rung before trial 0,
    survives it with Tune's ASHA (nothing recorded there yet); run in order, it stops there."""
    from ray.tune.schedulers import TrialScheduler

    scores = [[0.9] * EPOCHS, [0.1] * EPOCHS]
    assert _sequential(scores) == [EPOCHS, GRACE]

    for ordered in (False, True):
        sched = _scheduler(ordered)
        ctl = _Controller(sched, scores, 2, random.Random(0))
        t0, t1 = _Trial("t0"), _Trial("t1")
        for t in (t0, t1):
            ctl.trials.append(t)
            sched.on_trial_add(ctl, t)
            t.status, ctl.next_epoch[t.trial_id] = "RUNNING", 1
        # trial 1 runs to the rung first, then trial 0
        decisions = {}
        for t in (t1, t0):
            for epoch in range(1, GRACE + 1):
                ctl.next_epoch[t.trial_id] = epoch + 1
                decisions[t.trial_id] = d = sched.on_trial_result(
                    ctl, t, {"epoch": epoch, "score": scores[int(t.trial_id[1:])][epoch - 1]}
                )
            if d == TrialScheduler.STOP:
                ctl._end(t)
            elif d == TrialScheduler.NOOP:
                ctl.held.add(t.trial_id)
        if ordered:
            # trial 1 was held at the rung, then stopped once trial 0 was recorded there
            assert decisions == {"t1": TrialScheduler.NOOP, "t0": TrialScheduler.CONTINUE}
            assert ctl.stopped == 1 and ctl.ends == {"t1": GRACE}
        else:
            assert decisions == {"t1": TrialScheduler.CONTINUE, "t0": TrialScheduler.CONTINUE}
            assert ctl.ends == {}


def _two_trials() -> tuple:
    """(OrderedASHA, a controller, trial t0 scoring 0.5, trial t1 scoring 0.4): both added
    in that order, PENDING."""
    sched = _scheduler(True)
    ctl = _Controller(sched, [[0.5] * EPOCHS, [0.4] * EPOCHS], 2, random.Random(0))
    t0, t1 = _Trial("t0"), _Trial("t1")
    for t in (t0, t1):
        ctl.trials.append(t)
        sched.on_trial_add(ctl, t)
    return sched, ctl, t0, t1


def test_a_failed_earlier_trial_is_not_waited_for():
    """A trial held for an earlier one is decided when that one fails (it may be retried, and
    could not start while the held trials keep its resources)."""
    from ray.tune.schedulers import TrialScheduler

    sched, ctl, t0, t1 = _two_trials()
    for t in (t0, t1):
        t.status, ctl.next_epoch[t.trial_id] = "RUNNING", 1
    assert sched.on_trial_result(ctl, t0, {"epoch": 1, "score": 0.5}) == TrialScheduler.CONTINUE
    for epoch in (1, 2):
        ctl.next_epoch["t1"] = epoch + 1
        d = sched.on_trial_result(ctl, t1, {"epoch": epoch, "score": 0.4})
    assert d == TrialScheduler.NOOP
    ctl.held.add("t1")
    sched.on_trial_error(ctl, t0)  # Tune: the trial still reads RUNNING here
    assert ctl.resumed == 1 and "t1" not in ctl.held  # decided: first at the rung, continues
    # the retry is added again and runs from its start; later trials wait for it again
    t0.status = "PENDING"
    sched.on_trial_add(ctl, t0)
    t0.status = "RUNNING"
    assert sched._waits(ctl, "t1", 6, 0.4) and not sched._waits(ctl, "t0", 2, 0.5)


@pytest.mark.parametrize("starting", [True, False])
def test_an_earlier_trial_still_starting_is_waited_for_but_not_one_without_resources(starting):
    """Tune calls a trial PENDING while its actor boots (its resources held: it will report)
    and while it waits for resources (which held trials may keep: waiting for it could
    deadlock). A later trial at a rung waits for the first kind only, and is then decided
    as in the sequential run (stopped: 0.4 against trial 0's 0.5)."""
    from ray.tune.schedulers import TrialScheduler

    sched, ctl, t0, t1 = _two_trials()
    t1.status, ctl.next_epoch["t1"] = "RUNNING", 3  # t0 still PENDING
    ctl._trial_to_actor[t0] = "actor of t0"
    if starting:
        ctl.started.add("actor of t0")
    sched.on_trial_result(ctl, t1, {"epoch": 1, "score": 0.4})
    d = sched.on_trial_result(ctl, t1, {"epoch": GRACE, "score": 0.4})
    if not starting:
        assert d == TrialScheduler.CONTINUE and ctl.stopped == 0  # decided alone
        return
    assert d == TrialScheduler.NOOP
    ctl.held.add("t1")
    t0.status, ctl.next_epoch["t0"] = "RUNNING", 3
    for epoch in (1, GRACE):
        assert sched.on_trial_result(ctl, t0, {"epoch": epoch, "score": 0.5}) == "CONTINUE"
    assert ctl.stopped == 1 and ctl.ends == {"t1": GRACE}


_TUNE_RUN = """
import json, sys, time
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from orchestrator.scheduler import OrderedASHA

scores, slow, epochs, grace, rf, storage = json.loads(sys.argv[1])

def trainable(config):
    i = config["i"]
    for epoch in range(1, epochs + 1):
        time.sleep(3.0 if (i in slow and epoch == 1) else 0.05)
        tune.report({"epoch": epoch, "score": scores[i][epoch - 1]})

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
out = {}
for name, cls in (("tune", ASHAScheduler), ("ordered", OrderedASHA)):
    sched = cls(time_attr="epoch", max_t=epochs, grace_period=grace, reduction_factor=rf)
    grid = tune.Tuner(
        trainable,
        param_space={"i": tune.grid_search(list(range(len(scores))))},
        tune_config=tune.TuneConfig(
            metric="score", mode="max", scheduler=sched, max_concurrent_trials=2
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
    ).fit()
    ends = {r.config["i"]: r.metrics["epoch"] for r in grid}
    out[name] = [ends[i] for i in range(len(scores))]
print("ENDS " + json.dumps(out))
"""


@pytest.mark.slow
def test_in_a_real_tuner_a_held_trial_is_resumed_or_stopped_as_in_the_sequential_run(
    tmp_path, repo
):
    """Real Tune, two trials at once: the first trial of each pair is slow to its first epoch,
    so the second reaches the rung first. Tune's ASHA lets the worse second trials through;
    OrderedASHA holds them and decides as the sequential run does (stopping some, resuming
    the others through the controller)."""
    import json
    import subprocess
    import sys

    scores = [[0.9] * EPOCHS, [0.1] * EPOCHS, [0.5] * EPOCHS, [0.95] * EPOCHS]
    scores += [[0.2] * EPOCHS, [0.3] * EPOCHS]
    expected = _sequential(scores)
    assert expected == [EPOCHS, GRACE, GRACE, EPOCHS, GRACE, GRACE]
    arg = json.dumps([scores, [0, 2, 4], EPOCHS, GRACE, RF, str(tmp_path)])
    proc = subprocess.run(
        [sys.executable, "-c", _TUNE_RUN, arg],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ENDS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    ends = json.loads(lines[-1][5:])
    assert ends["ordered"] == expected
    assert ends["tune"] != expected  # the timing did change Tune's own ASHA decisions
    assert "restricted" not in proc.stderr


def test_a_ray_outside_the_tested_range_is_refused_in_one_line():
    from orchestrator import ray_internals

    ray_internals.check_ray_version()  # the installed one (the lock file's)
    ray_internals.check_ray_version("2.60.7")
    for other in ("2.59.0", "2.61.0", "3.0.0"):
        with pytest.raises(
            RuntimeError, match=rf"^Ray {other} is installed; .* tested with Ray 2\.60\.x"
        ):
            ray_internals.check_ray_version(other)
