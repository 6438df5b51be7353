"""The compact progress view (orchestrator/progress.py): its lines, and its Tune callback driven
by hand with stand-in trials (no Ray cluster, no sweep)."""

from __future__ import annotations

import argparse
import io
import pickle
from types import SimpleNamespace

import pytest

from orchestrator import cli, names, progress
from orchestrator.progress import Counts, fmt_elapsed, short_settings, status_line, trial_line

VAL, TEST, EPOCH = names.SELECT_METRIC, names.SELECTED_TEST, names.TIME_ATTR
CONFIG = {"stage2.lr": 0.05, "stage2.eps": 0.1, "stage2.max_iter": 100, "stage2.tol": None}


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (45.9, "45s"), (60, "1m00s"), (125, "2m05s"), (3725, "1h02m05s"), (-3, "0s")],
)
def test_fmt_elapsed(seconds, text):
    assert fmt_elapsed(seconds) == text


def test_short_settings():
    assert short_settings(CONFIG) == "lr=0.05 eps=0.1 max_iter=100 tol=None"
    assert short_settings({"stage2.weight_lr": 1.23456e-5}) == "weight_lr=1.23e-05"
    # two keys that would read the same keep their dotted form
    assert short_settings({"stage1.lr": 0.1, "stage2.lr": 0.2, "stage2.eps": 1.0}) == (
        "stage1.lr=0.1 stage2.lr=0.2 eps=1"
    )
    assert short_settings({"run": "mnist/ot|seed0"}) == "run=mnist/ot|seed0"
    # a fraction never reads as a whole number: 0.9999 and 0.999 are distinct settings
    betas = {"a.cb_beta": 0.9999, "b.cb_beta": 0.999, "c": 1.0004, "d": 2.0, "e": float("inf")}
    assert short_settings(betas) == "a.cb_beta=0.9999 b.cb_beta=0.999 c=1.0004 d=2 e=inf"
    assert short_settings({}) == ""


def test_status_line():
    counts = Counts(done=5, running=4, stopped=2, errored=1, total=32)
    assert status_line(counts, (81.234, "6a1b_00003"), 125) == (
        "[2m05s] trials 5/32 done (2 stopped early), 4 running, 1 errored; "
        "best val 81.23 (trial 6a1b_00003)"
    )
    assert status_line(Counts(), None, 3) == (
        "[3s] trials 0 done (0 stopped early), 0 running, 0 errored; best val -"
    )
    # reproduce: each trial is a table cell, so no "best" among them
    assert status_line(counts, (81.234, "6a1b_00003"), 125, best_val=False) == (
        "[2m05s] trials 5/32 done (2 stopped early), 4 running, 1 errored"
    )
    # ... and no scheduler: no early stops to count
    assert status_line(counts, None, 125, best_val=False, early=False) == (
        "[2m05s] trials 5/32 done, 4 running, 1 errored"
    )


def test_trial_line():
    result = {VAL: 81.234, TEST: 79.1, EPOCH: 8, names.SELECTED_EPOCH: 6}
    assert trial_line("6a1b_00003", result, CONFIG, outcome="finished", max_t=8) == (
        "trial 6a1b_00003  finished           val 81.23  test 79.10  "
        "lr=0.05 eps=0.1 max_iter=100 tol=None"
    )
    stopped = {VAL: 60.0, TEST: 58.456, EPOCH: 2}
    assert trial_line("6a1b_00004", stopped, {}, outcome="stopped", max_t=8) == (
        "trial 6a1b_00004  stopped early 2/8  val 60.00  test 58.46"
    )
    assert trial_line("6a1b_00005", {}, {"stage2.eps": 0.5}, outcome="errored") == (
        "trial 6a1b_00005  errored            val -  test -  eps=0.5"
    )
    diverged = {VAL: 10.0, TEST: float("nan"), EPOCH: 8, "diverged": 1}
    assert trial_line("6a1b_00006", diverged, {}, outcome="finished") == (
        "trial 6a1b_00006  diverged           val 10.00  test -"
    )


def test_the_module_doc_example_is_what_trial_line_prints():
    line = trial_line(
        "6a1b_00003", {VAL: 81.23, TEST: 79.1}, {"stage2.eps": 0.1, "stage2.lr": 0.05},
        outcome="finished",
    )  # fmt: skip
    assert f"``{line}``" in progress.trial_line.__doc__


def test_stopped_early():
    assert progress.stopped_early({EPOCH: 2}, 8)
    assert not progress.stopped_early({EPOCH: 8}, 8)
    assert not progress.stopped_early({EPOCH: 2}, None)  # no scheduler
    assert not progress.stopped_early({}, 8)


