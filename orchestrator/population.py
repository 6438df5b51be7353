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

from . import names, tracking
from .search import member_key
from .stage_cache import read_entry
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
    torch.set_num_threads(max(1, int(members[0][0].cpus_per_trial)))
    _Members(members, trial_id, report_fn, rungs).train()


def _earlier_runs(members: list, trial_id: str) -> list[list]:
    """Each member's earlier runs (attempts before a restart), from one search per store and
    parent run rather than one per member."""
    found, out = {}, []
    for i, (mctx, *_) in enumerate(members):
        key = (mctx.tracking.uri, mctx.tracking.experiment_id, mctx.parent_run_id)
        if key not in found:
            tags = {names.PARENT: key[2], POPULATION: trial_id}
            found[key] = tracking.all_runs_with_tags(tracking.client(key[0]), key[1], tags)
        mid = member_id(trial_id, i)
        out.append([r for r in found[key] if r.data.tags.get("ray.trial_id") == mid])
    return out


class _Members:
    """The members of one population trial: their trackers, their selections so far, and the
    hooks :func:`trainables.trial.run_population` calls (``pos``: a member's place among those
    that train, ``todo``; a member that finished before a restart is reported from MLflow)."""

    def __init__(self, members: list, trial_id: str, report_fn, rungs) -> None:
        self.ctx = members[0][0]
        self.settings = [m[3] for m in members]
        self.cfgs = [m[1] for m in members]
        self.report_fn, self.rungs = report_fn, rungs
        self.epochs = self.cfgs[0].stage2.epochs
        earlier = _earlier_runs(members, trial_id)
        self.trackers = [
            TrialTracker(
                mctx,
                c,
                member_id(trial_id, i),
                run_name,
                extra_tags={POPULATION: trial_id, MEMBER: str(i)},
                buffered=True,
                earlier=earlier[i],
            )
            for i, (mctx, c, run_name, _) in enumerate(members)
        ]
        self.best_val = [float("nan")] * len(self.cfgs)
        self.best_test = [float("nan")] * len(self.cfgs)
        self.todo = []
        for i, t in enumerate(self.trackers):
            if t.finished_run is not None:  # finished before a restart: reported from MLflow
                self.best_val[i] = _final(t.finished_run)
                self.best_test[i] = t.finished_run.data.metrics.get(
                    names.SELECTED_TEST, float("nan")
                )
            else:
                self.todo.append(i)
        self.live: dict[int, StageResult] = {}
        self.open = set(self.todo)
        self.data = None  # the cached features the members' artifacts describe
        self.uploaded: dict[int, int] = {}  # member -> the selected epoch its artifacts show
        self.last_flush = time.monotonic()

    def report(self, epoch: int) -> None:
        """The trial's result: the best member's selection (what ASHA ranks the trial on) and
        every member's (what Optuna is told)."""
        vals = [v if math.isfinite(v) else -1.0 for v in self.best_val]
        top = max(range(len(vals)), key=lambda i: vals[i])
        test = self.best_test[top]
        self.report_fn(
            {
                names.SELECT_METRIC: max(vals[top], 0.0),
                names.SELECTED_TEST: test if math.isfinite(test) else 0.0,
                names.TIME_ATTR: epoch + 1,
                "population": len(self.cfgs),
                **{member_key(i): max(v, 0.0) for i, v in enumerate(vals)},
            }
        )

    def train(self) -> None:
        if not self.todo:
            self.report(self.epochs - 1)
            return
        try:
            for i in self.todo:
                self.trackers[i].start(self.settings[i])
            cfg = self.cfgs[0]
            stage1 = read_entry(self.ctx.entry_uri, features=needs_features(cfg))
            if stage1.features is None:  # an entry built for a row that did not need them
                add_features(cfg, stage1, pick_device())
            self.data = features_data(stage1, torch.device("cpu"))
            run_population(
                [self.cfgs[i] for i in self.todo],
                stage1,
                device=pick_device(),
                callback=self.on_epoch,
                on_improve=self.on_improve,
                on_member_end=self.on_member_end,
                epoch_end=self.epoch_end,
                rungs=self.rungs,
            )
            self.report(self.epochs - 1)  # after every member's run is closed: Tune stops here
        except SystemExit:  # Tune stopped the population at a report (ASHA, or an interrupt)
            self.at_stop()
            raise
        except BaseException as err:
            for i in sorted(self.open):
                self.trackers[i].fail(err)
            raise

    def on_epoch(self, pos: int, stage: str, epoch: int, metrics: dict) -> None:
        i = self.todo[pos]
        self.trackers[i].epoch(metrics, epoch)
        self.best_val[i], self.best_test[i] = self.trackers[i].best_val, self.trackers[i].best_test
        if epoch == 0:
            inject_fault()

    def on_improve(self, pos: int, result: StageResult) -> None:
        self.live[self.todo[pos]] = result

    def on_member_end(self, pos: int, outcome: MemberOutcome) -> None:
        i = self.todo[pos]
        t = self.trackers[i]
        self.open.discard(i)
        if outcome.error is not None:
            t.fail(outcome.error, diverged=True)
            self.best_val[i] = max(t.best_val, 0.0)
            return
        # the final selection goes up with the summary and the closing tags, in one upload
        upload = (outcome.result, self.data) if outcome.result.selected else None
        if outcome.stopped_epoch is not None:
            t.stopped_early(upload)
        else:
            t.finish(scalar_summary(outcome.result), upload)

    def epoch_end(self, epoch: int) -> None:
        if epoch >= self.epochs - 1:
            return  # reported once every member's run is closed
        at_rung = epoch + 1 in self.rungs
        if at_rung or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            # the members' epochs so far go up together: before a report at which ASHA may
            # stop the trial, and at least every FLUSH_SECONDS for the live view
            for i in sorted(self.open):
                self.trackers[i].flush()
            self.last_flush = time.monotonic()
        if at_rung:
            # ASHA may stop the trial at this report, and the process may end before the
            # SystemExit handler runs: every open member's selection (its data: the driver
            # draws the figures of a run left pending) and summary so far go up first
            for i in sorted(self.open):
                if self._behind(i):
                    summary = scalar_summary(self.live[i])
                    self.trackers[i].upload_progress(self.live[i], self.data, summary)
                    self.uploaded[i] = self.live[i].selected.get("epoch")
        self.report(epoch)

    def _behind(self, i: int) -> bool:
        """Whether member ``i``'s uploaded artifacts show an older selection than its own."""
        return i in self.live and self.uploaded.get(i) != self.live[i].selected.get("epoch")

    def at_stop(self) -> None:
        """Quick, and no drawing: the process may exit at any moment. The open members' runs
        stay open for the driver (closed as stopped early when ASHA stopped the trial; left
        for --resume when the sweep was interrupted). At a rung their data is already up."""
        for i in sorted(self.open):
            t = self.trackers[i]
            if self._behind(i):
                t.upload_progress(self.live[i], self.data)
                t.at_stop()  # with its summary
            else:
                t.flush()
