"""``python -m orchestrator.sweep NAME``: search the OT method's stage-2 knobs with Ray Tune.

Stage 1 runs once per content hash (a Ray task; cached in the run storage), then a Tuner runs
the stage-2 trials: OptunaSearch (seeded TPE, the paper's settings enqueued first) with ASHA
on stage-2 epochs (by default both in trial order: ``scheduler.OrderedASHA`` and
``search.InOrder``; ASHA's rungs kept across ``--resume`` by ``scheduler.RungsKept``), ranked
on validation balanced accuracy only. MLflow gets one parent run per sweep, one child run per
trial and one run per stage-1 build.

Local by default (``ray.init()`` here, MLflow in ``<storage>/mlflow.db``); on a cluster pass
``--address`` (or RAY_ADDRESS), a shared ``--storage`` and ``--tracking-uri``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

from search_spaces import EXPERIMENTS, SEARCH_SPACES, SPACES, Space
from search_spaces.paper import paper_number
from trainables.config import apply_values, flatten, value_at

from . import cli, names, tracking, ui, views
from .cli import REPO, CommandError
from .storage import Storage

__all__ = ["main", "supersede_unknown"]

_DRIVER_CPU = 0.01  # the Tune-side driver of a multi-worker trial only waits on its workers
# What a resumed sweep takes from its record; the command line may repeat them, not change them.
_RECORDED_ARGS = (
    "trials",
    "seed",
    "overrides",
    "preset",
    "smoke",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_failures",
    "workers_per_trial",
    "space",
    "population",
    "order",
)


def _parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog="python -m orchestrator.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="search spaces (--space):\n"
        + "\n".join(f"  {s.name:<14}{s.about}" for s in SEARCH_SPACES.values()),
    )
    p.add_argument("name", nargs="?", help="registered experiment (see --list)")
    p.add_argument("--list", action="store_true", help="list the registered experiments")
    p.add_argument("--trials", type=int, default=8, help="number of trials (default 8)")
    p.add_argument("--concurrency", type=int, default=0, help="trials at once (default: what fits)")
    cli.add_config_args(p)
    p.add_argument(
        "--space", choices=sorted(SEARCH_SPACES), default=None, metavar="SPACE",
        help="search space (default: the experiment's own, see --list); the spaces are below",
    )  # fmt: skip
    cli.add_cluster_args(p)
    p.add_argument(
        "--workers-per-trial", type=int, default=0,
        help="Ray Train workers per trial, data-parallel (default: 1, or the GPUs when > 1)",
    )  # fmt: skip
    p.add_argument(
        "--population", type=int, default=0,
        help="settings each trial trains at once on cached features (default: up to 16 where "
        "stage 2 runs on cached features, 1 where f1 trains); --trials counts settings",
    )  # fmt: skip
    p.add_argument(
        "--order", choices=("trial", "arrival"), default="trial",
        help="trial (default): ASHA decides and TPE is told in the order trials were created, "
        "so the outcome does not depend on timing (a trial can wait at a rung for an earlier "
        "one); arrival: Tune's own, as results arrive",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the last interrupted sweep")
    return p


def _list() -> None:
    """Each experiment: its table, its own search space and what it is."""
    cfgs = {name: build() for name, build in EXPERIMENTS.items()}
    width = max(len(n) for n in cfgs)
    tables = max(len(c.table) for c in cfgs.values())
    spaces = max(len(s.name) for s in SPACES.values())
    for name, cfg in cfgs.items():
        space = SPACES[name].name
        print(f"{name:<{width}}  {cfg.table:<{tables}}  {space:<{spaces}}  {cfg.description}")


def _workers(args: argparse.Namespace) -> int:
    if args.workers_per_trial:
        return args.workers_per_trial
    return int(args.gpus_per_trial) if args.gpus_per_trial >= 2 else 1


@dataclasses.dataclass(frozen=True)
class Search:
    """What a sweep searches: the space, the searched keys a ``--set`` pins (with their typed
    values: they leave the search and every setting gets them), and the first setting asked
    (the space's published one, pinned keys left out)."""

    space_of: Space
    pinned: dict
    first: dict

    @classmethod
    def of(cls, space: Space, cfg, overrides: list[str]) -> Search:
        best = space.best(cfg)
        keys = [item.split("=", 1)[0].strip() for item in overrides]
        pinned = {k: value_at(cfg, k) for k in keys if k in best}
        return cls(space, pinned, {k: v for k, v in best.items() if k not in pinned})

    @property
    def searched(self) -> list[str]:
        return list(self.first)

    def space(self):
        """The define-by-run space the searcher runs (``search.PinnedSpace``)."""
        from .search import PinnedSpace

        return PinnedSpace(self.space_of.name, self.pinned)

    def announce(self) -> None:
        """One line per pinned key; a one-setting search said as such."""
        for key, value in self.pinned.items():
            print(f"{key} fixed at {value}: no longer searched", flush=True)
        if self.pinned and not self.searched:
            print("every searched key is fixed: one setting, run once", flush=True)


def _no_population(args: argparse.Namespace, cfg, search: Search) -> str | None:
    """Why this sweep's trials cannot train populations (None when they can); an explicit
    ``--population`` above 1 is refused with it, before anything starts. A pinned key is
    the same for every member, so it does not count."""
    from trainables.population import VARYING, population_reason

    reason = population_reason(cfg.stage2)
    other = [k for k in search.searched if not (k.startswith("stage2.") and k[7:] in VARYING)]
    if reason is None and other:
        reason = f"the space searches {other[0]}, which members cannot set for themselves"
    if reason is None and _workers(args) > 1:
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
    reason = _no_population(args, cfg, search)
    if reason:  # the default would have used populations: say what stops them
        print(f"one setting per trial (no populations): {reason}", flush=True)
        return 1
    if args.population:
        return args.population
    return max(1, min(16, math.ceil(args.trials / max(1, fits))))


def _fits(args: argparse.Namespace) -> int:
    workers = _workers(args)
    driver = _DRIVER_CPU if workers > 1 else 0.0
    return cli.fitting_trials(args.cpus_per_trial * workers + driver, args.gpus_per_trial)


def _concurrency(args: argparse.Namespace, population: int = 1) -> int:
    import ray

    res = ray.cluster_resources()
    workers = _workers(args)
    driver = _DRIVER_CPU if workers > 1 else 0.0
    fits = _fits(args)
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


class _FinishStopped:
    """Tune callback: a trial the scheduler stopped gets its MLflow runs closed as FINISHED
    (the trial closes them itself when it can; this covers a process ended mid-report), and
    the figures of runs whose process ended before drawing them (``ot.figures=pending``) are
    drawn from their uploaded data, in a background thread (``join()`` after the fit). The
    callback is pickled with the Tuner's state, so the thread and its jobs live in
    ``_DRAWING``, keyed by the callback's id, in the driver."""

    def __new__(cls, spec: tracking.TrackingSpec, parent_run_id: str):
        from ray.tune import Callback

        class FinishStopped(Callback):
            def __init__(self) -> None:
                self.key = f"{parent_run_id}-{id(self)}"

            def on_trial_complete(self, iteration, trials, trial, **info):
                from .population import POPULATION

                c = tracking.client(spec.uri)
                by = POPULATION if "population" in trial.config else "ray.trial_id"
                tags = {names.PARENT: parent_run_id, by: trial.trial_id}
                runs = tracking.all_runs_with_tags(c, spec.experiment_id, tags)
                tracking.close_running(c, runs, tag=names.STOPPED_EARLY, status="FINISHED")
                for run in runs:
                    if run.data.tags.get(names.FIGURES) == "pending":
                        pool, jobs = _drawing(self.key)
                        run_id = run.info.run_id
                        jobs.append((run_id, pool.submit(_draw_pending, spec.uri, run_id)))

            def join(self) -> None:
                """Wait for the figures still being drawn. A drawing that fails is reported
                (one line each) and loses nothing else: the run keeps its data and its tag."""
                pool, jobs = _DRAWING.pop(self.key, (None, []))
                if pool is not None:
                    pool.shutdown(wait=True)
                for run_id, job in jobs:
                    err = job.exception()
                    if err is not None:
                        print(
                            f"warning: the figures of run {run_id} were not drawn: "
                            f"{type(err).__name__}: {err}",
                            file=sys.stderr,
                        )

        return FinishStopped()


_DRAWING: dict[str, tuple] = {}  # callback key -> (its one drawing thread, [(run id, job)])


def _drawing(key: str) -> tuple:
    if key not in _DRAWING:
        from concurrent.futures import ThreadPoolExecutor

        _DRAWING[key] = (ThreadPoolExecutor(max_workers=1), [])  # matplotlib: one at a time
    return _DRAWING[key]


def _draw_pending(uri: str, run_id: str) -> None:
    from .trainable import draw_uploaded_figures

    draw_uploaded_figures(tracking.client(uri), run_id)  # a client of this thread's own


def draw_left_pending(c, exp_id: str, parent: str) -> int:
    """Draw the figures of this sweep's closed runs still tagged ``ot.figures=pending``: a
    stopped trial leaves them to the driver's callback, and a driver that died before drawing
    them (then ``--resume``) would otherwise leave them undrawn, the trial being finished. A
    drawing that fails is reported in one line and loses nothing else. Returns how many were
    drawn."""
    from .trainable import draw_uploaded_figures

    left = tracking.all_runs_with_tags(c, exp_id, {names.PARENT: parent, names.FIGURES: "pending"})
    drawn = 0
    for run in left:
        if run.info.status != "FINISHED":  # a failed attempt, or a run still open
            continue
        try:
            drawn += draw_uploaded_figures(c, run.info.run_id)
        except Exception as err:  # reported; the sweep's results stand
            print(
                f"warning: the figures of run {run.info.run_id} were not drawn: "
                f"{type(err).__name__}: {err}",
                file=sys.stderr,
            )
    return drawn


def supersede_unknown(c, exp_id: str, parent: str, exp_path: str) -> int:
    """On ``--resume``, before the restored Tuner runs: close as superseded (KILLED, tag
    ``ot.superseded``) this sweep's finished trial runs whose Tune trial is not in the
    experiment state Tune restores. Tune saves that state as the sweep goes, and the copy in
    the storage can lag what the trials recorded in MLflow (an upload still under way when
    the driver died; a ``TUNE_GLOBAL_CHECKPOINT_S`` period): a trial created after it is
    unknown to the restored Tuner, whose searcher asks for it again (in trial order the same
    setting, under a new trial id), and it trains again. Its earlier run, left FINISHED,
    would count the setting twice. Returns how many were closed."""
    import logging

    from ray.tune import ExperimentAnalysis

    from .population import POPULATION

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


def _sweep_dirs(storage: Storage, name: str) -> list[str]:
    return [d for d in storage.list_dirs(name) if d.startswith("sweep-")]


def _record(storage: Storage, name: str, sweep_id: str) -> str:
    return f"{name}/{sweep_id}/ot_sweep.json"


def _latest_unfinished(storage: Storage, name: str) -> dict:
    for sweep_id in reversed(_sweep_dirs(storage, name)):
        rel = _record(storage, name, sweep_id)
        if storage.exists(rel):
            rec = json.loads(storage.read_bytes(rel))
            if rec.get("status") != "finished":
                return rec
    raise CommandError(f"no interrupted sweep of {name} under {storage.uri} to resume")


def _ranking(c, exp_id: str, parent: str) -> list:
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
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = c.download_artifacts(run.info.run_id, "sampled.json", tmp)
        except (MlflowException, OSError):
            return {}
        return json.loads(Path(path).read_text())


def _summary(
    cfg, c, exp_id: str, parent: str, results, conc: int, population: int = 1, order: str = ""
) -> dict:
    rows = []
    for r in _ranking(c, exp_id, parent):
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
    from .population import MEMBER

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
        "member": MEMBER in run.data.tags,  # picked inside a population
    }


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__