# ---- the callback, driven by hand


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trial(tid, status="RUNNING", config=None, **result):
    return SimpleNamespace(trial_id=tid, config=config or {}, last_result=result, status=status)


def _callback(*, tty: bool, max_t=8, every=30.0):
    out, clock = io.StringIO(), Clock()
    cb = progress.CompactProgress(
        max_t=max_t, stream=out, clock=clock, plain_every=every, tty_every=1.0, tty=tty,
        columns=200,
    )  # fmt: skip
    cb.setup(stop=None, num_samples=4, total_num_samples=4)
    return cb, out, clock


def _finish(cb, trials, trial, status="TERMINATED", hook="on_trial_complete", **result):
    trial.last_result = result
    getattr(cb, hook)(iteration=1, trials=trials, trial=trial)
    trial.status = status  # Tune sets it after the hook
    cb.on_step_end(iteration=1, trials=trials)


def test_callback_one_line_per_finished_trial_and_counts():
    from ray.tune import Callback

    cb, out, clock = _callback(tty=False)
    assert isinstance(cb, Callback)
    trials = [_trial(f"t{i}", config={"stage2.eps": 0.1 * (i + 1)}) for i in range(4)]
    cb.on_step_end(iteration=0, trials=trials)
    for i, t in enumerate(trials[:3]):
        cb.on_trial_result(iteration=1, trials=trials, trial=t, result={VAL: 50.0 + i, EPOCH: 1})
    assert out.getvalue() == ""  # within the first interval: nothing yet

    _finish(cb, trials, trials[0], **{VAL: 70.0, TEST: 68.0, EPOCH: 8})  # ran to max_t
    _finish(cb, trials, trials[1], **{VAL: 55.5, TEST: 54.0, EPOCH: 2})  # ASHA stopped it
    _finish(cb, trials, trials[2], status="ERROR", hook="on_trial_error", **{VAL: 52.0})
    cb.on_trial_complete(iteration=2, trials=trials, trial=trials[0])  # seen twice: one line
    clock.now += 61
    cb.on_experiment_end(trials=trials)

    assert out.getvalue().splitlines() == [
        "trial t0  finished           val 70.00  test 68.00  eps=0.1",
        "trial t1  stopped early 2/8  val 55.50  test 54.00  eps=0.2",
        "trial t2  errored            val 52.00  test -  eps=0.3",
        "[1m01s] trials 2/4 done (1 stopped early), 1 running, 1 errored; "
        "best val 70.00 (trial t0)",
    ]


def test_callback_without_best_val_as_reproduce_builds_it(capsys):
    args = argparse.Namespace(quiet=False, verbose=0)
    (cb,) = progress.callbacks(args, best_val=False)  # writes to sys.stdout
    cb.setup(stop=None, num_samples=2, total_num_samples=2)
    trials = [_trial("t0"), _trial("t1")]
    _finish(cb, trials, trials[0], **{VAL: 70.0, TEST: 68.0})
    cb.on_experiment_end(trials=trials)
    trial, status = capsys.readouterr().out.splitlines()
    assert trial == "trial t0  finished           val 70.00  test 68.00"
    assert status.endswith("] trials 1/2 done, 1 running, 0 errored")  # no scheduler
    assert pickle.loads(pickle.dumps(cb)).best_val is False  # Tune pickles its callbacks


def test_callback_counts_trials_finished_before_a_resume():
    cb, out, _clock = _callback(tty=False)
    trials = [
        _trial("old0", "TERMINATED", **{VAL: 90.0, EPOCH: 8}),
        _trial("old1", "TERMINATED", **{VAL: 40.0, EPOCH: 2}),
        _trial("old2", "ERROR"),
        _trial("new", "PENDING"),
    ]
    cb.on_step_end(iteration=0, trials=trials)
    cb.on_experiment_end(trials=trials)
    assert out.getvalue() == (
        "[0s] trials 2/4 done (1 stopped early), 0 running, 1 errored; "
        "best val 90.00 (trial old0)\n"
    )


