"""``python -m orchestrator.sweep NAME``: search the OT method's stage-2 knobs with Ray Tune.

Stage 1 runs once per content hash (a Ray task; cached in the run storage), then a Tuner runs
the stage-2 trials: OptunaSearch (seeded TPE, the paper's settings enqueued first) with an ASHA
scheduler on stage-2 epochs, ranked on validation balanced accuracy only. MLflow gets one parent
run per sweep, one child run per trial and one run per stage-1 build.

Local by default (``ray.init()`` here, MLflow in ``<storage>/mlflow.db``); on a cluster pass
``--address`` (or RAY_ADDRESS), a shared ``--storage`` and ``--tracking-uri``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

from search_spaces import EXPERIMENTS, SPACE_MODULES, SPACES
from search_spaces.config import PRESETS, ConfigError, apply_overrides, apply_preset, flatten

from . import tracking
from .storage import Storage, StorageError

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
FAIL_ONCE_ENV = "OT_REWEIGHT_FAIL_ONCE"
_DRIVER_CPU = 0.01  # the Tune-side driver of a multi-worker trial only waits on its workers


class SweepError(RuntimeError):
    """A user-facing failure: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="registered experiment (see --list)")
    p.add_argument("--list", action="store_true", help="list the registered experiments")
    p.add_argument("--trials", type=int, default=8, help="number of trials (default 8)")
    p.add_argument("--concurrency", type=int, default=0, help="trials at once (default: what fits)")
    p.add_argument("--seed", type=int, default=None, help="experiment and searcher seed")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set stage2.epochs=5 (repeatable)",
    )  # fmt: skip
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument(
        "--space", choices=sorted(SPACE_MODULES), default=None,
        help="search space module (default: the experiment's; meta_reweight searches stage 1)",
    )  # fmt: skip
    p.add_argument("--address", default=None, help="Ray cluster address (or RAY_ADDRESS)")
    p.add_argument(
        "--storage", default=None,
        help="run storage: a path (shared on a cluster) or s3://... (default ./runs)",
    )  # fmt: skip
    p.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI (or MLFLOW_TRACKING_URI; default <storage>/mlflow.db)",
    )  # fmt: skip
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument(
        "--gpus-per-trial", type=float, default=0.0,
        help="fractions share a GPU; more than 1 runs the trial on that many GPU workers",
    )  # fmt: skip
    p.add_argument(
        "--workers-per-trial", type=int, default=0,
        help="Ray Train workers per trial, data-parallel (default: 1, or the GPUs when > 1)",
    )  # fmt: skip
    p.add_argument("--max-failures", type=int, default=2, help="retries per trial")
    p.add_argument("--resume", action="store_true", help="continue the last interrupted sweep")
    p.add_argument("--smoke", action="store_true", help="tiny variant (seconds per trial)")
    p.add_argument("--quiet", action="store_true", help="no Tune progress table")
    return p


def _list() -> None:
    width = max(len(n) for n in EXPERIMENTS)
    for name, build in EXPERIMENTS.items():
        cfg = build()
        print(f"{name:<{width}}  {cfg.table:<14} {cfg.description}")


def _config(args: argparse.Namespace):
    cfg = EXPERIMENTS[args.name](smoke=args.smoke)
    if args.preset:
        cfg = apply_preset(cfg, args.preset)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    return apply_overrides(cfg, args.overrides)


def _storage(arg: str | None) -> tuple[Storage, Path | None]:
    storage = Storage(arg or "runs")
    storage.makedirs()
    return storage, (Path(storage.uri) if storage.local else None)


def _init_ray(address: str | None) -> None:
    import logging

    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Save the experiment state at every controller step (not every 10 s): a trial the driver
    # started is then always known to a resumed sweep, so it is resumed, never re-sampled.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    kwargs: dict = dict(include_dashboard=False, logging_level=logging.WARNING)
    try:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SweepError(f"cannot connect to Ray at {address or 'RAY_ADDRESS'}: {first}") from None


def _workers(args: argparse.Namespace) -> int:
    if args.workers_per_trial:
        return args.workers_per_trial
    return int(args.gpus_per_trial) if args.gpus_per_trial >= 2 else 1


def _concurrency(args: argparse.Namespace) -> int:
    import ray

    res = ray.cluster_resources()
    workers = _workers(args)
    driver = _DRIVER_CPU if workers > 1 else 0.0
    fits = math.floor(res.get("CPU", 1) / max(args.cpus_per_trial * workers + driver, 1e-3))
    if args.gpus_per_trial > 0:
        fits = min(fits, math.floor(res.get("GPU", 0) / args.gpus_per_trial))
        if fits < 1:
            raise SweepError(
                f"--gpus-per-trial {args.gpus_per_trial} but the cluster has "
                f"{res.get('GPU', 0)} GPUs"
            )
    if fits < 1:
        need = args.cpus_per_trial * workers + driver
        raise SweepError(
            f"a trial needs {need:g} CPUs ({workers} x --cpus-per-trial {args.cpus_per_trial:g}"
            f"{' + its driver' if driver else ''}) but the cluster has {res.get('CPU', 0):g}"
        )
    want = args.concurrency or fits
    return max(1, min(want, fits, args.trials))