def _alone(c, parent: str, ref, control: dict) -> None:
    """The best setting re-run as a single trial (``ref``: its Ray task), on the parent and
    printed against its control; a failure (e.g. it diverges alone) is one warning line."""
    import ray

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


def _control(cfg, best: dict, entry, args, c, parent: str, n_ranked: int) -> None:
    """The best setting's control (the same stage 2, seed and stage 1 with the weight learning
    off), run once as a Ray task with a trial's resources: the best trial is read against it.
    Its numbers go on the parent run; a failure is reported, and the sweep's results stand."""
    import ray

    from .trainable import control_run

    if not best or cfg.stage2.method != "ot" or not cfg.stage2.learn_weights:
        return
    try:
        tuned = apply_values(cfg, best["params"])
    except (TypeError, ValueError) as err:  # a best run without its sampled.json
        print(
            f"warning: no control run: the best setting cannot be rebuilt ({err})", file=sys.stderr
        )
        return
    ctl = dataclasses.replace(tuned, stage2=dataclasses.replace(tuned.stage2, learn_weights=False))
    gpus = min(1.0, args.gpus_per_trial)  # one process, even for data-parallel trials
    task = ray.remote(num_cpus=args.cpus_per_trial, num_gpus=gpus)(control_run)
    threads = max(1, int(args.cpus_per_trial))
    # a setting picked inside a population is also re-run alone (beside its control): in
    # float32 a member rounds differently from its single trial, which some settings amplify
    alone = task.remote(tuned, entry.uri, threads) if best.get("member") else None
    try:
        got = ray.get(task.remote(ctl, entry.uri, threads))
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
    if alone is not None:
        _alone(c, parent, alone, got)


