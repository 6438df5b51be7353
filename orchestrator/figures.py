"""A run's two PNGs (``confusion_matrix.png``, ``learned_weights.png``) and its description,
drawn from the small data files every tracked run uploads (``confusion.json``,
``weight_mass.json``, ``sample_weights.npz``). A sweep draws them only for its best settings
(``--figures K``); every other run keeps the data and the tag ``ot.figures=pending``, and

    .venv/bin/python -m orchestrator.figures RUN_ID | SWEEP_ID | EXPERIMENT [--storage DIR]

draws them later, into the same artifact paths, with the same code as the sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException

from trainables.metrics import confusion_metrics

from . import artifacts, cli, names, tracking
from .storage import StorageError

__all__ = ["FIGURE_SAMPLES", "describe", "draw_figures", "draw_runs", "draw_uploaded_figures"]

FIGURE_SAMPLES = "sample_weights.npz"  # per-sample weights and labels (the weight figure's)
_FIGURE_DATA = ("confusion.json", "weight_mass.json", FIGURE_SAMPLES)


def draw_figures(folder: Path) -> list[str]:
    """Draw a run's PNGs from the data files in ``folder`` (as :meth:`TrialTracker.
    upload_selected` writes them): ``confusion_matrix.png`` from ``confusion.json``, and
    ``learned_weights.png`` from ``weight_mass.json`` (with the per-sample panel from
    ``sample_weights.npz`` where present). Returns the names drawn."""
    conf = json.loads((folder / "confusion.json").read_text())
    counts = conf["train_counts"]
    artifacts.write_confusion_png(
        conf["confusion"], counts, folder / "confusion_matrix.png", title=conf.get("title", "")
    )
    drawn = ["confusion_matrix.png"]
    if (folder / "weight_mass.json").exists():
        mass = json.loads((folder / "weight_mass.json").read_text())
        samples = {}
        if (folder / FIGURE_SAMPLES).exists():
            with np.load(folder / FIGURE_SAMPLES) as z:
                samples = {k: z[k] for k in z.files}
        raw = mass.get("loss_uses") == "raw"
        artifacts.write_weight_png(
            mass["softmax_mass"],
            folder / "learned_weights.png",
            sample_weights=samples.get("weights"),
            labels=samples.get("labels"),
            train_counts=counts,
            raw_mass=mass.get("raw_mass") if raw else None,
            raw_sample_weights=samples.get("raw_weights") if raw else None,
            start_mass=mass.get("start_mass"),
        )
        drawn.append("learned_weights.png")
    return drawn


def describe(folder: Path, run_id: str, figures: list[str]) -> str:
    """The run's description (``mlflow.note.content``) from the data files in ``folder``:
    per-class test accuracy at the validation-selected epoch, the learned weight mass there
    beside its start, and ``figures`` shown inline (:func:`artifacts.selection_note`)."""
    conf = json.loads((folder / "confusion.json").read_text())
    counts = conf["train_counts"]
    per_class = confusion_metrics(np.asarray(conf["confusion"]), counts)["per_class_acc"]
    mass = {}
    if (folder / "weight_mass.json").exists():
        mass = json.loads((folder / "weight_mass.json").read_text())
    by_epoch = mass.get("softmax_mass") or [None]
    epoch = conf.get("epoch", len(by_epoch))  # older data: its last epoch was the selected one
    return artifacts.selection_note(
        per_class,
        counts,
        epoch=epoch,
        run_id=run_id,
        learned_mass=by_epoch[min(epoch, len(by_epoch)) - 1],
        start_mass=mass.get("start_mass"),
        figures=[f for f in ("learned_weights.png", "confusion_matrix.png") if f in figures],
    )


def draw_uploaded_figures(client, run_id: str) -> bool:
    """The PNGs of a run whose process ended before drawing them (``ot.figures=pending``),
    drawn from its uploaded data and uploaded beside it; True when it drew."""
    if client.get_run(run_id).data.tags.get(names.FIGURES) != "pending":
        return False
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        present = {a.path for a in client.list_artifacts(run_id)}
        for name in _FIGURE_DATA:
            if name in present:
                client.download_artifacts(run_id, name, str(d))
        if not (d / "confusion.json").exists():
            return False
        out = d / "png"
        out.mkdir()
        drawn = draw_figures(d)
        for name in drawn:
            (d / name).rename(out / name)
        client.log_artifacts(run_id, str(out))
        client.set_tag(run_id, names.NOTE, describe(d, run_id, drawn))
    client.set_tag(run_id, names.FIGURES, "drawn")
    return True


def draw_runs(c, runs: list) -> tuple[int, int]:
    """Draw the PNGs of every closed run in ``runs`` still tagged ``ot.figures=pending``.
    Returns (drawn, left open): a run still RUNNING is left alone (its trial may upload a newer
    selection). A drawing that fails is reported in one line and loses nothing else."""
    drawn = still_open = 0
    for run in runs:
        if run.data.tags.get(names.FIGURES) != "pending":
            continue
        if run.info.status == "RUNNING":
            still_open += 1
            continue
        try:
            drawn += draw_uploaded_figures(c, run.info.run_id)
        except Exception as err:  # reported; the other runs are drawn
            print(
                f"warning: the figures of run {run.info.run_id} were not drawn: "
                f"{type(err).__name__}: {err}",
                file=sys.stderr,
            )
    return drawn, still_open


def runs_of(c, target: str) -> list:
    """The runs ``target`` names: an experiment (every run in it), a run with its children (a
    sweep's or a reproduce's parent run: its trials) or a sweep id (its trials). One-line
    error when it names nothing."""
    exp = c.get_experiment_by_name(target)
    if exp is not None:
        return tracking.all_runs_with_tags(c, exp.experiment_id, {})
    try:
        tags, runs = {names.PARENT: target}, [c.get_run(target)]
    except MlflowException:  # no such run: a sweep id, or nothing
        tags, runs = {names.SWEEP_ID: target}, []
    for exp in c.search_experiments():
        runs += tracking.all_runs_with_tags(c, exp.experiment_id, tags)
    if not runs:
        raise cli.CommandError(f"{target!r} is no experiment, sweep id or run id in this store")
    return runs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.figures",
        description="Draw the PNGs of the runs a sweep left without them (ot.figures=pending).",
    )
    p.add_argument("target", help="an experiment name, a sweep id (or its parent run id), a run id")
    p.add_argument("--storage", default=None, help="run storage (default ./runs)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        uri, c = cli.read_tracking(args.tracking_uri, args.storage)
        if c is None:
            raise cli.CommandError(f"no MLflow store at {uri}")
        runs = runs_of(c, args.target)
    except (cli.CommandError, tracking.TrackingError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    drawn, still_open = draw_runs(c, runs)
    ready = sum(r.data.tags.get(names.FIGURES) == "drawn" for r in runs)
    print(f"drew the figures of {drawn} run(s); {ready} had them already", end="")
    print(f"; {still_open} still running, left alone" if still_open else "")
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
