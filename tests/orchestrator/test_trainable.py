"""What a trial logs: its summary flattened into MLflow metric names, the selection rule."""

from __future__ import annotations

from orchestrator.tracking import flat_summary as _flat_summary
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
        "stage1_validation_selected/val_balanced_acc": 60.0,
        "stage1_validation_selected/test_balanced_acc": 55.5,
        "stage1_validation_selected/epoch": 2,
        "stage1_best_test_epoch/test_balanced_acc": 57.0,
        "stage1_best_test_epoch/epoch": 3,
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
    assert flat["validation_selected/epoch"] == 1
    assert flat["best_test_epoch/epoch"] == 3
    assert flat["validation_selected/val_balanced_acc"] == 61.0