def _resume(storage: Storage, args: argparse.Namespace) -> tuple[str, dict]:
    """(sweep id, record): a new id, or the interrupted sweep's with its recorded arguments
    put back into ``args``. An option the command line gave (``args.given``) with another value
    than the record is refused: the sweep goes on as it started, or not at all."""
    if not args.resume:
        return time.strftime("sweep-%Y%m%d-%H%M%S"), {}
    rec = _latest_unfinished(storage, args.name)
    for key in _RECORDED_ARGS:
        recorded, asked = rec["args"].get(key), getattr(args, key)
        if key in args.given and asked != recorded:
            flag = "--set" if key == "overrides" else "--" + key.replace("_", "-")
            raise CommandError(
                f"--resume: {flag} {_shown(asked)} differs from the interrupted sweep's "
                f"{_shown(recorded)} ({rec['sweep_id']}); leave {flag} out to resume it as it "
                "was, or start a new sweep without --resume"
            )
        setattr(args, key, recorded)
    return rec["sweep_id"], rec


def _shown(value) -> str:
    if isinstance(value, list):
        return " ".join(value) if value else "(none)"
    return "(none)" if value is None else str(value)


_UNSET = object()


def given_options(p: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The recorded options (``_RECORDED_ARGS``) that ``argv`` sets itself, default or not: a
    second parse with every default replaced by a marker (``--set`` appends: given when any)."""
    p.set_defaults(**{k: _UNSET for k in _RECORDED_ARGS if k != "overrides"})
    parsed = vars(p.parse_args(argv))
    return {
        k for k in _RECORDED_ARGS if (parsed[k] if k == "overrides" else parsed[k] is not _UNSET)
    }


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
        },
    )
    c.log_text(parent, _space_source(space), "search_space.py")
    c.log_dict(parent, search.first, "search_space_best.json")
    return parent


def _context(
    cfg, entry, spec, parent: str, sweep_id: str, storage: Storage, args, search, stage1_run
):
    """(the trials' shared context, their resources)."""
    from .trainable import SweepContext

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
    )
    workers = _workers(args)
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


def _tuner(
    trainable, cfg, args, search: Search, storage: Storage, sweep_id: str, conc, callback,
    population=1,
):  # fmt: skip
    """A new Tuner (Optuna TPE seeded from the config, the published setting first, ASHA on
    stage-2 epochs), or the interrupted one restored."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from . import progress
    from .scheduler import OrderedASHA, RungsKept
    from .search import InOrder
    from .trainable import ASHA_REDUCTION, asha_grace

    exp_path = storage.child_uri(args.name, sweep_id)
    if args.resume and tune.Tuner.can_restore(exp_path):
        print(f"resuming {exp_path}", flush=True)
        return tune.Tuner.restore(
            exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    epochs = cfg.stage2.epochs
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not its "new study" INFO line
    if population > 1:
        from .search import PopulationSearch

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
            ],
            verbose=progress.tune_verbose(args),
        ),
    )


def _link(c, exp_id: str, parent: str, best_trial: str | None, stage1_run: str | None) -> None:
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


def _finish(c, parent: str, best: dict, results) -> bool:
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


def _space_source(space: Space) -> str:
    """What the sweep's run records of its space: its name and description, and the source of
    its define-by-run body and of its first setting."""
    body = textwrap.dedent(inspect.getsource(space.suggest))
    ranges = getattr(space.suggest, "__self__", None)  # a Stage2Ranges' suggest
    return (
        f"# search space {space.name!r}: {space.about}\n"
        + (f"# ranges: {ranges!r}\n" if ranges is not None else "")
        + f"{body}\n{inspect.getsource(space.first)}"
    )


def run_sweep(args: argparse.Namespace) -> int:
    from .stages import ensure_stage1
    from .trainable import stage2_trial

    storage, local_root = cli.open_storage(args.storage, create=not args.print_config)
    sweep_id, rec = _resume(storage, args)
    asked = {k: getattr(args, k) for k in _RECORDED_ARGS}  # what --resume holds the line to
    cfg = cli.config_from_args(args)
    if args.print_config:
        cli.print_configs([("", cfg)], full=args.print_config == "full")
        return 0
    space = SEARCH_SPACES[args.space] if args.space else SPACES[args.name]
    try:  # a space that fits only some experiments says so first
        space.check(cfg)
    except ValueError as err:
        raise CommandError(str(err)) from None
    cli.check_ray_address(args.address)  # a cluster that is not there: said before any wait
    cli.preflight(cfg)
    search = Search.of(space, cfg, args.overrides)
    search.announce()
    if not search.searched:
        args.trials = 1
    _no_population(args, cfg, search)
    uri, exp_id, c = cli.open_tracking(
        rec.get("tracking_uri") or args.tracking_uri, storage, local_root, cfg.name
    )
    cli.init_ray(args.address)  # before the parent run: a cluster that is not there opens none
    import ray
    from ray import tune

    parent = _open_parent(c, exp_id, cfg, args, search, sweep_id, rec)
    cli.watch_run(c, parent)
    views.publish(c, exp_id, searched=search.searched)
    spec = tracking.TrackingSpec(uri, exp_id)
    print(f"sweep {sweep_id}: {cfg.name}, {args.trials} trials; MLflow {uri}", flush=True)

    try:
        entry, _built = ensure_stage1(
            cfg,
            storage,
            spec,
            max_cpus=cli.node_cpus(),  # it asks for its stage1.threads, at most this
            num_gpus=1 if args.gpus_per_trial > 0 else 0,
            sweep_run_id=parent,
        )
    except ray.exceptions.RayTaskError as err:
        raise cli.stage1_failure(err, c, parent) from None
    c.set_tag(parent, names.STAGE1_HASH, entry.key)
    stage1_run = tracking.stage1_build_run(c, exp_id, entry.key)
    if stage1_run:
        c.set_tag(parent, names.STAGE1_RUN, stage1_run)
    population = population_size(args, cfg, search, _fits(args))
    args.population = population
    conc = _concurrency(args, population)
    rec = {
        "sweep_id": sweep_id,
        "name": args.name,
        "status": "running",
        "parent_run_id": parent,
        "experiment_id": exp_id,
        "tracking_uri": uri,
        "stage1_key": entry.key,
        "args": {**asked, "population": population, "seed": cfg.seed},
    }
    storage.write_bytes(_record(storage, args.name, sweep_id), json.dumps(rec, indent=1).encode())
    ctx, resources = _context(cfg, entry, spec, parent, sweep_id, storage, args, search, stage1_run)
    if population > 1:
        from .population import population_trial

        fn = population_trial
        print(
            f"{args.trials} settings as {math.ceil(args.trials / population)} trials of up to "
            f"{population} (a population each: one child run per setting)",
            flush=True,
        )
    else:
        fn = stage2_trial
    trainable = tune.with_resources(tune.with_parameters(fn, ctx=ctx), resources)
    finisher = _FinishStopped(spec, parent)
    tuner = _tuner(
        trainable, cfg, args, search, storage, sweep_id, conc, finisher, population,
    )  # fmt: skip
    exp_path = storage.child_uri(args.name, sweep_id)
    if args.resume and tune.Tuner.can_restore(exp_path):
        supersede_unknown(c, exp_id, parent, exp_path)
    # A resumed searcher is told the restored trials' epochs again; Optuna ignores a step it
    # has already seen and warns once per report (hundreds of lines). Only that one is hidden.
    warnings.filterwarnings("ignore", message=r"The reported value is ignored because this")
    try:
        results, interrupted = cli.fit(tuner)
    finally:
        finisher.join()  # the stopped trials' figures, before the ranking and the exit
    if interrupted:
        c.set_tag(parent, names.INTERRUPTED, "true")
        c.set_terminated(parent, status="KILLED")
        print(
            "interrupted: the sweep's state is saved; resume it with: "
            + cli.command(f"orchestrator.sweep {args.name} --resume --storage {storage.uri}"),
            file=sys.stderr,
        )
        return 130
    draw_left_pending(c, exp_id, parent)  # any a driver before a --resume did not draw
    best = _summary(cfg, c, exp_id, parent, results, conc, population, args.order)
    _control(cfg, best, entry, args, c, parent, n_ranked=best.get("ranked", 0))
    _link(c, exp_id, parent, (best.get("metrics") or {}).get("trial_id"), stage1_run)
    ok = _finish(c, parent, best, results)
    rec["status"] = "finished"
    storage.write_bytes(_record(storage, args.name, sweep_id), json.dumps(rec, indent=1).encode())
    print(
        f"\nMLflow: experiment '{cfg.name}', parent run {parent}\n"
        f"open the UI: {cli.ui_hint(uri, storage, local_root)}\n"
        f"the trials, ranked: {views.view_url(ui.base_url(uri), exp_id)}"
    )
    if not ok:
        print("error: no trial finished; see the errors above", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    args.given = given_options(_parser(), argv)
    if args.list:
        _list()
        return 0
    if not args.name:
        p.error("give an experiment name (see --list)")
    if (
        args.trials < 1
        or args.cpus_per_trial <= 0
        or args.gpus_per_trial < 0
        or args.workers_per_trial < 0
        or args.population < 0
    ):
        p.error(
            "--trials must be >= 1, --cpus-per-trial > 0, --gpus-per-trial, "
            "--workers-per-trial and --population >= 0"
        )
    return cli.run_command(lambda: run_sweep(args))


if __name__ == "__main__":
    sys.exit(main())
