"""OrderedASHA: ASHA's decisions, made in the trials' order whatever order their results
arrive in. The oracle is Tune's own ASHAScheduler with the trials run one after another."""

from __future__ import annotations

import random

import numpy as np
import pytest

EPOCHS, GRACE, RF = 10, 2, 3  # rungs at epochs 2 and 6, as a 10-epoch sweep's


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.status = "PENDING"


def _scheduler(ordered: bool):
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.scheduler import OrderedASHA

    kw = dict(
        time_attr="epoch", metric="score", mode="max", max_t=EPOCHS, grace_period=GRACE,
        reduction_factor=RF,
    )  # fmt: skip
    return OrderedASHA(**kw) if ordered else ASHAScheduler(**kw)


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


class _Controller:
    """What OrderedASHA calls on Tune's controller, and the trials' life as Tune runs them:
    at most ``concurrency`` running, results from a random running trial not held."""

    def __init__(self, sched, scores, concurrency: int, rng: random.Random) -> None:
        self.sched, self.scores, self.conc, self.rng = sched, scores, concurrency, rng
        self.trials: list[_Trial] = []
        self.next_epoch: dict[str, int] = {}
        self.held: set[str] = set()
        self.ends: dict[str, int] = {}
        self.resumed = self.stopped = 0

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

    def run(self) -> list[int]:
        from ray.tune.schedulers import TrialScheduler

        while len(self.ends) < len(self.scores):
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
        return [self.ends[f"t{i}"] for i in range(len(self.scores))]


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


def test_a_failed_earlier_trial_is_not_waited_for():
    """A trial held for an earlier one is decided when that one fails (it may be retried, and
    could not start while the held trials keep its resources)."""
    from ray.tune.schedulers import TrialScheduler

    sched = _scheduler(True)
    ctl = _Controller(sched, [[0.5] * EPOCHS, [0.4] * EPOCHS], 2, random.Random(0))
    t0, t1 = _Trial("t0"), _Trial("t1")
    for t in (t0, t1):
        ctl.trials.append(t)
        sched.on_trial_add(ctl, t)
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
    assert sched._waits("t1", 6) and not sched._waits("t0", 2)


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
