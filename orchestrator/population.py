"""The Tune trial of a population sweep: P stage-2 settings trained at once, one MLflow run each.

``config["population"]`` holds the P settings :class:`orchestrator.search.PopulationSearch`
asked Optuna for. Each member is tracked exactly as a single trial is (:class:`TrialTracker`:
the same params, per-epoch metrics, artifacts and summary, under the trial's id plus
``_m<i>``; tags ``ot.population`` and ``ot.member``), so the MLflow view, the ranking and
``report`` read members as trials. A member that diverges is marked as a diverged trial is;
one culled by successive halving inside the population as an ASHA-stopped trial is. The Tune
trial reports, per epoch, the best member's selection metric (what ASHA ranks the trial on) and
every member's (what Optuna is told). A restarted trial (retry or ``--resume``) skips the
members that already finished: members are independent, so the others train as before.
"""

from __future__ import annotations

import math
import time

import torch
from ray import tune

from trainables.config import apply_values
from trainables.loop import StageResult
from trainables.population import MemberOutcome
from trainables.trial import (
    add_features,
    features_data,
    needs_features,
    pick_device,
    run_population,
    scalar_summary,
)

from . import names
from .search import member_key
from .stages import read_entry
from .trainable import SweepContext, TrialTracker, asha_rungs, inject_fault

__all__ = [
    "MEMBER",
    "POPULATION",
    "member_id",
    "population_trial",
    "reproduce_population",
    "train_members",
]

POPULATION, MEMBER = "ot.population", "ot.member"
# the longest a member's epochs wait in its tracker before they go up to MLflow
FLUSH_SECONDS = 10.0


def member_id(trial_id: str, i: int) -> str:
    """The trial id a member's run carries (``ray.trial_id``): the Tune trial's, plus ``_m<i>``."""
    return f"{trial_id}_m{i}"


def _final(run) -> float:
    return run.data.metrics.get(names.SELECT_METRIC, float("nan"))


def population_trial(config: dict, ctx: SweepContext) -> None:
    """Tune function trainable of a population sweep (single-worker trials only)."""
    tctx = tune.get_context()
    trial_id, name = tctx.get_trial_id(), tctx.get_trial_name()
    members = [
        (ctx, apply_values(ctx.base, s), f"{name}_m{i}", s)
        for i, s in enumerate(config["population"])
    ]
    epochs = ctx.base.stage2.epochs
    # the sweep's ASHA rungs: members are culled there too
    train_members(members, trial_id, tune.report, rungs=asha_rungs(epochs))


def reproduce_population(config: dict, contexts: dict[str, SweepContext]) -> None:
    """Tune function trainable of ``orchestrator.reproduce`` for runs that share a stage 1 and
    differ only in member-level stage-2 fields (e.g. an OT row and its ``+no_ot`` control):
    ``config["runs"]`` names them; each keeps its own context and MLflow run."""
    trial_id = tune.get_context().get_trial_id()
    members = [(contexts[k], contexts[k].base, k, {}) for k in config["runs"]]
    train_members(members, trial_id, tune.report, rungs=())  # reproduce stops nothing early


