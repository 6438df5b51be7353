"""A sweep's steps (``orchestrator.sweep`` reads the command line, then runs
:func:`run_sweep`): the config and its checks, the space, MLflow's parent run, Ray, stage 1
(built once, cached), the Tuner's trials, then the ranking, the summary, the control and the
links (:mod:`~orchestrator.sweep_results`)."""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import ray
from ray import tune

from search_spaces import SEARCH_SPACES, SPACES
from trainables.config import flatten

from . import cli, names, ray_internals, runtime, tracking, ui, views
from .cli import REPO, CommandError
from .population import population_trial
from .stages import ensure_stage1
from .storage import Storage
from .sweep_record import RECORDED_ARGS, resume_args, write_record
from .sweep_results import (
    FinishStopped,
    draw_best,
    finish_parent,
    link_best,
    report_control,
    start_control,
    summarize,
    supersede_unknown,
)
from .sweep_setup import (
    Search,
    concurrency,
    make_tuner,
    population_blocker,
    population_size,
    space_source,
    trial_context,
    trial_cpus,
    trials_that_fit,
)
from .trainable import stage2_trial

__all__ = ["run", "run_sweep"]


def run(args: argparse.Namespace) -> int:
    """The sweep of the parsed command line; a user-facing failure is one line, status 2."""

    def body() -> int:
        try:  # the scheduler reaches into Tune: only on a Ray it was tested with
            ray_internals.check_ray_version()
        except RuntimeError as err:
            raise CommandError(str(err)) from None
        return run_sweep(args)

    return cli.run_command(body)


def _open_parent(c, exp_id: str, cfg, args, search: Search, sweep_id: str, rec: dict) -> str:
    """The sweep's MLflow parent run: reopened on resume (attempts left RUNNING closed as
    KILLED: they died with the old driver), else created with the config, the space and the
    keys a ``--set`` pinned (param ``sweep.pinned``)."""
    space = search.space_of
    if rec:
        parent = rec["parent_run_id"]
        c.update_run(parent, status="RUNNING")
        c.set_tag(parent, names.RESUMED, time.strftime("%Y-%m-%dT%H:%M:%S"))
        runs = tracking.runs_with_tags(c, exp_id, {names.PARENT: parent})
        tracking.close_running(c, runs, tag=names.INTERRUPTED, status="KILLED")
        return parent
    parent = c.create_run(
        exp_id,
        run_name=sweep_id,
        tags={
            names.KIND: "sweep",
            names.SWEEP_ID: sweep_id,
            names.EXPERIMENT: cfg.name,
            names.TABLE: cfg.table,
            names.PRESET: cfg.preset,
            names.SEED: str(cfg.seed),
            names.SEARCH_SPACE: space.name,
            names.GIT_COMMIT: tracking.git_commit(REPO),
        },
    ).info.run_id
    tracking.log_params(c, parent, flatten(cfg))
    tracking.log_params(
        c,
        parent,
        {
            "sweep.trials": args.trials,
            "sweep.seed": cfg.seed,
            "sweep.cpus_per_trial": args.cpus_per_trial,
            "sweep.gpus_per_trial": args.gpus_per_trial,
            "sweep.search_space": space.name,
            "sweep.pinned": ", ".join(f"{k}={v}" for k, v in search.pinned.items()) or "none",
            "sweep.unread": ", ".join(search.unread) or "none",
        },
    )
    c.log_text(parent, space_source(space), "search_space.py")
    c.log_dict(parent, search.first, "search_space_best.json")
    return parent


@dataclass
class _Sweep:
    """What the steps of one sweep share once its parent run is open."""

    args: argparse.Namespace
    cfg: object
    search: Search
    storage: Storage
    local_root: object
    sweep_id: str
    uri: str
    exp_id: str
    c: object
    parent: str
    record: dict = field(default_factory=dict)

    @property
    def spec(self) -> tracking.TrackingSpec:
        return tracking.TrackingSpec(self.uri, self.exp_id)


