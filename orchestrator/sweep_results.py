"""How a sweep ends: the stopped trials' runs closed, the trials ranked from MLflow, the best
settings' figures drawn (in the driver, from the uploaded data), the summary, the best
setting's control (and, when it was picked in a population, its re-run alone), and the parent
run closed."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path

import ray
from mlflow.exceptions import MlflowException
from ray.tune import Callback, ExperimentAnalysis

from search_spaces.paper import paper_number
from trainables.config import apply_values

from . import names, tracking
from .control import control_run
from .figures import draw_runs
from .population import MEMBER, POPULATION

__all__ = [
    "FinishStopped",
    "draw_best",
    "finish_parent",
    "link_best",
    "ranking",
    "report_control",
    "start_control",
    "summarize",
    "supersede_unknown",
]


class FinishStopped(Callback):
    """Tune callback: a trial the scheduler stopped gets its MLflow runs closed as FINISHED
    (the trial closes them itself when it can; this covers a process ended mid-report). Their
    figures are left to the sweep's end (:func:`draw_best`) like every other run's."""

    def __init__(self, spec: tracking.TrackingSpec, parent_run_id: str) -> None:
        self.spec, self.parent_run_id = spec, parent_run_id

    def on_trial_complete(self, iteration, trials, trial, **info):
        c = tracking.client(self.spec.uri)
        by = POPULATION if "population" in trial.config else "ray.trial_id"
        tags = {names.PARENT: self.parent_run_id, by: trial.trial_id}
        runs = tracking.all_runs_with_tags(c, self.spec.experiment_id, tags)
        tracking.close_running(c, runs, tag=names.STOPPED_EARLY, status="FINISHED")


def draw_best(c, ranked: list, k: int) -> int:
    """The PNGs of the sweep's ``k`` best settings (``ranked``: :func:`ranking`'s runs, as
    :func:`summarize` returns them), drawn from their uploaded data where still pending (a
    resumed sweep's too); every other run keeps its data for ``python -m
    orchestrator.figures``. Returns how many were drawn."""
    return draw_runs(c, ranked[: max(0, k)])[0]


def supersede_unknown(c, exp_id: str, parent: str, exp_path: str) -> int:
    """On ``--resume``, before the restored Tuner runs: close as superseded (KILLED, tag
    ``ot.superseded``) this sweep's finished trial runs whose Tune trial is not in the
    experiment state Tune restores. Tune saves that state as the sweep goes, and the copy in
    the storage can lag what the trials recorded in MLflow (an upload still under way when
    the driver died; a ``TUNE_GLOBAL_CHECKPOINT_S`` period): a trial created after it is
    unknown to the restored Tuner, whose searcher asks for it again (in trial order the same
    setting, under a new trial id), and it trains again. Its earlier run, left FINISHED,
    would count the setting twice. Returns how many were closed."""
    # it warns of each trial without a result yet (one the kill caught starting): not news here
    log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        known = {t.trial_id for t in ExperimentAnalysis(exp_path).trials}
    finally:
        log.setLevel(level)
    closed = 0
    for r in tracking.all_runs_with_tags(c, exp_id, {names.PARENT: parent, names.KIND: "trial"}):
        trial = r.data.tags.get(POPULATION) or r.data.tags.get("ray.trial_id")
        if r.info.status == "FINISHED" and trial not in known:
            c.set_tag(r.info.run_id, names.SUPERSEDED, "true")
            c.set_terminated(r.info.run_id, status="KILLED")
            closed += 1
    return closed


def ranking(c, exp_id: str, parent: str) -> list:
    """Every trial of the sweep with a result, best first by the selection metric: read from
    MLflow, so trials that finished before a ``--resume`` and those ASHA stopped are ranked too
    (Tune's result grid holds only what this driver saw). One run per trial: its latest
    finished attempt. Equal scores go by the setting (its params), not by Tune's trial ids,
    which are random: the same sweep ranks the same way every time."""
    latest: dict[str, object] = {}
    for r in tracking.all_runs_with_tags(c, exp_id, {names.PARENT: parent, names.KIND: "trial"}):
        if r.info.status != "FINISHED" or names.SELECT_METRIC not in r.data.metrics:
            continue
        tid = r.data.tags.get("ray.trial_id", r.info.run_id)
        attempt = int(r.data.tags.get(names.ATTEMPT, "1"))
        if tid not in latest or attempt > int(latest[tid].data.tags.get(names.ATTEMPT, "1")):
            latest[tid] = r
    return sorted(
        latest.values(),
        key=lambda r: (
            -r.data.metrics[names.SELECT_METRIC],
            sorted(r.data.params.items()),
            r.data.tags.get("ray.trial_id", ""),
        ),
    )


def _sampled(c, run) -> dict:
    """What the searcher sampled for a trial (its ``sampled.json``, typed as sampled); {} for a
    run without one (the caller then prints the run's stage params)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = c.download_artifacts(run.info.run_id, "sampled.json", tmp)
        except (MlflowException, OSError):
            return {}
        return json.loads(Path(path).read_text())


def summarize(
    cfg, c, exp_id: str, parent: str, results, conc: int, population: int = 1, order: str = ""
) -> dict:
    rows = []
    for r in ranking(c, exp_id, parent):
        m = {**r.data.metrics, "trial_id": r.data.tags.get("ray.trial_id", r.info.run_id)}
        rows.append((m[names.SELECT_METRIC], m.get(names.SELECTED_TEST), m, r))
    print("\n== sweep summary ==", flush=True)
    print(f"experiment {cfg.name} ({cfg.table}), preset {cfg.preset}, seed {cfg.seed}")
    pop = f" population trials of up to {population} settings" if population > 1 else ""
    print(
        f"trials: {len(results)}{pop} run, {results.num_errors} errored, {len(rows)} ranked "
        f"(every finished {'setting' if pop else 'trial'} of this sweep, resumed ones "
        f"included); concurrency {conc}" + (f", {order} order" if order else "")
    )
    if not rows:
        return {}
    best_val, best_test, m, run = rows[0]
    params = _sampled(c, run) or {
        k: v for k, v in run.data.params.items() if k.split(".")[0] in ("stage1", "stage2")
    }
    print(f"best trial {m.get('trial_id')}: val balanced acc {best_val:.2f} (selection metric)")
    print(
        f"  test at the validation-selected epoch {m.get(names.SELECTED_EPOCH, 0):.0f}: "
        f"balanced acc {best_test:.2f}"
    )
    for k, v in params.items():
        print(f"  {k} = {v}")
    paper = paper_number(cfg)
    if paper:
        print(f"  paper: test top-1 error {paper[0]:.2f} ({paper[1]})")
    else:
        print("  paper: no published number for this cell (offline or unpublished setting)")
    shown = rows if len(rows) <= 20 else rows[:10]
    print("\n  rank  val_bal_acc  test_bal_acc  trial")
    for i, (v, t, mm, _r) in enumerate(shown):
        print(f"  {i + 1:>4}  {v:>11.2f}  {t:>12.2f}  {mm.get('trial_id')}")
    if len(shown) < len(rows):
        print(f"  ... {len(rows) - len(shown)} more in the MLflow view below")
    return {
        "best_val": best_val,
        "best_test": best_test,
        "params": params,
        "metrics": m,
        "ranked": len(rows),
        "runs": [r for *_, r in rows],  # ranked: what draw_best reads (one search of the store)
        "member": MEMBER in run.data.tags,  # picked inside a population
    }


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__


def _alone(c, parent: str, ref, control: dict) -> None:
    """The best setting re-run as a single trial (``ref``: its Ray task), on the parent and
    printed against its control; a failure (e.g. it diverges alone) is one warning line."""
    try:
        got = ray.get(ref)
    except ray.exceptions.RayError as err:
        print(f"warning: the best setting re-run alone failed: {_first_line(err)}", file=sys.stderr)
        return
    tracking.log_metrics(c, parent, {names.ALONE_VAL: got["val"], names.ALONE_TEST: got["test"]}, 0)
    print(
        f"\n  the best setting re-run alone (a single trial; it was picked in a population, whose "
        f"float32 products round differently): val {got['val']:.2f}, test {got['test']:.2f}; "
        f"against its control: val {got['val'] - control['val']:+.2f}, "
        f"test {got['test'] - control['test']:+.2f}"
    )


def start_control(cfg, best: dict, args, entry) -> dict | None:
    """The best setting's control (the same stage 2, seed and stage 1 with the weight learning
    off) submitted as a Ray task with a trial's resources, and, when the setting was picked in
    a population, its re-run alone beside it: ``{"control": ref, "alone": ref or None}``, or
    None when there is no control to run. Collected by :func:`report_control`, so the driver
    draws the best settings' figures while they train."""
    if not best or cfg.stage2.method != "ot" or not cfg.stage2.learn_weights:
        return None
    try:
        tuned = apply_values(cfg, best["params"])
    except (TypeError, ValueError) as err:  # a best run without its sampled.json
        print(
            f"warning: no control run: the best setting cannot be rebuilt ({err})", file=sys.stderr
        )
        return None
    ctl = dataclasses.replace(tuned, stage2=dataclasses.replace(tuned.stage2, learn_weights=False))
    gpus = min(1.0, args.gpus_per_trial)  # one process, even for data-parallel trials
    task = ray.remote(num_cpus=args.cpus_per_trial, num_gpus=gpus)(control_run)
    threads = max(1, int(args.cpus_per_trial))
    # a setting picked inside a population is also re-run alone (beside its control): in
    # float32 a member rounds differently from its single trial, which some settings amplify
    alone = task.remote(tuned, entry.uri, threads) if best.get("member") else None
    return {"control": task.remote(ctl, entry.uri, threads), "alone": alone}


def report_control(pending: dict | None, cfg, best: dict, c, parent: str, n_ranked: int) -> None:
    """The control's numbers (:func:`start_control`) on the parent run and printed against the
    best trial; a failure is reported, and the sweep's results stand."""
    if pending is None:
        return
    try:
        got = ray.get(pending["control"])
    except ray.exceptions.RayError as err:
        first = _first_line(err)
        print(f"warning: the best setting's control run failed: {first}", file=sys.stderr)
        c.set_tag(parent, names.ERROR, f"control run: {first}")
        return
    tracking.log_metrics(
        c, parent, {names.CONTROL_VAL: got["val"], names.CONTROL_TEST: got["test"]}, step=0
    )
    print(
        f"\n  the best setting's control (weights held at their start, seed {cfg.seed}): "
        f"val {got['val']:.2f}, "
        f"test {got['test']:.2f}; OT's own gain (balanced accuracy points, + = OT better): "
        f"val {best['best_val'] - got['val']:+.2f}, test {best['best_test'] - got['test']:+.2f}"
        + (f" (the best of {n_ranked} settings on validation: optimistic)" if n_ranked > 1 else "")
    )
    if pending["alone"] is not None:
        _alone(c, parent, pending["alone"], got)


def link_best(c, exp_id: str, parent: str, best_trial: str | None, stage1_run: str | None) -> None:
    """The parent run points to its best trial's run and to the stage-1 build: tags, and links
    in its description (what the MLflow UI shows on the run's page)."""
    lines = []
    best = None
    if best_trial:
        finished = [
            r
            for r in tracking.trial_runs(c, exp_id, parent, best_trial)
            if r.info.status == "FINISHED"
        ]
        best = finished[-1].info.run_id if finished else None
    if best:
        c.set_tag(parent, names.BEST_TRIAL_RUN, best)
        lines.append(f"Best trial (by validation): {tracking.run_link(exp_id, best, best)}")
    if stage1_run:
        lines.append(f"Stage 1: {tracking.run_link(exp_id, stage1_run, stage1_run)}")
    if lines:
        c.set_tag(parent, names.NOTE, "\n\n".join(lines))


def finish_parent(c, parent: str, best: dict, results) -> bool:
    """The best trial's numbers on the parent run, which is closed; True if any trial ran."""
    if best:
        tracking.log_metrics(
            c,
            parent,
            {names.BEST_VAL: best["best_val"], names.BEST_TEST: best["best_test"]},
            step=0,
        )  # fmt: skip
        c.log_dict(parent, {"params": best["params"], "metrics": best["metrics"]}, "best.json")
    ok = bool(best) and results.num_errors < len(results)
    c.set_terminated(parent, status="FINISHED" if ok else "FAILED")
    return ok
