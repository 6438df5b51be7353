"""How a sweep's runs point at each other in MLflow: the parent to its best trial's run and to
the stage-1 build, the trials to the build."""

from __future__ import annotations

from orchestrator import names, tracking
from orchestrator.sweep_results import link_best as _link


def _store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "image_mnist_lt", None)
    return tracking.client(uri), exp


def test_the_latest_finished_build_of_a_key_is_the_stage1_run(tmp_path):
    c, exp = _store(tmp_path)
    tags = {names.KIND: "stage1_build", names.STAGE1_HASH: "abc"}
    old = c.create_run(exp, tags=tags, start_time=1000).info.run_id
    new = c.create_run(exp, tags=tags, start_time=2000).info.run_id
    failed = c.create_run(exp, tags=tags, start_time=3000).info.run_id
    other = c.create_run(exp, tags={**tags, names.STAGE1_HASH: "xyz"}).info.run_id
    for run, status in ((old, "FINISHED"), (new, "FINISHED"), (failed, "FAILED")):
        c.set_terminated(run, status=status)
    c.set_terminated(other, status="FINISHED")
    assert tracking.stage1_build_run(c, exp, "abc") == new
    assert tracking.stage1_build_run(c, exp, "nope") is None


def test_the_parent_links_its_best_trial_and_stage1(tmp_path):
    c, exp = _store(tmp_path)
    parent = c.create_run(exp, tags={names.KIND: "sweep"}).info.run_id

    def trial(trial_id, status):
        run = c.create_run(exp, tags={names.PARENT: parent, "ray.trial_id": trial_id})
        c.set_terminated(run.info.run_id, status=status)
        return run.info.run_id

    trial("t1", "FAILED")  # the first attempt of the best trial failed; its retry finished
    best = trial("t1", "FINISHED")
    trial("t2", "FINISHED")
    _link(c, exp, parent, "t1", "build123")
    tags = c.get_run(parent).data.tags
    assert tags[names.BEST_TRIAL_RUN] == best
    note = tags[names.NOTE]
    assert f"[{best}](#/experiments/{exp}/runs/{best})" in note
    assert f"Stage 1: [build123](#/experiments/{exp}/runs/build123)" in note


def test_no_best_trial_no_link(tmp_path):
    c, exp = _store(tmp_path)
    parent = c.create_run(exp).info.run_id
    _link(c, exp, parent, None, None)
    tags = c.get_run(parent).data.tags
    assert names.BEST_TRIAL_RUN not in tags and names.NOTE not in tags
