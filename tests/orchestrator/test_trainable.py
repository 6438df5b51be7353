"""What a trial logs: its summary flattened into MLflow metric names, the selection rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.stages import flat_summary as _flat_summary
from trainables.loop import improves


def test_summary_flattens_to_selection_split_metric_names():
    summary = {
        "last_epoch": {"epoch": 4, "val": {"balanced_acc": 50.0, "confusion": [[1]]}},
        "validation_selected": {
            "epoch": 2,
            "val": {"balanced_acc": 60.0, "top1_error": None},
            "test": {"balanced_acc": 55.5},
        },
        "best_test_epoch (selection on test, as the released code reports)": {
            "epoch": 3,
            "test": {"balanced_acc": 57.0},
        },
    }
    assert _flat_summary(summary, "stage1_") == {
        "stage1_last_epoch/val_balanced_acc": 50.0,
        "stage1_last_epoch/epoch": 4,
        "stage1_best_val_epoch/val_balanced_acc": 60.0,
        "stage1_best_val_epoch/test_balanced_acc": 55.5,
        "stage1_best_val_epoch/epoch": 2,
        "stage1_test_selected_epoch/test_balanced_acc": 57.0,
        "stage1_test_selected_epoch/epoch": 3,
    }


def test_selection_is_strictly_better_validation():
    assert improves(60.0, 59.9) and not improves(60.0, 60.0) and not improves(50.0, 60.0)
    assert improves(0.0, -1.0)  # the first epoch is always selected


def test_summary_counts_epochs_from_one_as_the_mlflow_steps_do():
    from trainables.loop import StageResult
    from trainables.trial import scalar_summary

    val = {"balanced_acc": 61.0, "confusion": [[1]]}
    res = StageResult(
        last={"epoch": 4, "val": val},
        selected={"epoch": 0, "val": val},
        best_test_epoch={"epoch": 2, "test": {"balanced_acc": 58.0}},
    )
    flat = _flat_summary(scalar_summary(res))
    assert flat["last_epoch/epoch"] == 5  # the fifth epoch, logged at step 5
    assert flat["best_val_epoch/epoch"] == 1
    assert flat["test_selected_epoch/epoch"] == 3
    assert flat["best_val_epoch/val_balanced_acc"] == 61.0


def _artifacts(c, run_id):
    return {a.path for a in c.list_artifacts(run_id)}


def test_selections_go_up_as_data_and_the_figures_are_drawn_once_from_the_last(
    tmp_path, tracker, monkeypatch, stage_result
):
    """An improvement uploads the selection's data (a run killed without notice keeps it);
    the PNGs, most of an upload's time, are drawn once, from the last selection, by
    ``orchestrator.figures`` for a run the scheduler stopped."""
    import json
    from types import SimpleNamespace

    from orchestrator import artifacts, figures, names
    from orchestrator.sweep_results import FinishStopped as _FinishStopped

    drawn = []
    real = artifacts.write_confusion_png
    monkeypatch.setattr(
        artifacts,
        "write_confusion_png",
        lambda *a, **kw: drawn.append(kw["title"]) or real(*a, **kw),
    )
    tracker, c = tracker
    tracker.start({})
    for epoch in (0, 2):
        res, data = stage_result(epoch)
        tracker.upload_progress(res, data)
    assert drawn == []
    up = _artifacts(c, tracker.run_id)
    assert {"confusion.json", "per_class_acc.csv", "weight_mass.json"} <= up
    assert not {"confusion_matrix.png", "learned_weights.png"} & up
    # Tune stopped the trial at a report: its summary goes up, nothing is drawn (the process
    # may exit at any moment) and the run stays open for the driver
    tracker.at_stop()
    assert drawn == []
    run = c.get_run(tracker.run_id)
    assert run.info.status == "RUNNING" and run.data.tags[names.FIGURES] == "pending"
    assert run.data.metrics["best_val_epoch/epoch"] == 3  # the summary of epochs 1-3
    assert "result.json" in _artifacts(c, tracker.run_id)
    assert not {"confusion_matrix.png", "learned_weights.png"} & _artifacts(c, tracker.run_id)
    # the scheduler stopped it: the driver's callback closes it, drawing nothing; the
    # figures come from its data later (the sweep's end for its best, or the command)
    finisher = _FinishStopped(tracker.ctx.tracking, tracker.ctx.parent_run_id)
    finisher.on_trial_complete(0, [], SimpleNamespace(trial_id="t0", config={}))
    assert drawn == []
    assert figures.main([tracker.run_id, "--tracking-uri", tracker.ctx.tracking.uri]) == 0
    assert drawn == ["image_mnist_lt: test, validation-selected epoch 3"]
    up = _artifacts(c, tracker.run_id)
    assert {"confusion_matrix.png", "learned_weights.png"} <= up
    run = c.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["ot.stopped_early"] == "true"
    local = c.download_artifacts(tracker.run_id, "weight_mass.json", str(tmp_path))
    # the figures and their data: epochs 1-3
    assert len(json.loads(Path(local).read_text())["softmax_mass"]) == 3


def test_a_buffered_tracker_sends_its_epochs_in_one_batch_with_their_own_steps(
    tmp_path, tracker, monkeypatch, stage_result
):
    """A population member's tracker keeps its epochs until a flush (or an upload, a summary,
    the run's end): then they go up in one MLflow write, each at its own step with its own
    values and time, as the unbuffered tracker writes them one by one."""
    from mlflow.tracking import MlflowClient

    from orchestrator.trainable import TrialTracker

    plain, c = tracker
    member = TrialTracker(plain.ctx, plain.cfg, "t1", "trial_1", buffered=True)
    writes = []
    real = MlflowClient.log_batch
    monkeypatch.setattr(
        MlflowClient, "log_batch", lambda self, run_id, **kw: writes.append(run_id) or real(
            self, run_id, **kw
        )
    )  # fmt: skip
    vals = [55.0, 61.5, 58.0]
    for epoch, v in enumerate(vals):
        for t in (plain, member):
            t.epoch({"val_balanced_acc": v, "test_balanced_acc": v - 5}, epoch)
    assert writes.count(plain.run_id) == 3 and writes.count(member.run_id) == 0
    assert c.get_metric_history(member.run_id, "val_balanced_acc") == []
    member.flush()
    assert writes.count(member.run_id) == 1
    for key in ("val_balanced_acc", "selected_val_balanced_acc", "selected_epoch"):
        got = [(h.step, h.value) for h in c.get_metric_history(member.run_id, key)]
        want = [(h.step, h.value) for h in c.get_metric_history(plain.run_id, key)]
        assert got == want and [s for s, _ in got] == [1, 2, 3], key
    assert [h.value for h in c.get_metric_history(member.run_id, "selected_val_balanced_acc")] == [
        55.0, 61.5, 61.5
    ]  # fmt: skip
    stamps = [h.timestamp for h in c.get_metric_history(member.run_id, "val_balanced_acc")]
    assert stamps == sorted(stamps)  # each epoch's own time, not the flush's
    member.flush()  # nothing left: no write
    assert writes.count(member.run_id) == 1
    member.epoch({"val_balanced_acc": 70.0}, 3)
    member.finish({"last_epoch": {"epoch": 3}})  # the run's end sends what is left
    hist = c.get_metric_history(member.run_id, "val_balanced_acc")
    assert [h.step for h in hist] == [1, 2, 3, 4] and hist[-1].value == 70.0
    assert c.get_run(member.run_id).info.status == "FINISHED"


@pytest.mark.parametrize("stopped", [False, True], ids=["finished", "culled"])
def test_a_member_closing_with_its_upload_writes_what_step_by_step_writes_in_three_calls(
    tracker, monkeypatch, stage_result, stopped
):
    """A population member closes with its final selection, summary and tags in one artifact
    upload, one batch and the run's end; the run holds exactly what the same calls one by one
    (upload, summary, tags, end) leave."""
    import dataclasses
    import json

    from mlflow.tracking import MlflowClient

    from orchestrator.trainable import TrialTracker
    from trainables.trial import scalar_summary

    plain, c = tracker
    ctx = dataclasses.replace(plain.ctx, draw=False)  # as a sweep's trials run
    one_by_one = TrialTracker(ctx, ctx.base, "t1", "trial_1", buffered=True)
    bulk = TrialTracker(ctx, ctx.base, "t2", "trial_2", buffered=True)
    res, data = stage_result(2)
    for t in (one_by_one, bulk):
        t.start({"stage2.eps": 0.1})
        for epoch, v in enumerate([55.0, 61.5, 62.0]):
            t.epoch({"val_balanced_acc": v, "test_balanced_acc": v - 5}, epoch)
    calls = []
    for name in ("log_batch", "log_artifacts", "set_tag", "set_terminated", "log_dict"):
        real = getattr(MlflowClient, name)
        monkeypatch.setattr(
            MlflowClient, name, lambda self, run_id, *a, _f=real, _n=name, **kw: (
                calls.append((run_id, _n)) or _f(self, run_id, *a, **kw)
            )
        )  # fmt: skip
    if stopped:
        one_by_one.upload_selected(res, data)
        one_by_one.stopped_early()
        bulk.stopped_early((res, data))
    else:
        one_by_one.upload_selected(res, data)
        one_by_one.finish(scalar_summary(res))
        bulk.finish(scalar_summary(res), (res, data))
    assert sorted(n for r, n in calls if r == bulk.run_id) == [
        "log_artifacts", "log_batch", "set_terminated"
    ]  # fmt: skip
    assert len([r for r, _ in calls if r == one_by_one.run_id]) > 3
    a, b = c.get_run(one_by_one.run_id), c.get_run(bulk.run_id)
    assert a.info.status == b.info.status == "FINISHED"
    assert a.data.params == b.data.params and a.data.metrics == b.data.metrics
    assert len(a.data.metrics) > 10
    for key in a.data.metrics:
        steps = [(h.step, h.value) for h in c.get_metric_history(a.info.run_id, key)]
        assert steps == [(h.step, h.value) for h in c.get_metric_history(b.info.run_id, key)], key
    run_specific = {"mlflow.runName", "ray.trial_id", "ray.trial_name", "ot.attempt"}
    tags_a = {k: v for k, v in a.data.tags.items() if k not in run_specific}
    assert tags_a == {k: v for k, v in b.data.tags.items() if k not in run_specific}
    assert tags_a["ot.figures"] == "pending"
    assert (tags_a.get("ot.stopped_early") == "true") == stopped
    files_a = {f.path for f in c.list_artifacts(a.info.run_id)}
    assert files_a == {f.path for f in c.list_artifacts(b.info.run_id)}
    assert {"result.json", "config.json", "sampled.json", "confusion.json"} <= files_a
    for name in ("result.json", "config.json", "sampled.json", "weight_mass.json"):
        got = [json.loads(Path(c.download_artifacts(r.info.run_id, name)).read_text())
               for r in (a, b)]  # fmt: skip
        assert got[0] == got[1], name


def test_a_final_upload_draws_its_figures_and_closing_does_not_draw_again(
    tmp_path, tracker, monkeypatch, stage_result
):
    from orchestrator import artifacts
    from trainables.trial import scalar_summary

    drawn = []
    monkeypatch.setattr(artifacts, "write_weight_png", lambda *a, **kw: drawn.append(a[1].name))
    tracker, _ = tracker
    tracker.start({})
    res, data = stage_result(1)
    tracker.upload_progress(res, data)
    tracker.upload_selected(res, data)
    tracker.finish(scalar_summary(res))
    assert drawn == ["learned_weights.png"]


def test_the_rungs_a_trial_draws_before_are_the_sweeps_asha_milestones():
    """A trial draws its figures before the reports at which ASHA may stop it: those epochs
    must be the scheduler's own milestones (those below the last epoch)."""
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.trainable import ASHA_REDUCTION, asha_grace, asha_rungs

    for epochs in (1, 2, 4, 10, 12, 30, 36, 200):
        asha = ASHAScheduler(
            time_attr="t", metric="m", mode="max", max_t=epochs,
            grace_period=asha_grace(epochs), reduction_factor=ASHA_REDUCTION,
        )  # fmt: skip
        milestones = sorted(m for m, _ in asha._brackets[0]._rungs if m < epochs)
        assert list(asha_rungs(epochs)) == milestones, epochs
    assert asha_rungs(10) == (2, 6)


