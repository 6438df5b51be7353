"""The stage-2 trial that Ray Tune runs: load stage 1 from the cache, train, report, track.

Each trial is one MLflow child run of the sweep's parent run: the resolved config as params,
per-epoch metrics, and, each time validation improves, the selected model's artifacts
(confusion matrix, per-class accuracy, learned-weight plot, best checkpoint), overwritten in
place so only the best survives. A trial stopped early by the scheduler is therefore already
complete; a failed attempt is marked FAILED and its retry gets a fresh run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from trainables.config import ExperimentConfig, apply_values, flatten, to_dict
from trainables.distributed import DataParallel
from trainables.loop import StageResult, improves
from trainables.population import halving_rungs
from trainables.trial import (
    Stage1Output,
    needs_features,
    pick_device,
    run_stage2,
    scalar_summary,
    stage1_summary,
)

from . import artifacts, names, tracking
from .figures import FIGURE_SAMPLES, describe, draw_figures
from .stage_cache import CorruptEntry, invalidate, read_entry, stage1_hash, verify_entry
from .stages import build_entry, flat_summary
from .storage import Storage

__all__ = [
    "ASHA_REDUCTION",
    "SELECT_METRIC",
    "SweepContext",
    "TrialTracker",
    "asha_grace",
    "asha_rungs",
    "inject_fault",
    "replayed_reports",
    "reported_epochs",
    "reproduce_trial",
    "stage2_trial",
]

SELECT_METRIC, TIME_ATTR = names.SELECT_METRIC, names.TIME_ATTR


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares (handed over once via ``tune.with_parameters``)."""

    base: ExperimentConfig
    entry_uri: str
    stage1_key: str
    tracking: tracking.TrackingSpec
    parent_run_id: str
    sweep_id: str
    cpus_per_trial: float = 1.0  # per worker when workers > 1
    workers: int = 1  # > 1: a Ray Train TorchTrainer per trial, data-parallel
    gpus_per_worker: float = 0.0
    train_storage: str = ""  # where the TorchTrainer runs keep their state
    tags: dict | None = None  # extra MLflow tags of every trial run (reproduce: table, cell)
    storage_uri: str = ""  # the run storage: trials whose sample changes stage 1 build it there
    # each run's PNGs drawn when it closes (reproduce); a sweep leaves them to its end, which
    # draws its best settings' (--figures), and to ``python -m orchestrator.figures``
    draw: bool = True


ASHA_REDUCTION = 3


def reported_epochs(cfg: ExperimentConfig) -> int:
    """The stage-2 epochs a trial of ``cfg`` reports: its epochs, or one evaluation of the
    stage-1 model when ``stage2.method=none``."""
    return cfg.stage2.epochs if cfg.stage2.method != "none" else 1