def run_sweep(args: argparse.Namespace) -> int:
    """The sweep's steps; its exit status (0, 1 when no trial finished, 130 interrupted)."""
    storage, local_root = cli.open_storage(args.storage, create=not args.print_config)
    sweep_id, rec = resume_args(storage, args)
    asked = {k: getattr(args, k) for k in RECORDED_ARGS}  # what --resume holds the line to
    cfg = cli.config_from_args(args)
    if args.print_config:
        runtime.print_configs([("", cfg)], full=args.print_config == "full")
        return 0
    search = _checked_search(args, cfg)
    sw = _open(args, cfg, search, storage, local_root, sweep_id, rec)
    entry, stage1_run = _stage1(sw)
    population = population_size(args, cfg, search, trials_that_fit(args))
    args.population = population
    conc = concurrency(args, population)
    sw.record = {
        "sweep_id": sweep_id,
        "name": args.name,
        "status": "running",
        "parent_run_id": sw.parent,
        "experiment_id": sw.exp_id,
        "tracking_uri": sw.uri,
        "stage1_key": entry.key,
        "args": {**asked, "population": population, "seed": cfg.seed},
    }
    write_record(storage, sw.record)
    results = _trials(sw, entry, stage1_run, conc)
    if results is None:
        return 130
    best = summarize(cfg, sw.c, sw.exp_id, sw.parent, results, conc, population, args.order)
    control = start_control(cfg, best, args, entry)
    draw_best(sw.c, best.get("runs", []), args.figures)  # while the control trains
    return _end(sw, best, results, control, stage1_run)


def _checked_search(args: argparse.Namespace, cfg) -> Search:
    """The space (refused in one line where it does not fit), the cluster's address and the
    config checked, the pins announced: everything that can fail before anything starts."""
    space = SEARCH_SPACES[args.space] if args.space else SPACES[args.name]
    try:  # a space that fits only some experiments says so first
        space.check(cfg)
    except ValueError as err:
        raise CommandError(str(err)) from None
    cli.check_ray_address(args.address)  # a cluster that is not there: said before any wait
    runtime.preflight(cfg)
    search = Search.of(space, cfg, args.overrides)
    # the method's own knobs, apart from the trained stage's optimiser around them
    own = [k for k in search.around if k not in (*space.scaled, *space.halved)]
    unread = [k for k in own if k in search.unread]
    if (search.unread and not (search.first or search.pinned)) or (own and unread == own):
        raise CommandError(
            f"--space {space.name} searches {', '.join(unread or search.unread)}, which this "
            f"configuration does not read: {space.about}"
        )
    search.announce()
    cpus = trial_cpus(space, cfg, args.cpus_per_trial)
    if cpus != args.cpus_per_trial and "cpus_per_trial" not in args.given:
        print(f"each trial builds its stage 1 on stage1.threads={cfg.stage1.threads} CPUs: "
              f"--cpus-per-trial {cpus:g} (give it to choose)", flush=True)  # fmt: skip
        args.cpus_per_trial = cpus
    if not search.searched:
        args.trials = 1
    population_blocker(args, cfg, search)
    return search


def _open(args, cfg, search: Search, storage: Storage, local_root, sweep_id: str, rec: dict):
    """The tracking store, Ray, and the sweep's parent run (watched: a failure closes it)."""
    uri, exp_id, c = cli.open_tracking(
        rec.get("tracking_uri") or args.tracking_uri, storage, local_root, cfg.name
    )
    runtime.init_ray(args.address)  # before the parent run: a cluster that is not there opens none
    parent = _open_parent(c, exp_id, cfg, args, search, sweep_id, rec)
    cli.watch_run(c, parent)
    views.publish(c, exp_id, searched=search.searched)
    trials = f"{args.trials} trial{'s' if args.trials != 1 else ''}"
    print(f"sweep {sweep_id}: {cfg.name}, {trials}; MLflow {uri}", flush=True)
    return _Sweep(args, cfg, search, storage, local_root, sweep_id, uri, exp_id, c, parent)


