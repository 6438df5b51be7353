"""``reproduce TABLE --tune N``: every row searched with the same budget before it is re-run.

Each row that is a method (not a ``+no_ot`` control, not a fidelity preset) gets an N-setting
search of its own space (``search_spaces.tables.row_space``) at the search seed: one ``sweep``
of the cell's config, run in this process, so every row has the same searcher, seed, selection
metric (validation balanced accuracy), populations where stage 2 allows them and the stage cache
for stage-1 methods. The best setting is then what the row's runs (fresh seeds) and its
control's use. A finished search of the same config, space and N is reused, so running the
command again skips the searches it has.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from search_spaces.spaces import Space
from search_spaces.tables import Cell, cell_overrides, row_space
from trainables.config import ExperimentConfig, apply_values, flatten

from . import cli, names, sweep, tracking
from .cli import CommandError
from .sweep_run import run_sweep
from .sweep_setup import trial_cpus

__all__ = ["SEARCH_SEED", "Tuned", "apply_tuned", "search_argv", "search_row", "tuned_setting"]

SEARCH_SEED = 0  # the searches' seed; the re-runs take fresh ones (--first-seed >= 1)


@dataclass(frozen=True)
class Tuned:
    """A row's search outcome: its best setting, the sweep's parent run, and the setting's
    validation balanced accuracy (%) on the search seed (optimistic: the best of N)."""

    params: dict
    sweep_run: str
    best_val: float


def search_argv(
    cell: Cell, cfg: ExperimentConfig, n: int, args, store: tuple[str, str], *, smoke: bool
) -> list[str]:
    """The ``sweep`` command line of a row's search: the cell's config ``cfg`` at the search
    seed (its overrides, then the user's ``--set``), ``n`` settings of its space, into
    ``store`` (storage URI, tracking URI), no figures drawn (any run's later:
    orchestrator.figures), each trial on the CPUs it needs (``sweep_setup.trial_cpus``)."""
    space = row_space(cell.method, cfg)
    cpus = trial_cpus(space, cfg, args.cpus_per_trial)
    argv = [cell.column.experiment, "--trials", str(n), "--space", space.name]
    argv += ["--seed", str(SEARCH_SEED), "--preset", cell.method.preset or args.preset]
    argv += ["--figures", "0", "--storage", store[0], "--tracking-uri", store[1]]
    argv += ["--cpus-per-trial", f"{cpus:g}"]
    argv += ["--gpus-per-trial", f"{args.gpus_per_trial:g}"]
    argv += ["--max-failures", str(args.max_failures)]
    if args.address:
        argv += ["--address", args.address]
    if smoke:
        argv.append("--smoke")
    argv += [flag for flag, on in (("--offline", args.offline), ("--quiet", args.quiet),
             ("--cache-in-storage", args.cache_in_storage)) if on]  # fmt: skip
    argv += ["--verbose"] * args.verbose
    for item in (*cell_overrides(cell, preset=args.preset, smoke=smoke), *args.overrides):
        argv += ["--set", item]
    return argv


def _same_config(run, cfg: ExperimentConfig) -> bool:
    """The sweep's parent logged ``cfg`` whole (its params, as ``tracking.log_params`` writes
    them)."""
    params = run.data.params
    return all(params.get(k) == str(v)[:6000] for k, v in flatten(cfg).items())


def tuned_setting(c, cfg: ExperimentConfig, space: Space, n: int) -> Tuned | None:
    """The finished ``n``-setting search of ``space`` over ``cfg`` (at the search seed): its
    best setting, or None when there is none (the newest one when several)."""
    exp = c.get_experiment_by_name(cfg.name)
    if exp is None:
        return None
    tags = {names.KIND: "sweep", names.SEARCH_SPACE: space.name, names.SEED: str(cfg.seed)}
    runs = tracking.all_runs_with_tags(c, exp.experiment_id, tags)
    for run in sorted(runs, key=lambda r: -(r.info.end_time or 0)):
        if (
            run.info.status != "FINISHED"
            or run.data.params.get("sweep.trials") != str(n)
            or names.BEST_VAL not in run.data.metrics
            or not _same_config(run, cfg)
        ):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = c.download_artifacts(run.info.run_id, "best.json", tmp)
            except Exception:  # a sweep that closed without a best setting
                continue
            params = json.loads(Path(path).read_text())["params"]
        return Tuned(params, run.info.run_id, run.data.metrics[names.BEST_VAL])
    return None


def search_row(cell: Cell, cfg: ExperimentConfig, n: int, args, store, c) -> Tuned:
    """The row's search: reused when finished before, else run now (a sweep in this process,
    on the Ray it started). One line when it finishes with no setting."""
    space = row_space(cell.method, cfg)
    found = tuned_setting(c, cfg, space, n)
    if found is not None:
        print(f"--tune: {cell.key}: the search of {n} settings finished before", flush=True)
        return found
    sweep_args = sweep.parse_args(search_argv(cell, cfg, n, args, store, smoke=args.smoke))
    if cli.config_from_args(sweep_args) != cfg:  # the search must be of the row's own config
        raise CommandError(f"--tune: {cell.key}: the search's config is not the row's")
    print(f"\n--tune: {cell.key}: {n} settings of space {space.name}", flush=True)
    if run_sweep(sweep_args) == 130:  # stopped (Ctrl-C): the sweep said how to resume it
        raise KeyboardInterrupt
    found = tuned_setting(c, cfg, space, n)
    if found is None:
        raise CommandError(f"--tune: the search of {cell.key} finished no setting")
    return found


def apply_tuned(specs: list, tuned: dict[str, Tuned]) -> list:
    """Each run of a searched row, and of its control, at the row's best setting (tagged with
    the search it came from)."""
    out = []
    for s in specs:
        row = s.cell.method.control_of or s.cell.method.name
        t = tuned.get(f"{s.cell.column.name}|{row}")
        if t is None:
            out.append(s)
            continue
        cfg = apply_values(s.cfg, t.params)
        out.append(dataclasses.replace(s, cfg=cfg, tuned_from=t.sweep_run, tuned_val=t.best_val))
    return out