def asha_grace(epochs: int) -> int:
    """The sweep's ASHA grace period (stage-2 epochs before a trial can be stopped)."""
    return max(1, epochs // 4)


def asha_rungs(epochs: int) -> tuple[int, ...]:
    """The epochs (from 1) at whose report the sweep's ASHA may stop a trial."""
    return tuple(halving_rungs(epochs, asha_grace(epochs), ASHA_REDUCTION))


# Tests only: a directory named here makes the first trial attempt (of any sweep or
# reproduce run in that environment) fail once after its first epoch, to exercise retries.
FAIL_ONCE_ENV = "OT_REWEIGHT_FAIL_ONCE"


def inject_fault() -> None:
    fault_dir = os.environ.get(FAIL_ONCE_ENV)
    if not fault_dir:
        return
    marker = Path(fault_dir) / "raised"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise RuntimeError(f"injected fault ({FAIL_ONCE_ENV}): this attempt fails once")


# Tests only: a number of seconds here makes a single trial sleep an unseeded random time up to
# it before each epoch's report, so that two sweeps' trials report in different orders.
JITTER_ENV = "OT_REWEIGHT_JITTER"


def _jitter() -> None:
    top = float(os.environ.get(JITTER_ENV) or 0)
    if top > 0:
        time.sleep(random.SystemRandom().uniform(0.0, top))


def _node_id() -> str:
    """The Ray node this runs on; "local" outside Ray (asking Ray's runtime context there
    would start a Ray in this process)."""
    if not ray.is_initialized():
        return "local"
    return ray.get_runtime_context().get_node_id()


class TrialTracker:
    """One MLflow child run per trial attempt."""

    def __init__(
        self,
        ctx: SweepContext,
        cfg: ExperimentConfig,
        trial_id: str,
        name: str,
        *,
        enabled: bool = True,
        extra_tags: dict | None = None,
        buffered: bool = False,
        earlier: list | None = None,
    ):
        """``enabled=False``: the selection bookkeeping only (data-parallel ranks above 0).
        ``buffered``: :meth:`epoch` keeps its metrics until :meth:`flush` (or an upload, a
        summary or the run's end) sends them in one batch, each with its own step and time
        (a population's epochs take milliseconds; one MLflow write per member and epoch cost
        more than its training). ``earlier``: this trial's earlier runs, where the caller
        searched for them already (a population, once for all its members)."""
        self.ctx, self.cfg = ctx, cfg
        self.buffered, self._unsent = buffered, []
        self.result: StageResult | None = None
        self._data, self._drawn = None, True  # the data of the last upload; its PNGs drawn
        self._figures_tag: str | None = None  # the run's ot.figures tag as last set
        self.best_val = -1.0
        self.stage1_pick: tuple[float, float] | None = None  # a baseline row's (val, test)
        self.best_test = float("nan")
        self.best_epoch = -1
        self.finished_run = None
        self.closed = False
        self.client = None
        if not enabled:
            return
        self.client = tracking.client(ctx.tracking.uri)
        exp = ctx.tracking.experiment_id
        base_tags = {names.PARENT: ctx.parent_run_id, "ray.trial_id": trial_id}
        if earlier is None:
            earlier = tracking.trial_runs(self.client, exp, ctx.parent_run_id, trial_id)
        # A trial that already finished (the driver died before Tune recorded it) is not run
        # again: its final metrics are reported from MLflow.
        self.finished_run = next((r for r in earlier if r.info.status == "FINISHED"), None)
        self.closed = self.finished_run is not None
        if self.closed:
            return
        # an attempt still RUNNING lost its process (e.g. SIGKILL)
        tracking.close_running(self.client, earlier, tag=names.SUPERSEDED, status="KILLED")
        run = self.client.create_run(
            exp,
            run_name=name,
            tags={
                **base_tags,
                names.KIND: "trial",
                "ray.trial_name": name,
                names.SWEEP_ID: ctx.sweep_id,
                names.STAGE1_HASH: ctx.stage1_key,
                names.ATTEMPT: str(len(earlier) + 1),
                names.EXPERIMENT: cfg.name,
                names.PRESET: cfg.preset,
                names.SEED: str(cfg.seed),
                "ray.node_id": _node_id(),
                **(ctx.tags or {}),
                **(extra_tags or {}),
            },
        )
        self.run_id = run.info.run_id

    def start(self, sampled: dict) -> None:
        if self.client is None:
            return
        tracking.log_params(self.client, self.run_id, flatten(self.cfg))
        with tempfile.TemporaryDirectory() as tmp:  # one upload for both files
            (Path(tmp) / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=2))
            (Path(tmp) / "sampled.json").write_text(json.dumps(dict(sampled), indent=2))
            self.client.log_artifacts(self.run_id, tmp)

    def log_stage1(self, summary: dict) -> None:
        """Stage 1's own selections (``stage1_<selection>/<split>_<metric>``), logged only on a
        baseline row (stage2.method=none): its result is the stage-1 model, and its stage 2 only
        evaluates the last stage-1 model. An OT trial's run links the stage-1 build's run
        (``ot.stage1_run``), which holds these numbers, instead of repeating them."""
        if self.cfg.stage2.method == "none" and self.cfg.stage1.epochs > 0:
            # the row's result is stage 1's validation-selected epoch, and so is what a search
            # of its settings ranks (not the last epoch that stage 2 evaluates)
            picked = summary["validation_selected"]
            self.stage1_pick = (picked["val"]["balanced_acc"], picked["test"]["balanced_acc"])
        if self.client is not None and self.cfg.stage2.method == "none":
            flat = flat_summary(summary, names.STAGE1_PREFIX)
            tracking.log_metrics(self.client, self.run_id, flat, 0)

    def epoch(self, metrics: dict, epoch: int) -> dict:
        """Log one stage-2 epoch; returns the metrics with the selection so far added."""
        val = metrics.get("val_balanced_acc", float("nan"))
        if self.stage1_pick is not None:
            (self.best_val, self.best_test), self.best_epoch = self.stage1_pick, epoch
        elif improves(val, self.best_val):
            self.best_val, self.best_epoch = val, epoch
            self.best_test = metrics.get("test_balanced_acc", float("nan"))
        out = {
            **metrics,
            TIME_ATTR: epoch + 1,
            SELECT_METRIC: self.best_val,
            names.SELECTED_TEST: self.best_test,
            names.SELECTED_EPOCH: self.best_epoch + 1,
        }
        if self.client is not None:  # steps count epochs from 1, as TIME_ATTR does
            self._unsent.extend(tracking.metric_items(out, step=epoch + 1))
            if not self.buffered:
                self.flush()
        return out

    def flush(self) -> None:
        """Send the epochs' metrics :meth:`epoch` kept (buffered), in one batch."""
        if self.client is not None and self._unsent:
            tracking.log_metric_items(self.client, self.run_id, self._unsent)
            self._unsent = []

    def upload_progress(self, result: StageResult, data, summary: dict | None = None) -> None:
        """The selection so far, without its figures, and with ``summary`` the summary so far
        in the same round trips: what a run stopped without notice keeps (the data the
        figures are drawn from; drawing is most of an upload's time, so the PNGs are drawn
        once, when the run closes)."""
        self._upload(result, data, figures=False, summary=summary)

    def upload_selected(self, result: StageResult, data, *, figures: bool = True) -> None:
        """The selected epoch's artifacts: the data (``confusion.json``, ``per_class_acc.csv``,
        ``weight_mass.json``, ``sample_weights.npz``, ``best_model.pt``) and, with
        ``figures`` (and ``ctx.draw``), the PNGs drawn from it (:func:`figures.draw_figures`).
        Without them the run is tagged ``ot.figures=pending``: drawn later from the uploaded
        data (:mod:`orchestrator.figures`), by the sweep's end for its best settings."""
        self._upload(result, data, figures=figures)

    def _upload(self, result, data, *, figures: bool, summary: dict | None = None,
                tags: dict | None = None) -> None:  # fmt: skip
        """:meth:`upload_selected`, and with ``summary`` the summary too (``result.json`` among
        the files, its metrics in the batch): one artifact upload, then one batch of the
        epochs not yet sent, the summary's metrics and the tags (``tags`` and the figures')."""
        figures = figures and self.ctx.draw
        self.result, self._data, self._drawn = result, data, figures
        if self.client is None:
            return
        tags = dict(tags or {})
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            self._write_selection(d, result, data)
            if summary is not None:
                (d / "result.json").write_text(json.dumps(summary, indent=2))
            drawn = draw_figures(d) if figures else []
            self.client.log_artifacts(self.run_id, str(d))
            if drawn:  # the run page's description: the selection's numbers and its figures
                tags[names.NOTE] = describe(d, self.run_id, drawn)
        state = "drawn" if figures else "pending"
        if self._figures_tag != state:
            tags[names.FIGURES] = state
            self._figures_tag = state
        self._send(summary, tags)

    def _write_selection(self, d: Path, result: StageResult, data) -> None:
        """The files of :meth:`upload_selected` (no figures) into ``d``."""
        sel = result.selected
        counts = list(data.train_counts)
        test = sel.get("test", {})
        artifacts.write_per_class_csv(test["per_class_acc"], counts, d / "per_class_acc.csv")
        title = f"{self.cfg.name}: test, validation-selected epoch {sel['epoch'] + 1}"
        conf = {"confusion": test["confusion"], "train_counts": counts, "title": title}
        (d / "confusion.json").write_text(json.dumps({**conf, "epoch": sel["epoch"] + 1}))
        if result.weight_mass:
            raw = bool(result.raw_mass)
            mass = {
                "softmax_mass": result.weight_mass,  # [epoch][class], the OT measure
                "loss_uses": "raw" if raw else "softmax",
            }
            if raw:  # what the CE multiplies under stage2.loss_weights=raw
                mass["raw_mass"] = result.raw_mass
            if result.start_mass:  # before the first OT step
                mass["start_mass"] = result.start_mass
            (d / "weight_mass.json").write_text(json.dumps(mass))
            if result.sample_weights:
                per_sample = {
                    "weights": np.asarray(result.sample_weights, dtype=np.float64),
                    "labels": data.train.y.cpu().numpy().astype(np.int64),
                }
                if raw and result.raw_sample_weights:
                    per_sample["raw_weights"] = np.asarray(
                        result.raw_sample_weights, dtype=np.float64
                    )
                np.savez(d / FIGURE_SAMPLES, **per_sample)
        if result.state is not None:
            state = result.state
            if self.cfg.stage2.train == "classifier":
                # f1 is frozen: it is the stage-1 checkpoint (ot.stage1_hash), not a copy
                state = {k: v for k, v in state.items() if k.startswith("classifier.")}
            torch.save(state, d / "best_model.pt")

    def log_summary(self, summary: dict, tags: dict | None = None) -> None:
        """The summary so far (metrics and ``result.json``), the run left open: what a run
        stopped without notice keeps (a population uploads it before each report at which a
        scheduler may stop it). The epochs not yet sent, its metrics and ``tags`` go in one
        batch (:meth:`_send`)."""
        if self.client is None:
            return
        self._send(summary, tags or {})
        self.client.log_dict(self.run_id, summary, "result.json")

    def _send(self, summary: dict | None, tags: dict) -> None:
        """The epochs not yet sent, ``summary``'s metrics (at its last epoch) and ``tags``,
        in one batch."""
        if summary is not None:
            step = int(summary.get("last_epoch", {}).get("epoch", 0))
            self._unsent.extend(tracking.metric_items(flat_summary(summary), step=step))
        tracking.log_metric_items(self.client, self.run_id, self._unsent, tags=tags)
        self._unsent = []

    def draw_pending(self) -> None:
        """Before a run closes: the last selection uploaded without its figures, again with
        them (every file rewritten, so the figures and the data agree)."""
        if self.ctx.draw and self.result is not None and not self._drawn and self.result.selected:
            self.upload_selected(self.result, self._data)

    def finish(self, summary: dict, upload: tuple | None = None, tags: dict | None = None) -> None:
        """The summary up and the run FINISHED. ``upload``: the final ``(result, data)``,
        sent with the summary and ``tags`` (:meth:`_upload`: a population closes all its
        members at once, and each round trip to the store counts)."""
        self.closed = True
        if self.client is None:
            return
        if upload is not None:
            self._upload(*upload, figures=True, summary=summary, tags=tags)
        else:
            self.draw_pending()
            self.log_summary(summary, tags)
        self.client.set_terminated(self.run_id, status="FINISHED")

    def stopped_early(self, upload: tuple | None = None) -> None:
        """Stopped early inside its process (a population's member culled at a rung), with
        its final selection's ``upload`` (:meth:`finish`) or the one already up."""
        if self.client is None:
            return
        stopped = {names.STOPPED_EARLY: "true"}
        if upload is not None or self.result is not None:
            summary = scalar_summary(upload[0] if upload is not None else self.result)
            self.finish(summary, upload, tags=stopped)
            return
        self.closed = True
        self._send(None, stopped)
        self.client.set_terminated(self.run_id, status="FINISHED")

    def at_stop(self) -> None:
        """Tune is stopping the trial at a report: the scheduler stopped it, or the sweep was
        interrupted (Ctrl-C), which the trial cannot tell apart. The epochs and the summary so
        far go up and the run stays open: the sweep's driver closes it as stopped early when
        the scheduler stopped the trial, and ``--resume`` closes it as
        interrupted and trains the setting again when the sweep was interrupted. Nothing is
        drawn: Tune does not wait for a stopped trial's thread, so its process may exit at any
        moment (drawing then died mid-figure, printing a fatal-error trace)."""
        if self.client is None or self.closed:
            return
        self.flush()
        if self.result is not None:
            self.log_summary(scalar_summary(self.result))

    def fail(self, err: BaseException, *, diverged: bool = False) -> None:
        self.closed = True
        if self.client is None:
            return
        self.flush()
        if diverged:
            self.client.set_tag(self.run_id, names.DIVERGED, "true")
            self.draw_pending()  # its selection before it diverged
        msg = "".join(traceback.format_exception_only(type(err), err)).strip()
        self.client.set_tag(self.run_id, names.ERROR, msg[:5000])
        self.client.set_terminated(self.run_id, status="FAILED")