def test_trials_a_stop_signal_ends_read_interrupted_not_stopped_early():
    """Tune's SIGINT handler, installed before its callbacks are set up, puts back the handler
    it replaced when Ctrl-C comes: from then on a trial ending before max_t was interrupted,
    not stopped by ASHA, and it is not counted as done."""
    import signal

    def tunes_handler(sig, frame):  # stands in for Tune's
        pass

    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, tunes_handler)
    try:
        cb, out, clock = _callback(tty=False)
        trials = [_trial(f"t{i}") for i in range(4)]
        _finish(cb, trials, trials[0], **{VAL: 60.0, TEST: 58.0, EPOCH: 2})  # ASHA's stop
        signal.signal(signal.SIGINT, before)  # what Tune's handler does on Ctrl-C
        _finish(cb, trials, trials[1], **{VAL: 61.0, TEST: 59.0, EPOCH: 3})
        _finish(cb, trials, trials[2], **{VAL: 62.0, TEST: 60.0, EPOCH: 8})  # had finished
        trials[3].status, trials[3].last_result = "TERMINATED", {VAL: 50.0, EPOCH: 1}
        clock.now += 61
        cb.on_experiment_end(trials=trials)  # t3 ended unseen by the hooks
    finally:
        signal.signal(signal.SIGINT, before)
    assert out.getvalue().splitlines() == [
        "trial t0  stopped early 2/8  val 60.00  test 58.00",
        "trial t1  interrupted 3/8    val 61.00  test 59.00",
        "trial t2  finished           val 62.00  test 60.00",
        "[1m01s] trials 2/4 done (1 stopped early), 0 running, 0 errored, 2 interrupted; "
        "best val 62.00 (trial t2)",
    ]


def test_plain_status_at_most_every_interval():
    cb, out, clock = _callback(tty=False, every=30.0)
    trials = [_trial("t0")]
    lines = lambda: [ln for ln in out.getvalue().splitlines() if ln.startswith("[")]  # noqa: E731
    for _ in range(116):  # many controller steps within 29 s: no status line yet
        clock.now += 0.25
        cb.on_step_end(iteration=1, trials=trials)
    assert lines() == []
    clock.now += 1.0
    cb.on_step_end(iteration=1, trials=trials)
    assert lines() == ["[30s] trials 0/4 done (0 stopped early), 1 running, 0 errored; best val -"]
    clock.now += 29.0
    cb.on_step_end(iteration=1, trials=trials)
    assert len(lines()) == 1
    clock.now += 1.0
    cb.on_trial_result(iteration=1, trials=trials, trial=trials[0], result={VAL: 12.345})
    cb.on_step_end(iteration=1, trials=trials)
    assert lines()[-1] == (
        "[1m00s] trials 0/4 done (0 stopped early), 1 running, 0 errored; best val 12.35 (trial t0)"
    )
    assert "\r" not in out.getvalue()


def test_tty_status_is_rewritten_in_place():
    cb, out, clock = _callback(tty=True)
    trials = [_trial("t0", config={"stage2.eps": 0.1}), _trial("t1")]
    cb.on_step_end(iteration=0, trials=trials)  # drawn at once
    clock.now += 0.5
    cb.on_step_end(iteration=1, trials=trials)  # within tty_every: not redrawn
    clock.now += 0.5
    cb.on_step_end(iteration=2, trials=trials)
    _finish(cb, trials, trials[0], **{VAL: 70.0, TEST: 68.0, EPOCH: 8})
    cb.on_experiment_end(trials=trials)
    status = "trials {} done (0 stopped early), {} running, 0 errored; best val {}"
    assert out.getvalue() == (
        "\r\x1b[K[0s] " + status.format("0/4", 2, "-")
        + "\r\x1b[K[1s] " + status.format("0/4", 2, "-")
        # the finished trial's line replaces the status line, which is drawn again below it
        + "\r\x1b[Ktrial t0  finished           val 70.00  test 68.00  eps=0.1\n"
        + "\r\x1b[K[1s] " + status.format("1/4", 1, "70.00 (trial t0)")
        + "\r\x1b[K[1s] " + status.format("1/4", 1, "70.00 (trial t0)")
        + "\n"
    )  # fmt: skip


def test_callback_pickles_without_its_stream():
    """Tune pickles the RunConfig (tuner.pkl): the callback must pickle, and starts afresh."""
    cb = progress.CompactProgress(max_t=4)
    cb.on_trial_result(iteration=1, trials=[], trial=_trial("t0"), result={VAL: 1.0})
    again = pickle.loads(pickle.dumps(cb))
    assert type(again) is type(cb) and again.max_t == 4 and again.counts() == Counts()


def _args(*argv: str) -> argparse.Namespace:
    p = cli.Parser(prog="test")
    cli.add_cluster_args(p)
    return p.parse_args(list(argv))


def test_options_choose_the_view():
    default, quiet = _args(), _args("--quiet")
    verbose, very = _args("--verbose"), _args("--verbose", "--verbose")
    assert progress.tune_verbose(default) == 0
    assert [type(c).__name__ for c in progress.callbacks(default, max_t=8)] == ["CompactProgress"]
    assert progress.callbacks(default, max_t=8)[0].max_t == 8
    assert (progress.tune_verbose(quiet), progress.callbacks(quiet)) == (0, [])
    assert (progress.tune_verbose(verbose), progress.callbacks(verbose)) == (1, [])
    assert (progress.tune_verbose(very), progress.callbacks(very)) == (2, [])


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exc:
        _args("--quiet", "--verbose")
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
