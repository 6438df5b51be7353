"""``python -m orchestrator.figures``: the PNGs a sweep left undrawn, drawn later for a run, a
sweep or an experiment, byte for byte what a trial draws at close."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import figures, names

PNGS = {"confusion_matrix.png", "learned_weights.png"}


def _state(c, t) -> tuple[str, bool]:
    up = {a.path for a in c.list_artifacts(t.run_id)}
    return c.get_run(t.run_id).data.tags[names.FIGURES], up >= PNGS


def _main(ctx, target: str) -> int:
    return figures.main([target, "--tracking-uri", ctx.tracking.uri])


@pytest.mark.parametrize("by", ["sweep id", "parent run", "experiment"])
def test_the_command_draws_every_closed_pending_run_it_names(
    sweep_context, sweep_trial, capsys, by
):
    ctx, c = sweep_context
    closed = [sweep_trial(i, 50.0 + i) for i in range(2)]
    running = sweep_trial(5, 55.0, close="open")
    target = {
        "sweep id": ctx.sweep_id,
        "parent run": ctx.parent_run_id,
        "experiment": c.get_experiment(ctx.tracking.experiment_id).name,
    }[by]
    assert _main(ctx, target) == 0
    assert [_state(c, t) for t in closed] == [("drawn", True)] * 2
    assert _state(c, running) == ("pending", False)  # its trial may upload a newer selection
    out = capsys.readouterr().out
    assert "drew the figures of 2 run(s); 0 had them already; 1 still running" in out
    assert _main(ctx, target) == 0  # a second pass draws nothing again
    assert "drew the figures of 0 run(s); 2 had them already" in capsys.readouterr().out


def test_the_command_draws_the_same_pngs_a_trial_draws_at_close(
    tmp_path, sweep_context, sweep_trial
):
    """A run drawn on demand gets byte for byte the PNGs a run drawn at close gets from the
    same data (the sweep's best k are drawn the same way as the command's)."""
    ctx, c = sweep_context
    at_close = sweep_trial(0, 50.0, draw=True)
    later = sweep_trial(1, 50.0)
    assert _state(c, at_close) == ("drawn", True) and _state(c, later) == ("pending", False)
    assert _main(ctx, later.run_id) == 0
    for png in PNGS:
        a = Path(c.download_artifacts(at_close.run_id, png, str(tmp_path / "a")))
        b = Path(c.download_artifacts(later.run_id, png, str(tmp_path / "b")))
        assert a.read_bytes() == b.read_bytes(), png
    note = c.get_run(later.run_id).data.tags[names.NOTE]
    assert later.run_id in note and "learned_weights.png" in note


def test_a_target_that_names_nothing_stops_in_one_line(sweep_context, tmp_path, capsys):
    ctx, _c = sweep_context
    assert _main(ctx, "no-such-sweep") == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: 'no-such-sweep' is no experiment, sweep id or run id in this store"
    missing = f"sqlite:///{tmp_path / 'nothing' / 'mlflow.db'}"
    assert figures.main(["x", "--tracking-uri", missing]) == 2
    assert capsys.readouterr().err.strip() == f"error: no MLflow store at {missing}"
