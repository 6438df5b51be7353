"""The experiment view a sweep publishes for the MLflow UI (read back from a real store)."""

from __future__ import annotations

import json

from orchestrator import names, views


def test_the_view_ranks_trials_by_the_selection_metric_and_opens_on_it(tmp_path):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    views.publish(c, exp, ["stage2.lr", "stage2.eps"])
    view = json.loads(c.get_experiment(exp).tags["mlflow.sharedViewState.ot-trials"])
    assert view["searchFilter"] == "tags.`ot.kind` = 'trial'"
    assert view["orderByKey"] == "metrics.`selected_val_balanced_acc`"
    assert view["orderByAsc"] is False
    assert view["selectedColumns"][:2] == [
        "metrics.`selected_val_balanced_acc`",
        "metrics.`selected_test_balanced_acc`",
    ]
    assert view["selectedColumns"][-2:] == ["params.`stage2.lr`", "params.`stage2.eps`"]
    first, second, *summaries = view["compareRunSections"]
    assert (first["name"], second["name"]) == ("Selection (validation)", "Per-epoch curves")
    # then the summaries' sections (charts filled in by MLflow): validation-selected first,
    # the numbers selected on the test set last
    assert [s["name"] for s in summaries] == [
        names.summary_group(s).rstrip("/")
        for s in ("validation_selected", "last_epoch", "best_test_epoch")
    ]
    assert not [
        ch
        for ch in view["compareRunCharts"]
        if ch["metricSectionId"] in {s["uuid"] for s in summaries}
    ]
    charts = view["compareRunCharts"]
    assert charts[0]["type"] == "PARALLEL" and charts[0]["metricSectionId"] == first["uuid"]
    assert charts[0]["selectedParams"] == ["stage2.lr", "stage2.eps"]
    assert charts[0]["selectedMetrics"] == [names.SELECT_METRIC]
    curves = [ch["metricKey"] for ch in charts if ch["metricSectionId"] == second["uuid"]]
    assert curves == ["val_balanced_acc", "test_balanced_acc", "train_loss", "ot_loss"]
    # the same space publishes the same bytes (stable ids); another space replaces it
    before = c.get_experiment(exp).tags[views.VIEW_TAG]
    views.publish(c, exp, ["stage2.lr", "stage2.eps"])
    assert c.get_experiment(exp).tags[views.VIEW_TAG] == before
    views.publish(c, exp, ["stage1.meta_lr"])
    assert "stage1.meta_lr" in c.get_experiment(exp).tags[views.VIEW_TAG]


def test_the_view_url_opens_the_runs_page_with_the_share_key():
    assert views.view_url("http://h:5000/", "7") == (
        "http://h:5000/#/experiments/7/runs?viewStateShareKey=ot-trials"
    )
    assert views.view_url("http://h:5000", "7", charts=True).endswith("&compareRunsMode=CHART")


def test_a_runs_summary_sections_sort_validation_first_and_test_selected_last():
    # a run's page orders its metric sections by name (MLflow sorts them as Python does
    # these ASCII names): the validation-selected numbers first, those selected on test last
    order = ("validation_selected", "last_epoch", "best_test_epoch")
    for prefix in ("", names.STAGE1_PREFIX):
        by_name = sorted(names.summary_group(s, prefix) for s in names.SUMMARY_GROUPS)
        assert by_name == [names.summary_group(s, prefix) for s in order]
    # a baseline row carries both stages' summaries: the test-selected ones still come last
    both = sorted(names.summary_group(s, p) for s in order for p in ("", names.STAGE1_PREFIX))
    assert set(both[-2:]) == {names.summary_group("best_test_epoch", p) for p in ("", "stage1_")}