_REPORTED = (SELECT_METRIC, names.SELECTED_TEST, names.SELECTED_EPOCH, TIME_ATTR)


def replayed_reports(client, run) -> list[dict]:
    """What a finished run's trial reported to Tune, epoch by epoch: ``TIME_ATTR`` and the
    selection so far, read back from the run's metric history (epoch ``e`` at step ``e``).

    A trial restarted after its run finished (the driver died before the experiment state
    Tune restores recorded the trial's end) reports these again instead of training. Its
    final result alone would reach ASHA as one report at the last epoch: recorded at the
    highest rung only, with the final value, so later trials would be decided against other
    rungs than in the sweep that ran through."""
    by_step: dict[int, dict] = {}
    for key in _REPORTED:
        for m in client.get_metric_history(run.info.run_id, key):
            by_step.setdefault(m.step, {})[key] = m.value
    return [by_step[s] for s in sorted(by_step) if TIME_ATTR in by_step[s]]


def stage2_trial(config: dict, ctx: SweepContext) -> None:
    """Tune function trainable: ``config`` holds the sampled values by dotted config key.

    With ``ctx.workers > 1`` this function is the Tune-side driver of a Ray Train
    ``TorchTrainer`` whose workers train data-parallel (:func:`stage2_worker`); their metrics
    reach Tune through ``TuneReportCallback``.
    """
    tctx = tune.get_context()
    trial_id, name = tctx.get_trial_id(), tctx.get_trial_name()
    if ctx.workers <= 1:
        torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
        _run_trial(config, ctx, trial_id, name, tune.report, parallel=None)
        return
    c = tracking.client(ctx.tracking.uri)
    runs = tracking.trial_runs(c, ctx.tracking.experiment_id, ctx.parent_run_id, trial_id)
    done = [r for r in runs if r.info.status == "FINISHED"]
    if done:  # finished before the driver died: not run again
        for out in replayed_reports(c, done[0]):
            tune.report(out)
        return
    per_worker = {"CPU": ctx.cpus_per_trial}
    if ctx.gpus_per_worker:
        per_worker["GPU"] = ctx.gpus_per_worker
    trainer = TorchTrainer(
        stage2_worker,
        train_loop_config={"sampled": config, "ctx": ctx, "trial_id": trial_id, "name": name},
        scaling_config=ray.train.ScalingConfig(
            num_workers=ctx.workers,
            use_gpu=bool(ctx.gpus_per_worker),
            resources_per_worker=per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",  # deterministic: a restarted trial finds its run
            storage_path=ctx.train_storage,
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def reproduce_trial(config: dict, contexts: dict[str, SweepContext]) -> None:
    """Tune function trainable of ``orchestrator.reproduce``: ``config["run"]`` names one run of
    the table's grid; its context holds the resolved config and stage-1 entry."""
    run_key = config["run"]
    ctx = contexts[run_key]
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    trial_id = tune.get_context().get_trial_id()
    _run_trial({}, ctx, trial_id, run_key, tune.report, parallel=None)


def stage2_worker(loop_config: dict) -> None:
    """One Ray Train worker of a data-parallel trial (rank 0 tracks in MLflow)."""
    ctx: SweepContext = loop_config["ctx"]
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    parallel = DataParallel.from_process_group()
    _run_trial(
        loop_config["sampled"],
        ctx,
        loop_config["trial_id"],
        loop_config["name"],
        ray.train.report,
        parallel=parallel,
        device=ray.train.torch.get_device(),
    )


def _own_stage1(ctx: SweepContext, cfg: ExperimentConfig) -> SweepContext:
    """A sampled config whose stage 1 differs from the sweep's (a stage-1 search space) gets
    its own cached stage 1, built here in the trial when absent or corrupt."""
    key = stage1_hash(cfg)
    if key == ctx.stage1_key or not ctx.storage_uri:
        return ctx
    storage = Storage(ctx.storage_uri)
    try:
        entry = verify_entry(storage, key)
    except CorruptEntry:
        invalidate(storage, key)
        entry = None
    if entry is None or (needs_features(cfg) and not entry.has_features):
        # on stage1.threads threads, in the trial's CPUs: the stage 1 its key names
        entry = build_entry(cfg, ctx.storage_uri, ctx.tracking, sweep_run_id=ctx.parent_run_id)
    return dataclasses.replace(ctx, entry_uri=entry.uri, stage1_key=key)


def _run_trial(
    config: dict,
    ctx: SweepContext,
    trial_id: str,
    name: str,
    report,
    *,
    parallel,
    device: torch.device | None = None,
) -> None:
    cfg = apply_values(ctx.base, config)
    if parallel is None:
        ctx = _own_stage1(ctx, cfg)
    rank0 = parallel is None or parallel.rank == 0
    extra = {names.WORKERS: str(parallel.world)} if parallel is not None else {}
    tracker = TrialTracker(ctx, cfg, trial_id, name, enabled=rank0, extra_tags=extra)
    if tracker.finished_run is not None:
        for out in replayed_reports(tracker.client, tracker.finished_run):
            report(out)
        return
    try:
        tracker.start(config)
        stage1: Stage1Output = read_entry(ctx.entry_uri, features=needs_features(cfg))
        tracker.log_stage1(stage1_summary(cfg, stage1.info))

        last_epoch = reported_epochs(cfg) - 1
        pending: list[dict] = []

        def on_epoch(stage: str, epoch: int, metrics: dict) -> None:
            if parallel is not None:  # collective: every rank's shard size, logged by rank 0
                counts = parallel.gather_counts(int(metrics.pop("shard_samples")))
                metrics.update({f"shard_samples_rank{r}": n for r, n in enumerate(counts)})
            out = tracker.epoch(metrics, epoch)
            if epoch == 0 and rank0:
                inject_fault()
            _jitter()
            if epoch == last_epoch:
                # Reported after the run is closed: Tune stops a trial at its last report.
                pending.append(out)
            else:
                report(out)

        s2, data = run_stage2(
            cfg,
            stage1,
            callback=on_epoch,
            device=device or pick_device(),
            on_improve=tracker.upload_progress,
            parallel=parallel,
        )
        tracker.upload_selected(s2, data)
        tracker.finish(scalar_summary(s2))
        for out in pending:
            report(out)
    except SystemExit:  # Tune stopped this trial at a report (scheduler or interrupt)
        tracker.at_stop()
        raise
    except FloatingPointError as err:
        # A diverged setting is a result of the search, not a fault to retry: the run is
        # marked FAILED (tag ot.diverged) and the searcher is told the selection so far.
        tracker.fail(err, diverged=True)
        best_test = tracker.best_test
        report(
            {
                SELECT_METRIC: max(tracker.best_val, 0.0),
                names.SELECTED_TEST: 0.0 if best_test != best_test else best_test,
                "diverged": 1,
                TIME_ATTR: cfg.stage2.epochs,
            }
        )
    except BaseException as err:
        if not tracker.closed:
            tracker.fail(err)
        raise