def train_members(members: list, trial_id: str, report_fn, *, rungs) -> None:
    """Train ``members`` (``(context, config, run name, sampled values)`` each, one stage 1)
    as one population in this Tune trial, each tracked as a trial; ``report_fn`` is Tune's."""
    ctx = members[0][0]
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    settings = [m[3] for m in members]
    cfgs = [m[1] for m in members]
    trackers = [
        TrialTracker(
            mctx,
            c,
            member_id(trial_id, i),
            run_name,
            extra_tags={POPULATION: trial_id, MEMBER: str(i)},
            buffered=True,
        )
        for i, (mctx, c, run_name, _) in enumerate(members)
    ]
    best_val = [float("nan")] * len(cfgs)
    best_test = [float("nan")] * len(cfgs)
    todo = []
    for i, t in enumerate(trackers):
        if t.finished_run is not None:  # finished before a restart: reported from MLflow
            best_val[i] = _final(t.finished_run)
            best_test[i] = t.finished_run.data.metrics.get(names.SELECTED_TEST, float("nan"))
        else:
            todo.append(i)
    epochs = cfgs[0].stage2.epochs

    def report(epoch: int) -> None:
        vals = [v if math.isfinite(v) else -1.0 for v in best_val]
        top = max(range(len(vals)), key=lambda i: vals[i])
        out = {
            names.SELECT_METRIC: max(vals[top], 0.0),
            names.SELECTED_TEST: best_test[top] if math.isfinite(best_test[top]) else 0.0,
            names.TIME_ATTR: epoch + 1,
            "population": len(cfgs),
            **{member_key(i): max(v, 0.0) for i, v in enumerate(vals)},
        }
        report_fn(out)

    if not todo:
        report(epochs - 1)
        return
    live: dict[int, StageResult] = {}
    open_members = set(todo)
    data = None  # the cached features the members' artifacts describe (set below)

    def callback(pos: int, stage: str, epoch: int, metrics: dict) -> None:
        i = todo[pos]
        trackers[i].epoch(metrics, epoch)
        best_val[i], best_test[i] = trackers[i].best_val, trackers[i].best_test
        if epoch == 0:
            inject_fault()

    def on_improve(pos: int, result: StageResult) -> None:
        live[todo[pos]] = result

    def on_member_end(pos: int, outcome: MemberOutcome) -> None:
        i = todo[pos]
        t = trackers[i]
        open_members.discard(i)
        if outcome.error is not None:
            t.fail(outcome.error, diverged=True)
            best_val[i] = max(t.best_val, 0.0)
            return
        if outcome.result.selected:
            t.upload_selected(outcome.result, data)
        if outcome.stopped_epoch is not None:
            t.stopped_early()
        else:
            t.finish(scalar_summary(outcome.result))

    uploaded: dict[int, int] = {}  # member -> the selected epoch its artifacts show

    last_flush = time.monotonic()

    def epoch_end(epoch: int) -> None:
        nonlocal last_flush
        if epoch >= epochs - 1:
            return  # reported once every member's run is closed
        if epoch + 1 in rungs or time.monotonic() - last_flush > FLUSH_SECONDS:
            # the members' epochs so far go up together: before a report at which ASHA may
            # stop the trial, and at least every FLUSH_SECONDS for the live view
            for i in sorted(open_members):
                trackers[i].flush()
            last_flush = time.monotonic()
        if epoch + 1 in rungs:
            # ASHA may stop the trial at this report, and the process may end before the
            # SystemExit handler below runs: every open member's selection (its data: the
            # driver draws the figures of a run left pending) and summary so far go up first
            for i in sorted(open_members):
                if i in live and uploaded.get(i) != live[i].selected.get("epoch"):
                    trackers[i].upload_progress(live[i], data)
                    trackers[i].log_summary(scalar_summary(live[i]))
                    uploaded[i] = live[i].selected.get("epoch")
        report(epoch)

    try:
        for i in todo:
            trackers[i].start(settings[i])
        stage1 = read_entry(ctx.entry_uri, features=needs_features(cfgs[0]))
        if stage1.features is None:  # an entry built for a row that did not need them
            add_features(cfgs[0], stage1, pick_device())
        data = features_data(stage1, torch.device("cpu"))
        run_population(
            [cfgs[i] for i in todo],
            stage1,
            device=pick_device(),
            callback=callback,
            on_improve=on_improve,
            on_member_end=on_member_end,
            epoch_end=epoch_end,
            rungs=rungs,
        )
        report(epochs - 1)  # after every member's run is closed: Tune stops a trial here
    except SystemExit:  # Tune stopped the population at a report (ASHA, or an interrupt)
        # quick, and no drawing: the process may exit at any moment. The open members' runs
        # stay open for the driver (closed as stopped early when ASHA stopped the trial; left
        # for --resume when the sweep was interrupted). At a rung their data is already up.
        for i in sorted(open_members):
            t = trackers[i]
            if i in live and uploaded.get(i) != live[i].selected.get("epoch"):
                t.upload_progress(live[i], data)
                t.at_stop()  # with its summary
            else:
                t.flush()
        raise
    except BaseException as err:
        for i in sorted(open_members):
            trackers[i].fail(err)
        raise
