"""A trial's run page opens on its description (``mlflow.note.content``): the validation-selected
epoch's per-class test accuracy and learned weights against their start, and its figures; set
where the figures are drawn, by the trial or by the sweep's driver."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator import names


def _result():
    """Selected at epoch 2 (0-based 1) of 3; class 1 (1 training sample) starts at 1/4 of the
    mass, is up-weighted to 0.4 at the selected epoch and 0.45 at the last."""
    import torch

    from trainables.data.arrays import StageData, TensorSplit
    from trainables.loop import StageResult

    split = TensorSplit(torch.zeros(4, 2), torch.tensor([0, 0, 0, 1]))
    data = StageData(split, split, split, split, 2, train_counts=(3, 1), source="features")
    sel = {
        "epoch": 1,
        "val": {"balanced_acc": 61.0},
        "test": {"balanced_acc": 50.0, "confusion": [[3, 0], [1, 1]], "per_class_acc": [100, 50]},
    }
    res = StageResult(last=sel, selected=sel, best_test_epoch=sel)
    res.start_mass = [0.75, 0.25]
    res.weight_mass = [[0.7, 0.3], [0.6, 0.4], [0.55, 0.45]]
    res.sample_weights = [0.2, 0.2, 0.2, 0.4]
    return res, data


def _check(note: str, run_id: str) -> None:
    assert note.startswith("**Validation-selected model, stage-2 epoch 2**"), note
    assert "| 0 | 3 | 100.0 | 0.75 | 0.6 | 0.80× |" in note  # the selected epoch's mass
    assert "| 1 | 1 | 50.0 | 0.25 | 0.4 | 1.60× |" in note
    for figure in ("learned_weights.png", "confusion_matrix.png"):
        assert f"![{figure}](get-artifact?path={figure}&run_uuid={run_id})" in note


def test_a_closing_trial_describes_its_selection(tmp_path, tracker):
    tracker, c = tracker
    tracker.start({})
    res, data = _result()
    tracker.upload_progress(res, data)  # no figures yet: no description either
    assert names.NOTE not in c.get_run(tracker.run_id).data.tags
    tracker.finish({"last_epoch": {"epoch": 3}})  # draws the figures, then describes them
    _check(c.get_run(tracker.run_id).data.tags[names.NOTE], tracker.run_id)
    local = c.download_artifacts(tracker.run_id, "weight_mass.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["start_mass"] == [0.75, 0.25]


def test_the_driver_describes_a_trial_it_draws_for(tmp_path, tracker):
    from orchestrator.figures import draw_uploaded_figures

    tracker, c = tracker
    tracker.start({})
    res, data = _result()
    tracker.upload_progress(res, data)  # the trial's process ended here
    assert draw_uploaded_figures(c, tracker.run_id)
    _check(c.get_run(tracker.run_id).data.tags[names.NOTE], tracker.run_id)


def test_a_tracker_outside_ray_starts_no_ray(tracker):
    """A trial's tracker records its Ray node; outside Ray it says "local" without asking
    Ray's runtime context, which would start a Ray in the process (and leave it running for
    every later test of the session)."""
    import ray

    tracker, c = tracker
    assert c.get_run(tracker.run_id).data.tags["ray.node_id"] == "local"
    assert not ray.is_initialized()
