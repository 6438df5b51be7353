"""``python -m orchestrator.reproduce TABLE``: re-run one of the paper's tables on Ray.

Every cell (column x method, ``search_spaces.tables``) runs over N seeds with the paper's
settings (``--preset``). Stage 1 is built once per content hash and shared (the CE baseline and
the OT method of a column share it); the stage-2 runs go through one Ray Tune grid, each an
MLflow run in the experiment ``reproduce-TABLE`` tagged with table, cell, method, preset and
seed. A second invocation skips every run that already finished (resume at the table level).
``--dry-run`` prints the grid and an estimate from measured per-epoch costs and runs nothing.
At the end, Fig. 1 (learned weights of a 10..1 batch under each cost) and Fig. 2 (confusion
matrices of CE and OT) go into the invocation's MLflow run, and the table is printed
(``python -m orchestrator.report TABLE`` prints it again, in md, csv, latex or html).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from search_spaces.config import PRESETS, ConfigError, ExperimentConfig, apply_overrides
from search_spaces.tables import TABLES, Cell, Table, cell_config

from . import tracking
from .storage import Storage, StorageError
from .sweep import REPO, SweepError, _init_ray, _node_cpus, _storage

__all__ = ["RunSpec", "experiment_name", "main", "plan"]

KIND = "reproduce"  # the invocation's parent run; its runs are ot.kind=trial


@dataclass(frozen=True)
class RunSpec:
    cell: Cell
    seed: int
    cfg: ExperimentConfig
    stage1_key: str
    tuned_from: str = ""  # the sweep run whose best setting the cell took (--tuned)

    @property
    def run_key(self) -> str:
        return f"{self.cell.key}|seed{self.seed}"


def experiment_name(table: str, smoke: bool) -> str:
    return f"reproduce-{table}" + ("-smoke" if smoke else "")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.reproduce",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("table", help=f"one of: {', '.join(TABLES)}")
    p.add_argument(
        "--seeds", type=int, default=0,
        help="seeds per cell, 0..N-1 (default: the experiments' protocol, e.g. 10 for text)",
    )  # fmt: skip
    p.add_argument("--methods", nargs="+", default=None, help="only these rows")
    p.add_argument("--columns", nargs="+", default=None, help="only these columns")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a field in every cell, e.g. --set data.source=cifar10_jpeg (repeatable)",
    )  # fmt: skip
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument(
        "--fidelity", action="store_true",
        help="also run the released-code rows (each extra switched off alone), first column",
    )  # fmt: skip
    p.add_argument(
        "--tuned", action="store_true",
        help="OT rows use the best setting of the latest finished sweep of their experiment "
        "(same data, model and stage 1); recorded and reported as PRESET+sweep",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the grid; run nothing")
    p.add_argument("--smoke", action="store_true", help="tiny variant of every cell")
    p.add_argument("--address", default=None, help="Ray cluster address (or RAY_ADDRESS)")
    p.add_argument("--storage", default=None, help="run storage (default ./runs)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--max-failures", type=int, default=2, help="retries per run")
    p.add_argument("--quiet", action="store_true", help="no Tune progress table")
    return p


def plan(
    table: Table,
    *,
    seeds: int,
    methods: list[str] | None,
    preset: str,
    smoke: bool,
    fidelity: bool,
    columns: list[str] | None = None,
    overrides: list[str] | None = None,
) -> list[RunSpec]:
    """Every run of the table: cells x seeds, each with its resolved config and stage-1 key."""
    from .stages import stage1_hash

    try:
        cells = table.cells(methods, fidelity=fidelity, columns=columns)
    except ValueError as err:
        raise SweepError(str(err)) from None
    out = []
    for cell in cells:
        try:
            base = apply_overrides(
                cell_config(cell, seed=0, preset=preset, smoke=smoke), overrides or []
            )
            n = seeds or base.seeds
            for seed in range(n):
                cfg = dataclasses.replace(base, seed=seed)
                out.append(RunSpec(cell, seed, cfg, stage1_hash(cfg)))
        except ConfigError as err:
            raise SweepError(f"{cell.key}: {err}") from None
    return out


def settings_key(preset: str, tuned: bool) -> str:
    """What a run was asked for: the preset, with ``+sweep`` when OT rows took a sweep's best."""
    return preset + ("+sweep" if tuned else "")