def test_the_driver_draws_a_pending_runs_figures_from_its_uploaded_data(
    tmp_path, tracker, stage_result
):
    """A run whose process ended after uploading its selection's data (``ot.figures=pending``):
    the driver draws its PNGs from that data, byte for byte what the trial would have drawn
    itself, once (a drawn run, or one never pending, is left alone)."""
    from orchestrator import names
    from orchestrator.figures import draw_uploaded_figures
    from orchestrator.trainable import TrialTracker

    drawn_by_trial, c = tracker
    pending = TrialTracker(drawn_by_trial.ctx, drawn_by_trial.cfg, "t1", "trial_1")
    res, data = stage_result(2)
    res.raw_mass = [[1.5, 0.5]] * 3  # the raw-weights row too (stage2.loss_weights=raw)
    res.raw_sample_weights = [0.5, 0.5, 0.5, 1.5]
    for t in (drawn_by_trial, pending):
        t.start({})
    drawn_by_trial.upload_selected(res, data)
    pending.upload_progress(res, data)
    tags = {t: c.get_run(t.run_id).data.tags.get(names.FIGURES) for t in (drawn_by_trial, pending)}
    assert tags == {drawn_by_trial: "drawn", pending: "pending"}
    assert "sample_weights.npz" in _artifacts(c, pending.run_id)
    assert not {"confusion_matrix.png", "learned_weights.png"} & _artifacts(c, pending.run_id)
    assert not draw_uploaded_figures(c, drawn_by_trial.run_id)
    assert draw_uploaded_figures(c, pending.run_id)
    assert c.get_run(pending.run_id).data.tags[names.FIGURES] == "drawn"
    for png in ("confusion_matrix.png", "learned_weights.png"):
        mine = Path(c.download_artifacts(drawn_by_trial.run_id, png, str(tmp_path / "a")))
        theirs = Path(c.download_artifacts(pending.run_id, png, str(tmp_path / "b")))
        assert mine.read_bytes() == theirs.read_bytes(), png
    assert not draw_uploaded_figures(c, pending.run_id)  # drawn once


