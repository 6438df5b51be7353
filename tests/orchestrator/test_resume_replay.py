"""A trial restarted after its MLflow run finished (the sweep's driver died before the
experiment state Tune restores recorded the trial's end) reports its epochs again from MLflow,
so ASHA's rungs get the values the trial gave them the first time."""

from __future__ import annotations

EPOCHS = 4  # the sweep's ASHA on 4 epochs: rungs at epochs 1 and 3
VALS = [53.0, 52.0, 55.5, 57.0]  # the selection improves at the last epoch


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.status = "RUNNING"


def _finished_trial(sweep_context) -> tuple:
    """A trial that reported ``VALS`` and closed its run; (what it reported, the client, the
    same trial restarted)."""
    from orchestrator.trainable import TrialTracker

    ctx, c = sweep_context
    first = TrialTracker(ctx, ctx.base, "t0", "trial_0")
    reported = [
        first.epoch({"val_balanced_acc": v, "test_balanced_acc": v - 5}, e)
        for e, v in enumerate(VALS)
    ]
    first.finish({"last_epoch": {"epoch": EPOCHS - 1}})
    return reported, c, TrialTracker(ctx, ctx.base, "t0", "trial_0")


def test_a_restarted_finished_trial_reports_each_epoch_as_it_did(sweep_context):
    from orchestrator import names
    from orchestrator.trainable import replayed_reports

    reported, c, again = _finished_trial(sweep_context)
    assert again.finished_run is not None  # not trained again
    keys = (names.SELECT_METRIC, names.SELECTED_TEST, names.SELECTED_EPOCH, names.TIME_ATTR)
    want = [{k: out[k] for k in keys} for out in reported]
    assert replayed_reports(c, again.finished_run) == want
    assert [r[names.SELECT_METRIC] for r in want] == [53.0, 53.0, 55.5, 57.0]


def _rungs(reports: list[dict]) -> list:
    """ASHA's rungs (as the sweep keeps them) after one trial made ``reports`` and ended."""
    from orchestrator import names
    from orchestrator.scheduler import OrderedASHA, RungsKept

    sched = OrderedASHA(
        lag=1, time_attr=names.TIME_ATTR, metric=names.SELECT_METRIC, mode="max",
        max_t=EPOCHS, grace_period=1, reduction_factor=3,
    )  # fmt: skip
    trial = _Trial("t0")
    sched.on_trial_add(None, trial)
    for result in reports:
        sched.on_trial_result(None, trial, result)
    sched.on_trial_complete(None, trial, reports[-1])
    return RungsKept(sched).get_state()["rungs"]


def test_the_replayed_epochs_give_asha_the_rungs_the_trial_gave_it(sweep_context):
    """Replayed, the trial is recorded at both rungs with the values it had there; its final
    result alone (what a restarted finished trial reported before) is recorded at the
    highest rung only, with the last epoch's value, and not at the first."""
    from orchestrator.trainable import replayed_reports

    reported, c, again = _finished_trial(sweep_context)
    first_time = _rungs(reported)
    assert first_time == [[[3, {"t0": 55.5}], [1, {"t0": 53.0}]]]
    assert _rungs(replayed_reports(c, again.finished_run)) == first_time
    assert _rungs(reported[-1:]) == [[[3, {"t0": 57.0}], [1, {}]]]