def tuned_values(c, cfg: ExperimentConfig) -> tuple[dict, str] | None:
    """(best sampled values, sweep run id) of the latest finished sweep of ``cfg``'s experiment
    whose stage 1 is ``cfg``'s at the sweep's seed (same data, model, stage 1); None if none."""
    from .stages import stage1_hash

    exp = c.get_experiment_by_name(cfg.name)
    if exp is None:
        return None
    sweeps = tracking.all_runs_with_tags(c, exp.experiment_id, {tracking.KIND_TAG: "sweep"})
    for run in sorted(sweeps, key=lambda r: -(r.info.end_time or 0)):
        tags = run.data.tags
        if run.info.status != "FINISHED" or not tags.get("ot.seed", "").isdigit():
            continue
        at_seed = dataclasses.replace(cfg, seed=int(tags["ot.seed"]))
        if tags.get("ot.stage1_hash") != stage1_hash(at_seed):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = c.download_artifacts(run.info.run_id, "best.json", tmp)
            except Exception:
                continue
            return json.loads(Path(path).read_text())["params"], run.info.run_id
    return None


def _finished(c, exp_id: str, table: str, preset: str) -> set[str]:
    runs = tracking.all_runs_with_tags(c, exp_id, {"ot.table": table, tracking.KIND_TAG: "trial"})
    return {
        f"{r.data.tags.get('ot.cell')}|seed{r.data.tags.get('ot.seed')}"
        for r in runs
        if r.info.status == "FINISHED" and r.data.tags.get("ot.preset_asked") == preset
    }


def _apply_tuned(c, specs: list[RunSpec]) -> list[RunSpec]:
    """OT rows (not the fidelity rows) take their experiment's swept best; a row without a
    matching sweep stops the command (never a silent fall-back to the paper's setting)."""
    from search_spaces.config import apply_values

    out, missing = [], set()
    for s in specs:
        if s.cfg.stage2.method != "ot" or s.cell.method.fidelity:
            out.append(s)
            continue
        found = tuned_values(c, s.cfg) if c is not None else None
        if found is None:
            missing.add(s.cell.key)
            continue
        values, run_id = found
        out.append(dataclasses.replace(s, cfg=apply_values(s.cfg, values), tuned_from=run_id))
    if missing:
        raise SweepError(
            f"--tuned: no finished sweep matches {', '.join(sorted(missing))}; run "
            "python -m orchestrator.sweep EXPERIMENT with the same data and stage 1 first"
        )
    return out


def _estimate(specs: list[RunSpec], pending: list[RunSpec]) -> list[str]:
    from .costs import estimate_seconds

    per_device: dict[str, float] = {}
    unmeasured: set[str] = set()
    built: set[str] = set()
    for s in pending:
        first = s.stage1_key not in built
        built.add(s.stage1_key)
        try:
            sec, dev = estimate_seconds(s.cfg, stage1=first, stage2=True)
        except KeyError as err:
            unmeasured.add(str(err.args[0]) if err.args else s.cfg.name)
            continue
        per_device[dev] = per_device.get(dev, 0.0) + sec
    lines = [
        f"  {dev}: about {sec / 3600:.2f} device-hours ({sec / 60:.1f} min)"
        for dev, sec in per_device.items()
    ]
    if unmeasured:
        lines.append(f"  not measured (no estimate): {', '.join(sorted(unmeasured))}")
    return lines or ["  nothing to run"]


def _print_plan(table: Table, specs: list[RunSpec], pending: list[RunSpec], cached: int) -> None:
    print(f"{table.name}: {table.description}")
    cells: dict[str, list[RunSpec]] = {}
    for s in specs:
        cells.setdefault(s.cell.key, []).append(s)
    todo = {s.run_key for s in pending}
    width = max(len(k) for k in cells)
    print(f"\n  {'cell':<{width}}  seeds  to run  stage-1")
    for key, runs in cells.items():
        left = sum(r.run_key in todo for r in runs)
        print(f"  {key:<{width}}  {len(runs):>5}  {left:>6}  {runs[0].cfg.stage1.loss}")
    keys = {s.stage1_key for s in pending}
    print(
        f"\ncells: {len(cells)}, runs: {len(specs)} ({len(pending)} to run, "
        f"{len(specs) - len(pending)} finished before)"
    )
    print(f"stage-1 builds: {len(keys)} distinct for the runs left ({cached} already cached)")
    print("estimate from measured per-epoch costs (orchestrator/costs.py):")
    for line in _estimate(specs, pending):
        print(line)


def _build_stage1(pending, storage, spec, parent, num_cpus, num_gpus) -> dict[str, object]:
    from .stages import ensure_stage1

    by_key: dict[str, RunSpec] = {}
    for s in pending:
        by_key.setdefault(s.stage1_key, s)

    def one(s: RunSpec):
        entry, _ = ensure_stage1(
            s.cfg, storage, spec, num_cpus=num_cpus, num_gpus=num_gpus, sweep_run_id=parent
        )
        return s.stage1_key, entry

    # Each ensure_stage1 waits on its own Ray task; the cluster runs as many as fit.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(by_key))) as pool:
        return dict(pool.map(one, by_key.values()))