def test_the_sweeps_callback_closes_a_stopped_trials_run_and_leaves_its_figures_pending(
    tmp_path, tracker, capsys, stage_result
):
    """ASHA stopped a trial and its process ended mid-report: its run is still RUNNING with
    its figures pending. The driver's callback closes it as stopped early, drawing nothing
    (the sweep's end draws its best settings'); another trial's run is left alone."""
    from types import SimpleNamespace

    from orchestrator import names
    from orchestrator.sweep_results import FinishStopped as _FinishStopped
    from orchestrator.trainable import TrialTracker

    stopped, c = tracker
    other = TrialTracker(stopped.ctx, stopped.cfg, "other", "trial_1")
    res, data = stage_result(1)
    for t in (stopped, other):
        t.start({})
        t.upload_progress(res, data)
    ctx = stopped.ctx
    finisher = _FinishStopped(ctx.tracking, ctx.parent_run_id)
    finisher.on_trial_complete(0, [], SimpleNamespace(trial_id="t0", config={}))
    run = c.get_run(stopped.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[names.STOPPED_EARLY] == "true"
    assert run.data.tags[names.FIGURES] == "pending"
    assert "confusion.json" in _artifacts(c, stopped.run_id)
    assert not {"confusion_matrix.png", "learned_weights.png"} & _artifacts(c, stopped.run_id)
    assert c.get_run(other.run_id).info.status == "RUNNING"
    assert "warning" not in capsys.readouterr().err


def test_a_sweep_draws_the_figures_of_its_k_best_settings_and_keeps_the_others_data(
    sweep_context, sweep_trial, capsys
):
    """At its end a sweep draws the PNGs of its k best finished settings (by the selection
    metric), once; the others (and a failed attempt, a run still open) keep the data with
    ``ot.figures=pending`` and no PNG, for the figures command."""
    from orchestrator import names
    from orchestrator.sweep_results import draw_best, ranking

    ctx, c = sweep_context
    vals = [70.0, 90.0, 60.0, 80.0]
    done = [sweep_trial(i, v) for i, v in enumerate(vals)]
    failed = sweep_trial(7, 99.0, close="fail")
    still_open = sweep_trial(8, 98.0, close="open")
    for t in (*done, failed, still_open):
        assert c.get_run(t.run_id).data.tags[names.FIGURES] == "pending"
        assert "confusion_matrix.png" not in _artifacts(c, t.run_id)
    exp = ctx.tracking.experiment_id
    assert draw_best(c, ranking(c, exp, ctx.parent_run_id), 2) == 2
    pngs = {"confusion_matrix.png", "learned_weights.png"}
    best = {done[1].run_id, done[3].run_id}  # val 90 and 80
    for t in (*done, failed, still_open):
        tags, up = c.get_run(t.run_id).data.tags, _artifacts(c, t.run_id)
        if t.run_id in best:
            assert tags[names.FIGURES] == "drawn" and pngs <= up
        else:
            assert tags[names.FIGURES] == "pending" and not pngs & up
            assert {"confusion.json", "weight_mass.json", "sample_weights.npz"} <= up
    assert draw_best(c, ranking(c, exp, ctx.parent_run_id), 2) == 0  # drawn once
    assert draw_best(c, ranking(c, exp, ctx.parent_run_id), 0) == 0
    assert "warning" not in capsys.readouterr().err