def _stage1(sw: _Sweep) -> tuple:
    """(the stage-1 cache entry, its build's MLflow run or None), built on the cluster when
    absent; both tagged on the parent run."""
    try:
        entry, _built = ensure_stage1(
            sw.cfg,
            sw.storage,
            sw.spec,
            max_cpus=runtime.node_cpus(),  # it asks for its stage1.threads, at most this
            num_gpus=1 if sw.args.gpus_per_trial > 0 else 0,
            sweep_run_id=sw.parent,
        )
    except ray.exceptions.RayTaskError as err:
        raise cli.stage1_failure(err, sw.c, sw.parent) from None
    sw.c.set_tag(sw.parent, names.STAGE1_HASH, entry.key)
    stage1_run = tracking.stage1_build_run(sw.c, sw.exp_id, entry.key)
    if stage1_run:
        sw.c.set_tag(sw.parent, names.STAGE1_RUN, stage1_run)
    return entry, stage1_run


def _trials(sw: _Sweep, entry, stage1_run: str | None, conc: int):
    """The Tuner's trials (restored on ``--resume``); their results, or None when a stop
    signal ended them (the parent run then closed KILLED, the resume command printed)."""
    args, population = sw.args, sw.args.population
    ctx, resources = trial_context(
        sw.cfg, entry, sw.spec, sw.parent, sw.sweep_id, sw.storage, args, sw.search, stage1_run
    )
    fn = stage2_trial
    if population > 1:
        fn = population_trial
        print(
            f"{args.trials} settings as {math.ceil(args.trials / population)} trials of up to "
            f"{population} (a population each: one child run per setting)",
            flush=True,
        )
    trainable = tune.with_resources(tune.with_parameters(fn, ctx=ctx), resources)
    finisher = FinishStopped(sw.spec, sw.parent)
    tuner = make_tuner(
        trainable, sw.cfg, args, sw.search, sw.storage, sw.sweep_id, conc, finisher, population,
    )  # fmt: skip
    exp_path = sw.storage.child_uri(args.name, sw.sweep_id)
    if args.resume and tune.Tuner.can_restore(exp_path):
        supersede_unknown(sw.c, sw.exp_id, sw.parent, exp_path)
    # A resumed searcher is told the restored trials' epochs again; Optuna ignores a step it
    # has already seen and warns once per report (hundreds of lines). Only that one is hidden.
    warnings.filterwarnings("ignore", message=r"The reported value is ignored because this")
    results, interrupted = cli.fit(tuner)
    if not interrupted:
        return results
    sw.c.set_tag(sw.parent, names.INTERRUPTED, "true")
    sw.c.set_terminated(sw.parent, status="KILLED")
    resume = f"orchestrator.sweep {args.name} --resume --storage {sw.storage.uri}"
    print(
        f"interrupted: the sweep's state is saved; resume it with: {cli.command(resume)}",
        file=sys.stderr,
    )
    return None


def _end(sw: _Sweep, best: dict, results, control, stage1_run: str | None) -> int:
    """The control, the links and the parent run closed; the record marked finished; where
    to look. 1 when no trial finished."""
    report_control(control, sw.cfg, best, sw.c, sw.parent, n_ranked=best.get("ranked", 0))
    link_best(sw.c, sw.exp_id, sw.parent, (best.get("metrics") or {}).get("trial_id"), stage1_run)
    ok = finish_parent(sw.c, sw.parent, best, results)
    sw.record["status"] = "finished"
    write_record(sw.storage, sw.record)
    print(
        f"\nMLflow: experiment '{sw.cfg.name}', parent run {sw.parent}\n"
        f"open the UI: {cli.ui_hint(sw.uri, sw.storage, sw.local_root)}\n"
        f"the trials, ranked: {views.view_url(ui.base_url(sw.uri), sw.exp_id)}\n"
        f"figures drawn for the best {sw.args.figures}; any other run's: {_figures_command(sw)}"
    )
    if not ok:
        print("error: no trial finished; see the errors above", file=sys.stderr)
        return 1
    return 0


def _figures_command(sw: _Sweep) -> str:
    """The command that draws the figures of this sweep's other runs, as typed."""
    flags = [sw.sweep_id]
    if sw.args.storage:
        flags.append(f"--storage {sw.args.storage}")
    if sw.args.tracking_uri:
        flags.append(f"--tracking-uri {sw.args.tracking_uri}")
    return cli.command("orchestrator.figures " + " ".join(flags))