def _figures(table: Table, specs: list[RunSpec], entries: dict, c, exp_id: str, parent: str):
    """Fig. 1 and Fig. 2 from the first column's first seed, logged to the parent run."""
    import ray

    from . import artifacts, figures

    first_col = specs[0].cell.column.name
    seed = min(s.seed for s in specs)
    cands = [s for s in specs if s.cell.column.name == first_col and s.seed == seed]
    ot = next(
        (s for s in cands if s.cfg.stage2.method == "ot" and not s.cell.method.fidelity), None
    )
    base = next((s for s in cands if s.cfg.stage2.method == "none"), None)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if ot is not None and ot.stage1_key in entries:
            task = ray.remote(num_cpus=1)(figures.fig1_masses)
            masses = ray.get(task.remote(ot.cfg, entries[ot.stage1_key].uri))
            artifacts.write_fig1_png(
                masses, d / "fig1_weights.png", title=f"{table.name}: {first_col}"
            )
            (d / "fig1_weights.json").write_text(json.dumps(masses))
        conf = {}
        for label, s in (("CE / baseline: " + (base.cell.method.name if base else ""), base),
                         ("OT: " + (ot.cell.method.name if ot else ""), ot)):  # fmt: skip
            if s is None:
                continue
            got = figures.run_confusion(c, exp_id, table.name, s.cell.key, s.seed)
            if got is not None:
                conf[label] = got
        if len(conf) == 2:
            artifacts.write_fig2_png(
                conf, d / "fig2_confusion.png", title=f"{table.name}: {first_col}"
            )
        if any(d.iterdir()):
            c.log_artifacts(parent, str(d), "figures")


def run(args: argparse.Namespace) -> int:
    table = TABLES[args.table]
    specs = plan(
        table,
        seeds=args.seeds,
        methods=args.methods,
        preset=args.preset,
        smoke=args.smoke,
        fidelity=args.fidelity,
        columns=args.columns,
        overrides=args.overrides,
    )
    from trainables.data import DatasetMissing
    from trainables.trial import check_config, check_data

    for s in specs:
        try:
            check_config(s.cfg)
        except ValueError as err:
            raise SweepError(f"{s.cell.key}: bad configuration: {err}") from None
    checked = set()
    for s in specs:
        if s.cfg.name not in checked:
            checked.add(s.cfg.name)
            try:
                check_data(s.cfg)
            except DatasetMissing as err:
                if not args.dry_run:
                    raise SweepError(str(err)) from None
                print(f"warning: {err}", file=sys.stderr)
    if args.dry_run:  # reads the store, never writes to it
        storage = Storage(args.storage or "runs")
        local_root = Path(storage.uri) if storage.local else None
    else:
        storage, local_root = _storage(args.storage)
    uri = tracking.resolve_tracking_uri(args.tracking_uri, storage.uri, local_root)
    artifact_loc = (
        (local_root / "mlartifacts").as_uri() if local_root else storage.child_uri("mlartifacts")
    )
    name = experiment_name(table.name, args.smoke)
    asked = settings_key(args.preset, args.tuned)
    no_db = uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite://")).exists()
    if args.dry_run and no_db:
        done: set[str] = set()
    elif args.dry_run:
        tracking.check_reachable(uri)
        c = tracking.client(uri)
        exp = c.get_experiment_by_name(name)
        done = set() if exp is None else _finished(c, exp.experiment_id, table.name, asked)
    else:
        tracking.check_reachable(uri)
        c = tracking.client(uri)
        exp_id = tracking.ensure_experiment(uri, name, artifact_loc)
        done = _finished(c, exp_id, table.name, asked)
    if args.tuned:
        specs = _apply_tuned(c if not no_db else None, specs)
    pending = [s for s in specs if s.run_key not in done]
    if args.dry_run:
        from .stages import verify_entry

        keys = {s.stage1_key for s in pending}
        cached = 0
        for k in keys:
            with contextlib.suppress(Exception):  # a corrupt entry will be rebuilt
                cached += verify_entry(storage, k) is not None
        _print_plan(table, specs, pending, cached)
        return 0
    invocation = time.strftime("reproduce-%Y%m%d-%H%M%S")
    print(
        f"{invocation}: {table.name}, {len(specs)} runs ({len(pending)} to run, "
        f"{len(specs) - len(pending)} finished before); MLflow {uri}",
        flush=True,
    )
    parent = c.create_run(
        exp_id,
        run_name=invocation,
        tags={
            tracking.KIND_TAG: KIND,
            "ot.table": table.name,
            "ot.preset": args.preset,
            "ot.preset_asked": asked,
            "ot.smoke": str(args.smoke).lower(),
            "mlflow.source.git.commit": tracking.git_commit(REPO),
        },
    ).info.run_id
    tracking.log_params(
        c,
        parent,
        {
            "reproduce.table": table.name,
            "reproduce.seeds": args.seeds or "protocol",
            "reproduce.methods": ",".join(args.methods or []) or "all",
            "reproduce.preset": args.preset,
            "reproduce.tuned": args.tuned,
            "reproduce.fidelity": args.fidelity,
            "reproduce.columns": ",".join(args.columns or []) or "all",
            "reproduce.overrides": " ".join(args.overrides) or "none",
            "reproduce.runs": len(specs),
            "reproduce.pending": len(pending),
        },
    )
    ok = True
    if pending:
        ok = _run_pending(args, table, specs, pending, storage, uri, exp_id, c, parent, invocation)
    c.set_terminated(parent, status="FINISHED" if ok else "FAILED")
    from .report import render, report_data

    print()
    print(render(report_data(c, exp_id, table, asked), "md"))
    store = f" --storage {storage.uri}" if args.storage else ""
    smoke = " --smoke" if args.smoke else ""
    print(
        f"\nreport again: python -m orchestrator.report {table.name}{smoke}{store} "
        "--format html --out report.html"
    )
    if not ok:
        print("error: some runs did not finish; see the errors above", file=sys.stderr)
        return 1
    return 0


