"""What a trial logs: its summary flattened into MLflow metric names, the selection rule."""

from __future__ import annotations

from orchestrator.trainable import _flat_summary
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
