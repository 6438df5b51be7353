"""What a sweep runs: the space it searches (pins from ``--set``), the settings per trial
(populations), how many trials at once and with what resources, and the Tuner: Optuna TPE (or
:class:`~orchestrator.search.PopulationSearch`) with ASHA on stage-2 epochs, both in trial
order by default, or the interrupted Tuner restored."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import textwrap

import optuna
import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from search_spaces import Space
from trainables.config import unused_fields, value_at
from trainables.population import VARYING, population_reason

from . import names, progress, runtime
from .cli import CommandError
from .scheduler import OrderedASHA, RungsKept
from .search import InOrder, PinnedSpace, PopulationSearch
from .storage import Storage
from .trainable import ASHA_REDUCTION, SweepContext, asha_grace, reported_epochs

__all__ = [
    "Search",
    "concurrency",
    "make_tuner",
    "population_blocker",
    "population_size",
    "rung_lag",
    "space_source",
    "trial_context",
    "trial_cpus",
    "trials_that_fit",
    "workers_per_trial",
]

_DRIVER_CPU = 0.01  # the Tune-side driver of a multi-worker trial only waits on its workers


def workers_per_trial(args: argparse.Namespace) -> int:
    if args.workers_per_trial:
        return args.workers_per_trial
    return int(args.gpus_per_trial) if args.gpus_per_trial >= 2 else 1


@dataclasses.dataclass(frozen=True)
class Search:
    """What a sweep searches: the space, the searched keys a ``--set`` pins (with their typed
    values: they leave the search and every setting gets them), the space's keys the config
    does not read (``unused_fields``: a dimension that would change nothing, held at the
    config's value), the first setting asked (the space's published one, without both), and
    the whole published setting, which relative ranges are placed around (``Space.scaled``)."""

    space_of: Space
    pinned: dict
    first: dict
    unread: dict = dataclasses.field(default_factory=dict)
    around: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, space: Space, cfg, overrides: list[str]) -> Search:
        best = space.best(cfg)
        keys = [item.split("=", 1)[0].strip() for item in overrides]
        pinned = {k: value_at(cfg, k) for k in keys if k in best}
        unused = unused_fields(cfg)
        unread = {k: value_at(cfg, k) for k in best if k in unused and k not in pinned}
        first = {k: v for k, v in best.items() if k not in pinned and k not in unread}
        return cls(space, pinned, first, unread, best)

    @property
    def searched(self) -> list[str]:
        return list(self.first)

    def space(self):
        """The define-by-run space the searcher runs (``search.PinnedSpace``)."""
        return PinnedSpace(self.space_of.name, {**self.unread, **self.pinned}, self.around)

    def announce(self) -> None:
        """One line per pinned key; a one-setting search said as such."""
        for key in self.unread:
            print(f"{key} is not read by this configuration: not searched", flush=True)
        for key, value in self.pinned.items():
            print(f"{key} fixed at {value}: no longer searched", flush=True)
        if (self.pinned or self.unread) and not self.searched:
            print("every searched key is fixed: one setting, run once", flush=True)


def population_blocker(args: argparse.Namespace, cfg, search: Search) -> str | None:
    """Why this sweep's trials cannot train populations (None when they can); an explicit
    ``--population`` above 1 is refused with it, before anything starts. A pinned key is
    the same for every member, so it does not count."""
    reason = population_reason(cfg.stage2)
    other = [k for k in search.searched if not (k.startswith("stage2.") and k[7:] in VARYING)]
    if reason is None and other:
        reason = f"the space searches {other[0]}, which members cannot set for themselves"
    if reason is None and workers_per_trial(args) > 1:
        reason = "data-parallel trials (--workers-per-trial) train one setting each"
    if reason and args.population > 1:
        raise CommandError(f"--population {args.population}: {reason}")
    return reason


def rung_lag(population: int, conc: int) -> int:
    """In trial order, how many trials back ASHA's comparisons start (``OrderedASHA``): 1 for
    population trials (every earlier trial, as if run one after another: they start together
    and run at the same pace, so the waits cost nothing measured), twice the concurrency for
    single trials (whose settings run at different speeds: with 1, a trial that overtakes an
    earlier one would idle its slot at the rung until that one arrives)."""
    return 1 if population > 1 else 2 * conc


def population_size(args: argparse.Namespace, cfg, search: Search, fits: int) -> int:
    """Settings per Tune trial: ``--population`` where the experiment's stage 2 and the space
    allow a population (cached features, single-worker trials, only member-level keys
    searched), else 1; by default as many as fill the trial slots, at most 16."""
    if args.population == 1:
        return 1
    reason = population_blocker(args, cfg, search)
    if reason:  # the default would have used populations: say what stops them
        print(f"one setting per trial (no populations): {reason}", flush=True)
        return 1
    if args.population:
        return args.population
    return max(1, min(16, math.ceil(args.trials / max(1, fits))))


def trial_cpus(space: Space, cfg, cpus: float) -> float:
    """A trial's CPUs: a stage-1 space's trial builds its own stage 1 on ``stage1.threads``
    threads, so it asks for that many (fewer oversubscribe the node: on 2 cores, two 1-CPU
    trials building at once, each on 2 threads, took minutes a build)."""
    return max(cpus, float(cfg.stage1.threads)) if space.stage1 else cpus


def trials_that_fit(args: argparse.Namespace) -> int:
    workers = workers_per_trial(args)
    driver = _DRIVER_CPU if workers > 1 else 0.0
    return runtime.fitting_trials(args.cpus_per_trial * workers + driver, args.gpus_per_trial)


def concurrency(args: argparse.Namespace, population: int = 1) -> int:
    res = ray.cluster_resources()
    workers = workers_per_trial(args)
    driver = _DRIVER_CPU if workers > 1 else 0.0
    fits = trials_that_fit(args)
    if args.gpus_per_trial > 0 and fits < 1:
        raise CommandError(
            f"--gpus-per-trial {args.gpus_per_trial} but the cluster has {res.get('GPU', 0)} GPUs"
        )
    if fits < 1:
        need = args.cpus_per_trial * workers + driver
        raise CommandError(
            f"a trial needs {need:g} CPUs ({workers} x --cpus-per-trial {args.cpus_per_trial:g}"
            f"{' + its driver' if driver else ''}) but the cluster has {res.get('CPU', 0):g}"
        )
    want = args.concurrency or fits
    return max(1, min(want, fits, math.ceil(args.trials / population)))


def trial_context(
    cfg, entry, spec, parent: str, sweep_id: str, storage: Storage, args, search, stage1_run
):
    """(the trials' shared context, their resources)."""
    ctx = SweepContext(
        base=cfg,
        entry_uri=entry.uri,
        stage1_key=entry.key,
        tracking=spec,
        parent_run_id=parent,
        sweep_id=sweep_id,
        cpus_per_trial=args.cpus_per_trial,
        storage_uri=storage.uri,
        tags={names.STAGE1_RUN: stage1_run} if stage1_run else None,
        draw=False,  # the best --figures settings' at the sweep's end
    )
    workers = workers_per_trial(args)
    if workers > 1 and search.space_of.stage1:
        raise CommandError(
            "a stage-1 search space runs single-worker trials (no --workers-per-trial)"
        )
    if workers <= 1:
        return ctx, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    ctx = dataclasses.replace(
        ctx,
        workers=workers,
        gpus_per_worker=args.gpus_per_trial / workers,
        train_storage=storage.child_uri(args.name, sweep_id, "train"),
    )
    return ctx, {"cpu": _DRIVER_CPU}


def make_tuner(
    trainable, cfg, args, search: Search, storage: Storage, sweep_id: str, conc, callback,
    population=1,
):  # fmt: skip
    """A new Tuner (Optuna TPE seeded from the config, the published setting first, ASHA on
    stage-2 epochs), or the interrupted one restored."""
    exp_path = storage.child_uri(args.name, sweep_id)
    if args.resume and tune.Tuner.can_restore(exp_path):
        print(f"resuming {exp_path}", flush=True)
        return tune.Tuner.restore(
            exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    epochs = reported_epochs(cfg)  # a baseline's trial reports once: nothing to stop early
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not its "new study" INFO line
    if population > 1:
        searcher = PopulationSearch(
            search.space(),
            population=population,
            total=args.trials,
            metric=names.SELECT_METRIC,
            mode="max",
            points_to_evaluate=[search.first],
            seed=cfg.seed,
        )
    else:
        searcher = OptunaSearch(
            space=search.space(),
            metric=names.SELECT_METRIC,
            mode="max",
            points_to_evaluate=[search.first],
            seed=cfg.seed,
        )
    asha = dict(
        time_attr=names.TIME_ATTR,
        max_t=max(1, epochs),
        grace_period=asha_grace(epochs),
        reduction_factor=ASHA_REDUCTION,
    )
    if args.order == "trial":  # the outcome does not hang on timing
        searcher = InOrder(searcher, lag=2 * conc)
        scheduler = OrderedASHA(lag=rung_lag(population, conc), **asha)
    else:
        scheduler = ASHAScheduler(**asha)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=names.SELECT_METRIC,
            mode="max",
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=math.ceil(args.trials / population),
            max_concurrent_trials=conc,
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            # A stopped trial's thread is joined before its actor takes the next trial;
            # tearing actors down mid-thread instead can abort the process (seen here).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=sweep_id,
            storage_path=storage.child_uri(args.name),
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            callbacks=[
                callback,
                RungsKept(scheduler),  # Tune saves no scheduler: --resume keeps ASHA's rungs
                *progress.callbacks(args, max_t=max(1, epochs)),
                # the one file per trial Tune's result grid reads (runtime.init_ray turns
                # Tune's automatic CSV, JSON and TensorBoard writers off)
                JsonLoggerCallback(),
            ],
            verbose=progress.tune_verbose(args),
        ),
    )


def space_source(space: Space) -> str:
    """What the sweep's run records of its space: its name and description, and the source of
    its define-by-run body and of its first setting."""
    body = textwrap.dedent(inspect.getsource(space.suggest))
    ranges = getattr(space.suggest, "__self__", None)  # a Stage2Ranges' suggest
    return (
        f"# search space {space.name!r}: {space.about}\n"
        + (f"# ranges: {ranges!r}\n" if ranges is not None else "")
        + f"{body}\n{inspect.getsource(space.first)}"
    )