def _run_pending(args, table, specs, pending, storage, uri, exp_id, c, parent, invocation) -> bool:
    import ray
    from ray import tune

    from .trainable import SweepContext, reproduce_trial

    spec = tracking.TrackingSpec(uri, exp_id)
    asked = settings_key(args.preset, args.tuned)
    _init_ray(args.address)
    try:
        entries = _build_stage1(
            pending, storage, spec, parent, min(_node_cpus(), 8), 1 if args.gpus_per_trial else 0
        )
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if getattr(err, "cause", None) is not None else err
        c.set_terminated(parent, status="FAILED")
        raise SweepError(f"stage 1 failed: {str(cause).strip().splitlines()[-1]}") from None
    contexts = {}
    for s in pending:
        entry = entries[s.stage1_key]
        contexts[s.run_key] = SweepContext(
            base=s.cfg,
            entry_uri=entry.uri,
            stage1_key=entry.key,
            tracking=spec,
            parent_run_id=parent,
            sweep_id=invocation,
            cpus_per_trial=args.cpus_per_trial,
            fault_dir=os.environ.get("OT_REWEIGHT_FAIL_ONCE") or None,
            tags={
                "ot.table": table.name,
                "ot.cell": s.cell.key,
                "ot.column": s.cell.column.name,
                "ot.method": s.cell.method.name,
                "ot.preset_asked": asked,
                **({"ot.tuned_from": s.tuned_from} if s.tuned_from else {}),
                "ot.smoke": str(args.smoke).lower(),
                "ot.fidelity": str(s.cell.method.fidelity).lower(),
            },
        )
    res = ray.cluster_resources()
    fits = math.floor(res.get("CPU", 1) / args.cpus_per_trial)
    if args.gpus_per_trial:
        fits = min(fits, math.floor(res.get("GPU", 0) / args.gpus_per_trial))
    if fits < 1:
        raise SweepError("a run does not fit the cluster (see --cpus-per-trial/--gpus-per-trial)")
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    trainable = tune.with_resources(
        tune.with_parameters(reproduce_trial, contexts=contexts), resources
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search(list(contexts))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=min(fits, len(contexts)),
            trial_dirname_creator=lambda t: f"run_{t.trial_id}",
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=invocation,
            storage_path=storage.child_uri("reproduce", table.name),
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            verbose=0 if args.quiet else 1,
        ),
    )
    results = tuner.fit()
    _figures(table, specs, entries, c, exp_id, parent)
    return results.num_errors == 0


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.table not in TABLES:
        p.error(f"unknown table {args.table!r}; choose from {', '.join(TABLES)}")
    if args.seeds < 0 or args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        p.error("--seeds must be >= 0, --cpus-per-trial > 0, --gpus-per-trial >= 0")
    try:
        return run(args)
    except (SweepError, tracking.TrackingError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