def _node_cpus() -> int:
    import ray

    per_node = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(max(per_node, default=1)))


class _FinishStopped:
    """Tune callback: a trial the scheduler stopped gets its MLflow run closed as FINISHED
    (the trial closes it itself when it can; this covers a process ended mid-report)."""

    def __new__(cls, spec: tracking.TrackingSpec, parent_run_id: str):
        from ray.tune import Callback

        class FinishStopped(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                c = tracking.client(spec.uri)
                runs = tracking.trial_runs(c, spec.experiment_id, parent_run_id, trial.trial_id)
                tracking.close_running(c, runs, tag="ot.stopped_early", status="FINISHED")

        return FinishStopped()


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
    raise SweepError(f"no interrupted sweep of {name} under {storage.uri} to resume")


def _summary(cfg, results, conc: int, rec: dict) -> dict:
    from search_spaces.paper import paper_number

    from .trainable import SELECT_METRIC

    rows = []
    for r in results:
        m = r.metrics or {}
        if SELECT_METRIC not in m:
            continue
        params = {k: v for k, v in (r.config or {}).items()}
        rows.append((m[SELECT_METRIC], m.get("selected_test_balanced_acc"), m, params))
    rows.sort(key=lambda t: -t[0])
    print("\n== sweep summary ==", flush=True)
    print(f"experiment {cfg.name} ({cfg.table}), preset {cfg.preset}, seed {cfg.seed}")
    print(f"trials: {len(results)} run, {results.num_errors} errored; concurrency {conc}")
    if not rows:
        return {}
    best_val, best_test, m, params = rows[0]
    print(f"best trial {m.get('trial_id')}: val balanced acc {best_val:.2f} (selection metric)")
    print(
        f"  test at the validation-selected epoch {m.get('selected_epoch')}: balanced acc "
        f"{best_test:.2f}"
    )
    for k, v in params.items():
        print(f"  {k} = {v}")
    paper = paper_number(cfg)
    if paper:
        print(f"  paper: test top-1 error {paper[0]:.2f} ({paper[1]})")
    else:
        print("  paper: no published number for this cell (offline or unpublished setting)")
    print("\n  rank  val_bal_acc  test_bal_acc  trial")
    for i, (v, t, mm, _p) in enumerate(rows[:10]):
        print(f"  {i + 1:>4}  {v:>11.2f}  {t:>12.2f}  {mm.get('trial_id')}")
    return {"best_val": best_val, "best_test": best_test, "params": params, "metrics": m}


def run_sweep(args: argparse.Namespace) -> int:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from .stages import ensure_stage1
    from .trainable import SELECT_METRIC, TIME_ATTR, SweepContext, stage2_trial

    storage, local_root = _storage(args.storage)
    if args.resume:
        rec = _latest_unfinished(storage, args.name)
        saved = rec["args"]
        for key in ("trials", "seed", "overrides", "preset", "smoke", "cpus_per_trial"):
            setattr(args, key, saved[key])
        args.space = saved.get("space")
        for key in ("gpus_per_trial", "max_failures", "workers_per_trial"):
            setattr(args, key, saved[key])
        sweep_id = rec["sweep_id"]
    else:
        rec = {}
        sweep_id = time.strftime("sweep-%Y%m%d-%H%M%S")
    try:
        cfg = _config(args)
    except ConfigError as err:
        raise SweepError(str(err)) from None
    from trainables.data import DatasetMissing
    from trainables.trial import check_config, check_data

    try:
        check_config(cfg)
    except ValueError as err:
        raise SweepError(f"bad configuration: {err}") from None
    try:
        check_data(cfg)
    except DatasetMissing as err:
        raise SweepError(str(err)) from None
    module = SPACE_MODULES[args.space] if args.space else SPACES[args.name]
    uri = rec.get("tracking_uri") or tracking.resolve_tracking_uri(
        args.tracking_uri, storage.uri, local_root
    )
    tracking.check_reachable(uri)
    artifact_loc = (
        (local_root / "mlartifacts").as_uri() if local_root else storage.child_uri("mlartifacts")
    )
    exp_id = tracking.ensure_experiment(uri, cfg.name, artifact_loc)
    c = tracking.client(uri)
    if rec:
        parent = rec["parent_run_id"]
        c.update_run(parent, status="RUNNING")
        c.set_tag(parent, "ot.resumed", time.strftime("%Y-%m-%dT%H:%M:%S"))
        # Nothing of this sweep runs now: attempts left RUNNING died with the old driver.
        runs = tracking.runs_with_tags(c, exp_id, {tracking.PARENT_TAG: parent})
        tracking.close_running(c, runs, tag="ot.interrupted", status="KILLED")
    else:
        parent = c.create_run(
            exp_id,
            run_name=sweep_id,
            tags={
                tracking.KIND_TAG: "sweep",
                "ot.sweep_id": sweep_id,
                "ot.experiment": cfg.name,
                "ot.table": cfg.table,
                "ot.preset": cfg.preset,
                "ot.seed": str(cfg.seed),
                "ot.search_space": module.__name__,
                "mlflow.source.git.commit": tracking.git_commit(REPO),
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
                "sweep.search_space": module.__name__,
            },
        )
        defining = inspect.getmodule(module.space) or module  # re-exported spaces
        c.log_text(parent, inspect.getsource(defining), "search_space.py")
        c.log_dict(parent, module.best(), "search_space_best.json")
    spec = tracking.TrackingSpec(uri, exp_id)
    print(f"sweep {sweep_id}: {cfg.name}, {args.trials} trials; MLflow {uri}", flush=True)

    _init_ray(args.address)
    import ray

    try:
        entry, _built = ensure_stage1(
            cfg,
            storage,
            spec,
            num_cpus=min(_node_cpus(), 8),
            num_gpus=1 if args.gpus_per_trial > 0 else 0,
            sweep_run_id=parent,
        )
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if getattr(err, "cause", None) is not None else err
        c.set_terminated(parent, status="FAILED")
        raise SweepError(f"stage 1 failed: {str(cause).strip().splitlines()[-1]}") from None
    c.set_tag(parent, "ot.stage1_hash", entry.key)
    conc = _concurrency(args)
    rec = {
        "sweep_id": sweep_id,
        "name": args.name,
        "status": "running",
        "parent_run_id": parent,
        "experiment_id": exp_id,
        "tracking_uri": uri,
        "stage1_key": entry.key,
        "args": {
            k: getattr(args, k)
            for k in (
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
            )
        },
    }
    rec["args"]["seed"] = cfg.seed
    storage.write_bytes(_record(storage, args.name, sweep_id), json.dumps(rec, indent=1).encode())
    ctx = SweepContext(
        base=cfg,
        entry_uri=entry.uri,
        stage1_key=entry.key,
        tracking=spec,
        parent_run_id=parent,
        sweep_id=sweep_id,
        cpus_per_trial=args.cpus_per_trial,
        fault_dir=os.environ.get(FAIL_ONCE_ENV) or None,
        storage_uri=storage.uri,
    )
    workers = _workers(args)
    if workers > 1 and getattr(module, "STAGE1", False):
        raise SweepError(
            "a stage-1 search space runs single-worker trials (no --workers-per-trial)"
        )
    if workers > 1:
        ctx = dataclasses.replace(
            ctx,
            workers=workers,
            gpus_per_worker=args.gpus_per_trial / workers,
            train_storage=storage.child_uri(args.name, sweep_id, "train"),
        )
        resources = {"cpu": _DRIVER_CPU}
    else:
        resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(stage2_trial, ctx=ctx), resources)
    exp_path = storage.child_uri(args.name, sweep_id)
    if args.resume and tune.Tuner.can_restore(exp_path):
        print(f"resuming {exp_path}", flush=True)
        tuner = tune.Tuner.restore(
            exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        epochs = cfg.stage2.epochs
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=SELECT_METRIC,
                mode="max",
                search_alg=OptunaSearch(
                    space=module.space,
                    metric=SELECT_METRIC,
                    mode="max",
                    points_to_evaluate=[module.best()],
                    seed=cfg.seed,
                ),
                scheduler=ASHAScheduler(
                    time_attr=TIME_ATTR,
                    max_t=max(1, epochs),
                    grace_period=max(1, epochs // 4),
                    reduction_factor=3,
                ),
                num_samples=args.trials,
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
                callbacks=[_FinishStopped(spec, parent)],
                verbose=0 if args.quiet else 1,
            ),
        )
    results = tuner.fit()
    best = _summary(cfg, results, conc, rec)
    if best:
        tracking.log_metrics(
            c,
            parent,
            {"best_selected_val_balanced_acc": best["best_val"],
             "best_selected_test_balanced_acc": best["best_test"]},
            step=0,
        )  # fmt: skip
        c.log_dict(parent, {"params": best["params"], "metrics": best["metrics"]}, "best.json")
    ok = bool(best) and results.num_errors < len(results)
    c.set_terminated(parent, status="FINISHED" if ok else "FAILED")
    rec["status"] = "finished"
    storage.write_bytes(_record(storage, args.name, sweep_id), json.dumps(rec, indent=1).encode())
    store = f" --storage {storage.uri}" if args.storage else ""
    print(
        f"\nMLflow: experiment '{cfg.name}', parent run {parent}\n"
        f"open the UI: python -m orchestrator.ui{store}   (tracking URI {uri})"
    )
    if not ok:
        print("error: no trial finished; see the errors above", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.list:
        _list()
        return 0
    if not args.name:
        p.error("give an experiment name (see --list)")
    if args.name not in EXPERIMENTS:
        p.error(f"unknown experiment {args.name!r}; choose from {', '.join(EXPERIMENTS)}")
    if (
        args.trials < 1
        or args.cpus_per_trial <= 0
        or args.gpus_per_trial < 0
        or args.workers_per_trial < 0
    ):
        p.error(
            "--trials must be >= 1, --cpus-per-trial > 0, --gpus-per-trial and "
            "--workers-per-trial >= 0"
        )
    try:
        return run_sweep(args)
    except (SweepError, tracking.TrackingError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
