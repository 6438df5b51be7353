"""The run of ``python -m orchestrator.reproduce TABLE`` (:mod:`orchestrator.reproduce`
reads the command line): the grid of runs, the plan and its estimate, stage 1 per content hash,
the runs on one Tune grid (OT rows and their controls as populations), the figures and the
printed table."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from search_spaces.tables import TABLES, Cell, Table, cell_config, row_space
from trainables.config import (
    ConfigError,
    ExperimentConfig,
    Stage2Config,
    apply_overrides,
    apply_values,
    to_dict,
)
from trainables.population import VARYING, population_reason

from . import (
    artifacts,
    cli,
    names,
    paper_figures,
    progress,
    ray_internals,
    runtime,
    tracking,
    tune_rows,
)
from .cli import REPO, CommandError
from .costs import FIXED, Plan, estimate_plan
from .names import experiment_name, settings_key
from .population import reproduce_population
from .report import has_runs, render, report_data
from .stage_cache import stage1_hash, verify_entry
from .stages import ensure_stage1
from .trainable import SweepContext, reproduce_trial

__all__ = ["RunSpec", "plan", "population_groups", "reproduce", "run"]


def run(args: argparse.Namespace) -> int:
    """The reproduction of the parsed command line; a user-facing failure is one line,
    status 2."""
    return cli.run_command(lambda: reproduce(args))


KIND = "reproduce"  # the invocation's parent run; its runs are ot.kind=trial


@dataclass(frozen=True)
class RunSpec:
    cell: Cell
    seed: int
    cfg: ExperimentConfig
    stage1_key: str
    tuned_from: str = ""  # the sweep run whose best setting the cell took (--tuned, --tune)
    tuned_val: float | None = None  # --tune: that setting's validation score in its search

    @property
    def run_key(self) -> str:
        return f"{self.cell.key}|seed{self.seed}"


def plan(
    table: Table,
    *,
    seeds: int | None,
    methods: list[str] | None,
    preset: str,
    smoke: bool,
    fidelity: bool,
    columns: list[str] | None = None,
    overrides: list[str] | None = None,
    first_seed: int = 0,
) -> list[RunSpec]:
    """Every run of the table: cells x seeds, each with its resolved config and stage-1 key."""
    try:
        cells = table.cells(methods, fidelity=fidelity, columns=columns)
    except ValueError as err:
        raise CommandError(str(err)) from None
    out = []
    for cell in cells:
        if cell.method.la_of:  # a +la row: read from its source row's runs, never run
            continue
        try:
            base = apply_overrides(
                cell_config(cell, seed=0, preset=preset, smoke=smoke), overrides or []
            )
            n = seeds if seeds is not None else base.seeds
            for seed in range(first_seed, first_seed + n):
                cfg = dataclasses.replace(base, seed=seed)
                out.append(RunSpec(cell, seed, cfg, stage1_hash(cfg)))
        except ConfigError as err:
            raise CommandError(f"{cell.key}: {err}") from None
    return out


def tuned_values(c, cfg: ExperimentConfig) -> tuple[dict, str] | None:
    """(best sampled values, sweep run id) of the latest finished sweep of ``cfg``'s experiment
    whose stage 1 is ``cfg``'s at the sweep's seed (same data, model, stage 1); None if none."""
    exp = c.get_experiment_by_name(cfg.name)
    if exp is None:
        return None
    sweeps = tracking.all_runs_with_tags(c, exp.experiment_id, {names.KIND: "sweep"})
    for run in sorted(sweeps, key=lambda r: -(r.info.end_time or 0)):
        tags = run.data.tags
        if run.info.status != "FINISHED" or not tags.get(names.SEED, "").isdigit():
            continue
        at_seed = dataclasses.replace(cfg, seed=int(tags[names.SEED]))
        if tags.get(names.STAGE1_HASH) != stage1_hash(at_seed):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = c.download_artifacts(run.info.run_id, "best.json", tmp)
            except Exception:
                continue
            return json.loads(Path(path).read_text())["params"], run.info.run_id
    return None


def _finished(c, exp_id: str, table: str, preset: str) -> set[str]:
    runs = tracking.all_runs_with_tags(c, exp_id, {names.TABLE: table, names.KIND: "trial"})
    return {
        f"{r.data.tags.get(names.CELL)}|seed{r.data.tags.get(names.SEED)}"
        for r in runs
        if r.info.status == "FINISHED" and r.data.tags.get(names.PRESET_ASKED) == preset
    }


def _apply_tuned(c, specs: list[RunSpec]) -> list[RunSpec]:
    """OT rows (not the fidelity rows) take their experiment's swept best; a row without a
    matching sweep stops the command (never a silent fall-back to the paper's setting)."""
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
        raise CommandError(
            f"--tuned: no finished sweep matches {', '.join(sorted(missing))}; run "
            "python -m orchestrator.sweep EXPERIMENT with the same data and stage 1 first"
        )
    return out


def _estimate(pending: list[RunSpec], concurrency: int, cached: set[str]) -> tuple[list[str], Plan]:
    index = {s.run_key: i for i, s in enumerate(pending)}
    groups = [[index[k] for k in g] for g in population_groups(pending)]
    runs = [(s.cfg, s.stage1_key) for s in pending]
    plan = estimate_plan(runs, min(concurrency, max(len(groups), 1)), cached, groups)
    populations = [g for g in groups if len(g) > 1]
    lines = (
        [
            f"  {sum(map(len, populations))} runs train as {len(populations)} populations "
            "(one trial each; a member's stage 2 counted at a single run's cost)"
        ]
        if populations
        else []
    )
    lines += [
        f"  {dev}: about {sec / 3600:.2f} device-hours of epochs ({sec / 60:.1f} min)"
        for dev, sec in plan.device_s.items()
    ]
    if pending and plan.device_s and set(plan.device_s) <= {FIXED.device}:
        left_out = ", without what is not measured" if plan.unmeasured else ""
        lines.append(
            f"  wall clock: about {plan.wall_s / 60:.1f} min at "
            f"{min(concurrency, max(len(groups), 1))} trials at a time, "
            f"with start-up, stage-1 builds and tracking{left_out} ({FIXED.source}, "
            f"{FIXED.device})"
        )
    elif pending and plan.device_s:
        lines.append(
            "  wall clock: the device time above over the devices the cluster gives at once "
            f"(fixed costs are measured on a {FIXED.device} only)"
        )
    if plan.unmeasured:
        lines.append(f"  not measured (no estimate): {', '.join(sorted(plan.unmeasured))}")
    return (lines if pending else ["  nothing to run"]), plan


def _print_plan(
    table: Table, specs: list[RunSpec], pending: list[RunSpec], cached: set[str], concurrency: int
) -> None:
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
    read = sum(
        not m.fidelity and bool(m.ot or m.control_of)
        for m in (r[0].cell.method for r in cells.values())
    )
    print(
        f"\ncells: {len(cells)}, runs: {len(specs)} ({len(pending)} to run, "
        f"{len(specs) - len(pending)} finished before)"
        + (f"; {read} +la cells read from these runs (none of their own)" if read else "")
    )
    print(f"stage-1 builds: {len(keys)} distinct for the runs left ({len(cached)} already cached)")
    print("estimate from measured costs (orchestrator/costs.py):")
    for line in _estimate(pending, concurrency, cached)[0]:
        print(line)


def _build_stage1(pending, storage, spec, parent, max_cpus, num_gpus) -> dict[str, object]:
    by_key: dict[str, RunSpec] = {}
    for s in pending:
        by_key.setdefault(s.stage1_key, s)

    def one(s: RunSpec):
        entry, _ = ensure_stage1(
            s.cfg, storage, spec, max_cpus=max_cpus, num_gpus=num_gpus, sweep_run_id=parent
        )
        return s.stage1_key, entry

    # Each ensure_stage1 waits on its own Ray task; the cluster runs as many as fit.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(by_key))) as pool:
        return dict(pool.map(one, by_key.values()))


def _figures(table: Table, specs: list[RunSpec], entries: dict, c, exp_id: str, parent: str):
    """Fig. 1 and Fig. 2 from the first column's first seed, logged to the parent run."""
    first_col = specs[0].cell.column.name
    seed = min(s.seed for s in specs)
    cands = [s for s in specs if s.cell.column.name == first_col and s.seed == seed]
    ot = next(
        (
            s
            for s in cands
            if s.cfg.stage2.method == "ot"
            and s.cfg.stage2.learn_weights  # the OT row, not its control
            and not s.cell.method.fidelity
        ),
        None,
    )
    base = next((s for s in cands if s.cfg.stage2.method == "none"), None)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if ot is not None and ot.stage1_key in entries:
            task = ray.remote(num_cpus=1)(paper_figures.fig1_masses)
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
            got = paper_figures.run_confusion(c, exp_id, table.name, s.cell.key, s.seed)
            if got is not None:
                conf[label] = got
        if len(conf) == 2:
            artifacts.write_fig2_png(
                conf, d / "fig2_confusion.png", title=f"{table.name}: {first_col}"
            )
        if any(d.iterdir()):
            c.log_artifacts(parent, str(d), "figures")


@dataclass(frozen=True)
class _Invocation:
    """One reproduce command's place in the store: what its runs need to be tracked."""

    table: Table
    asked: str  # settings_key(preset, tuned, tune)
    storage: object
    uri: str
    exp_id: str
    client: object
    parent: str
    name: str  # reproduce-YYYYmmdd-HHMMSS
    store_args: str  # the options that point `report` / `ui` at this store


def _preflight(specs: list[RunSpec], dry_run: bool) -> None:
    """Every cell's combinations, then every data source the cells read, once each (a dry run
    fetches nothing and only warns, once per distinct message: the columns of one dataset
    differ in their split but miss the same files)."""
    for s in specs:
        runtime.preflight(s.cfg, data=False, label=s.cell.key)
    checked, warned = set(), []
    for s in specs:
        m = s.cfg.model
        data = json.dumps(
            [dataclasses.asdict(s.cfg.data), m.arch, m.encoder, m.pretrained], sort_keys=True
        )
        if data in checked:
            continue
        checked.add(data)
        try:
            runtime.preflight(s.cfg, fetch=not dry_run)
        except CommandError as err:
            if not dry_run:
                raise
            if str(err) not in warned:
                warned.append(str(err))
                print(f"warning: {err}", file=sys.stderr)
    if warned:
        print(
            "(a dry run fetches nothing; a run first fetches what can be fetched, unless "
            "--offline or --set data.download=false)",
            file=sys.stderr,
        )


def _dry_run(args, table: Table, specs: list[RunSpec]) -> int:
    """The grid and its estimate; reads the store (when there is one), never writes it."""
    storage, _ = cli.open_storage(args.storage, create=False)
    _, c = cli.read_tracking(args.tracking_uri, args.storage)
    asked = settings_key(args.preset, args.tuned, args.tune)
    exp = None if c is None else c.get_experiment_by_name(experiment_name(table.name, args.smoke))
    done = set() if exp is None else _finished(c, exp.experiment_id, table.name, asked)
    if args.tuned:
        specs = _apply_tuned(c, specs)
    pending = [s for s in specs if s.run_key not in done]
    cached = _cached_keys(storage, pending)
    _print_plan(table, specs, pending, cached, _local_concurrency(args, len(pending)))
    if args.tune:
        _print_searches(args, c, specs, cached)
    return 0


def _print_searches(args, c, specs: list[RunSpec], cached: set[str]) -> None:
    """``--tune``: the searches left and their estimate (each setting counted as a run of the
    row's published setting; a stage-1 space builds a stage 1 per setting)."""
    rows, runs, groups = [], [], []
    for s in specs:
        cfg = dataclasses.replace(s.cfg, seed=tune_rows.SEARCH_SEED)
        space = row_space(s.cell.method, cfg)
        if space is None or s.cell.key in {r for r, _ in rows}:
            continue
        done = c is not None and tune_rows.tuned_setting(c, cfg, space, args.tune) is not None
        what = "finished before" if done else f"{args.tune} settings of {space.name}"
        rows.append((s.cell.key, what))
        if done:
            continue
        key = stage1_hash(cfg)
        start = len(runs)
        runs += [(cfg, f"{key}#{i}" if space.stage1 else key) for i in range(args.tune)]
        groups += [[i] for i in range(start, len(runs))]
    print(f"\n--tune {args.tune}: one search per row on seed {tune_rows.SEARCH_SEED}, then the "
          "rows above on their fresh seeds")  # fmt: skip
    width = max((len(k) for k, _ in rows), default=4)
    for key, what in rows:
        print(f"  {key:<{width}}  {what}")
    conc = _local_concurrency(args, len(runs))
    plan = estimate_plan(runs, conc, cached, groups)
    for dev, sec in plan.device_s.items():
        print(f"  searches: about {sec / 3600:.2f} {dev}-hours of epochs ({sec / 60:.1f} min)")
    if plan.device_s and set(plan.device_s) <= {FIXED.device}:
        print(f"  searches' wall clock: about {plan.wall_s / 60:.1f} min at {conc} at a time "
              "(each search also starts its own Tuner)")  # fmt: skip
    if plan.unmeasured:
        print(f"  not measured (no estimate): {', '.join(sorted(plan.unmeasured))}")


def _cached_keys(storage, pending: list[RunSpec]) -> set[str]:
    """The stage-1 keys of ``pending`` whose cache entry is already complete."""
    cached = set()
    for k in {s.stage1_key for s in pending}:
        with contextlib.suppress(Exception):  # a corrupt entry will be rebuilt
            if verify_entry(storage, k) is not None:
                cached.add(k)
    return cached


def _local_concurrency(args, runs: int) -> int:
    """Runs at a time on this machine (a dry run starts no Ray): its CPUs / --cpus-per-trial."""
    fits = int((os.cpu_count() or 1) // max(args.cpus_per_trial, 1e-9))
    return max(1, min(fits, max(runs, 1)))


def _open_invocation(args, table: Table) -> _Invocation:
    """The store opened, and the invocation's parent run created."""
    storage, local_root = cli.open_storage(args.storage)
    name = experiment_name(table.name, args.smoke)
    uri, exp_id, c = cli.open_tracking(args.tracking_uri, storage, local_root, name)
    asked = settings_key(args.preset, args.tuned, args.tune)
    invocation = time.strftime("reproduce-%Y%m%d-%H%M%S")
    parent = c.create_run(
        exp_id,
        run_name=invocation,
        tags={
            names.KIND: KIND,
            names.TABLE: table.name,
            names.PRESET: args.preset,
            names.PRESET_ASKED: asked,
            names.SMOKE: str(args.smoke).lower(),
            names.GIT_COMMIT: tracking.git_commit(REPO),
        },
    ).info.run_id
    where = cli.store_args(uri, storage, local_root)
    return _Invocation(table, asked, storage, uri, exp_id, c, parent, invocation, where)


def reproduce(args: argparse.Namespace) -> int:
    """The reproduction's steps; its exit status (0, 1 when a run failed, 130 interrupted)."""
    started = time.monotonic()
    cli.apply_fetch_settings(args)  # --offline, --cache-in-storage: before any library is imported
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
        first_seed=args.first_seed,
    )
    if args.print_config:
        runtime.print_configs(((s.run_key, s.cfg) for s in specs), full=args.print_config == "full")
        return 0
    _preflight(specs, args.dry_run)
    if args.dry_run:
        return _dry_run(args, table, specs)
    inv = _open_invocation(args, table)
    cli.watch_run(inv.client, inv.parent)
    if args.tuned:
        specs = _apply_tuned(inv.client, specs)
    try:
        specs = _tune(args, inv, specs) if args.tune else specs
    except _Interrupted:
        return _interrupted(inv)
    done = _finished(inv.client, inv.exp_id, table.name, inv.asked)
    pending = [s for s in specs if s.run_key not in done]
    print(
        f"{inv.name}: {table.name}, {len(specs)} runs ({len(pending)} to run, "
        f"{len(specs) - len(pending)} finished before); MLflow {inv.uri}",
        flush=True,
    )
    _log_invocation(args, inv, len(specs), len(pending))
    try:
        ok, estimate = _run_pending(args, inv, specs, pending) if pending else (True, None)
    except _Interrupted:
        return _interrupted(inv)
    inv.client.set_terminated(inv.parent, status="FINISHED" if ok else "FAILED")
    _print_table(args, inv)
    if estimate is not None and estimate.device_s and set(estimate.device_s) <= {FIXED.device}:
        took = (time.monotonic() - started) / 60
        note = " (parts not measured left out)" if estimate.unmeasured else ""
        print(f"took {took:.1f} min; estimated {estimate.wall_s / 60:.1f} min{note}")
    if not ok:
        print("error: some runs did not finish; see the errors above", file=sys.stderr)
        return 1
    return 0


def _tune(args, inv: _Invocation, specs: list[RunSpec]) -> list[RunSpec]:
    """``--tune N``: each row's search (``orchestrator.tune_rows``), one after another on one
    Ray; the runs then take their row's best setting."""
    try:  # the searches' scheduler reaches into Tune: only on a Ray it was tested with
        ray_internals.check_ray_version()
    except RuntimeError as err:
        raise CommandError(str(err)) from None
    runtime.init_ray(args.address)
    store = (inv.storage.uri, inv.uri)
    tuned: dict[str, tune_rows.Tuned] = {}
    for s in specs:
        cfg = dataclasses.replace(s.cfg, seed=tune_rows.SEARCH_SEED)
        if s.cell.key in tuned or row_space(s.cell.method, cfg) is None:
            continue
        try:
            tuned[s.cell.key] = tune_rows.search_row(
                s.cell, cfg, args.tune, args, store, inv.client
            )
        except KeyboardInterrupt:
            raise _Interrupted from None
    searches = {f"tune.{k.replace('|', '/')}": t.sweep_run for k, t in tuned.items()}
    tracking.log_params(inv.client, inv.parent, searches)
    return tune_rows.apply_tuned(specs, tuned)


def _log_invocation(args, inv: _Invocation, runs: int, pending: int) -> None:
    """The invocation's options and run counts, as params of its parent run."""
    tracking.log_params(
        inv.client,
        inv.parent,
        {
            "reproduce.table": inv.table.name,
            "reproduce.seeds": "protocol" if args.seeds is None else args.seeds,
            "reproduce.first_seed": args.first_seed,
            "reproduce.methods": ",".join(args.methods or []) or "all",
            "reproduce.preset": args.preset,
            "reproduce.tuned": args.tuned,
            "reproduce.tune": args.tune,
            "reproduce.fidelity": args.fidelity,
            "reproduce.columns": ",".join(args.columns or []) or "all",
            "reproduce.overrides": " ".join(args.overrides) or "none",
            "reproduce.runs": runs,
            "reproduce.pending": pending,
        },
    )


def _interrupted(inv: _Invocation) -> int:
    """Ctrl-C: the runs Tune stopped stay open (a stopped trial cannot tell Ctrl-C from a
    scheduler), so they are closed here as interrupted; running the command again trains
    them."""
    c = inv.client
    runs = tracking.all_runs_with_tags(c, inv.exp_id, {names.PARENT: inv.parent})
    tracking.close_running(c, runs, tag=names.INTERRUPTED, status="KILLED")
    c.set_tag(inv.parent, names.INTERRUPTED, "true")
    c.set_terminated(inv.parent, status="KILLED")
    print(
        "interrupted: the runs that finished are kept; run the same command again to "
        "train the rest",
        file=sys.stderr,
    )
    return 130


def _print_table(args, inv: _Invocation) -> None:
    """The table from the finished runs, and the command that prints it again."""
    preset = settings_key(args.preset, args.tuned)
    data = report_data(inv.client, inv.exp_id, inv.table, preset, smoke=args.smoke, tune=args.tune)
    if not has_runs(data):  # every run failed: the error line says so
        return
    print()
    print(render(data, "md"))
    flags = (
        (" --preset " + args.preset if args.preset != "paper" else "")
        + "".join(f for f, on in ((" --tuned", args.tuned), (" --smoke", args.smoke)) if on)
        + (f" --tune {args.tune}" if args.tune else "")
    )
    print(
        "\nreport again: "
        + cli.command(f"orchestrator.report {inv.table.name}{flags}{inv.store_args}")
        + " --format html --out report.html"
    )


def _contexts(args, inv: _Invocation, pending: list[RunSpec], entries: dict, spec) -> dict:
    """Each pending run's trial context: its config, its stage-1 entry, its table tags."""
    out = {}
    for s in pending:
        entry = entries[s.stage1_key]
        out[s.run_key] = SweepContext(
            base=s.cfg,
            entry_uri=entry.uri,
            stage1_key=entry.key,
            tracking=spec,
            parent_run_id=inv.parent,
            sweep_id=inv.name,
            cpus_per_trial=args.cpus_per_trial,
            tags={
                names.TABLE: inv.table.name,
                names.CELL: s.cell.key,
                names.COLUMN: s.cell.column.name,
                names.METHOD: s.cell.method.name,
                names.PRESET_ASKED: inv.asked,
                **({names.TUNED_FROM: s.tuned_from} if s.tuned_from else {}),
                **({names.TUNED_VAL: f"{s.tuned_val:.6g}"} if s.tuned_val is not None else {}),
                names.SMOKE: str(args.smoke).lower(),
                names.FIDELITY: str(s.cell.method.fidelity).lower(),
            },
        )
    return out


def population_groups(pending: list[RunSpec]) -> list[list[str]]:
    """The pending runs' keys, grouped: runs of one stage-1 entry whose configs differ only in
    member-level stage-2 fields (an OT row and its ``+no_ot`` control, say) train as one
    population (``trainables.population``), each still its own MLflow run; every other run is
    a group of one. Seeds never share a group (each has its own stage 1)."""
    groups: dict[str, list[str]] = {}
    for s in pending:
        if population_reason(s.cfg.stage2) is not None:
            groups[s.run_key] = [s.run_key]
            continue
        neutral = {f: getattr(Stage2Config(), f) for f in VARYING}
        shape = dataclasses.replace(s.cfg, stage2=dataclasses.replace(s.cfg.stage2, **neutral))
        key = f"{s.stage1_key}|{json.dumps(to_dict(shape), sort_keys=True)}"
        groups.setdefault(key, []).append(s.run_key)
    return list(groups.values())


def _reproduce_unit(config: dict, contexts: dict) -> None:
    """One grid point of ``reproduce``: a single run, or a population of runs."""
    keys = config["runs"]
    if len(keys) == 1:
        reproduce_trial({"run": keys[0]}, contexts)
    else:
        reproduce_population(config, contexts)


def _run_pending(
    args, inv: _Invocation, specs: list[RunSpec], pending: list[RunSpec]
) -> tuple[bool, Plan]:
    """Stage 1 of every pending run (shared by hash), then the runs on one Tune grid. Returns
    (every run finished, the estimate for this cluster's concurrency)."""
    spec = tracking.TrackingSpec(inv.uri, inv.exp_id)
    runtime.init_ray(args.address)
    fits = runtime.fitting_trials(args.cpus_per_trial, args.gpus_per_trial)
    conc = max(1, min(fits, len(pending)))
    estimate = _estimate(pending, conc, _cached_keys(inv.storage, pending))[1]
    try:
        entries = _build_stage1(
            pending,
            inv.storage,
            spec,
            inv.parent,
            runtime.node_cpus(),  # each build asks for its stage1.threads, at most this
            1 if args.gpus_per_trial else 0,
        )
    except ray.exceptions.RayTaskError as err:
        raise cli.stage1_failure(err, inv.client, inv.parent) from None
    contexts = _contexts(args, inv, pending, entries, spec)
    if fits < 1:
        raise CommandError("a run does not fit the cluster (see --cpus-per-trial/--gpus-per-trial)")
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    groups = population_groups(pending)
    if any(len(g) > 1 for g in groups):
        n = sum(len(g) for g in groups if len(g) > 1)
        print(f"{n} runs train as {sum(len(g) > 1 for g in groups)} populations", flush=True)
    trainable = tune.with_resources(
        tune.with_parameters(_reproduce_unit, contexts=contexts), resources
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"runs": tune.grid_search(groups)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=min(fits, len(contexts)),
            trial_dirname_creator=lambda t: f"run_{t.trial_id}",
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=inv.name,
            storage_path=inv.storage.child_uri("reproduce", inv.table.name),
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            # no scheduler (no early stop); no best val: each run is its own cell
            callbacks=progress.callbacks(args, best_val=False),
            verbose=progress.tune_verbose(args),
        ),
    )
    results, interrupted = cli.fit(tuner)
    if interrupted:
        raise _Interrupted
    _figures(inv.table, specs, entries, inv.client, inv.exp_id, inv.parent)
    return results.num_errors == 0, estimate


class _Interrupted(Exception):
    """Tune's fit ended on Ctrl-C."""
