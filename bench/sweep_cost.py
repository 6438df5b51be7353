"""A sweep's cost per setting: the whole command a user types, end to end. Not a test.

    .venv/bin/python bench/sweep_cost.py [--experiment image_mnist_lt] [--old COMMIT]
        [--runs 64:1 64:32 256:32] [--out bench/results/sweep_cost_<exp>.json]

Each ``SETTINGS:P`` runs ``python -m orchestrator.sweep NAME --quiet --trials SETTINGS
--population P`` on a run storage whose stage-1 entry was built first (untimed), timed from
the command's start to its exit: Ray's start, the trials, MLflow, the figures, the summary, the
control and the re-run included. With ``--old`` the same sweeps also run on a git worktree of
that commit (this checkout's ``.venv``), each pair back to back on one machine, so the two
columns compare. Per sweep, a timeline read from its MLflow runs' clocks: ``start`` (the
command's start to the parent run: imports, Ray), ``to first trial`` (stage-1 check, the
Tuner, the trial processes' start), ``trials`` (the first trial run's start to the last's
end: training, tracking), ``end`` (the last trial's end to the exit: the ranking, figures,
summary, control, re-run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import save_cpu_result, short_commit, worktree

ROOT = Path(__file__).resolve().parents[1]


def sweep(side: Path, name: str, storage: Path, settings: int, population: int) -> dict:
    """One sweep on ``side`` (a checkout), timed; its timeline from the store."""
    cmd = [str(ROOT / ".venv/bin/python"), "-m", "orchestrator.sweep", name, "--quiet",
           "--storage", str(storage), "--trials", str(settings),
           "--population", str(population)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(side)}  # Ray's workers import the side's code too
    start = time.time()
    res = subprocess.run(cmd, cwd=side, env=env, capture_output=True, text=True)
    end = time.time()
    if res.returncode:
        sys.exit(f"sweep failed ({side.name}): {res.stderr.strip().splitlines()[-1]}")
    return {
        "wall_s": round(end - start, 1),
        "settings_per_min": round(60 * settings / (end - start), 1),
        "timeline_s": timeline(storage, name, start, end),
    }


def timeline(storage: Path, name: str, start: float, end: float) -> dict:
    """The latest sweep's phases (seconds) from its MLflow runs' start and end times."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = c.get_experiment_by_name(name).experiment_id
    runs = c.search_runs([exp], max_results=5000)
    parent = max((r for r in runs if r.data.tags.get("ot.kind") == "sweep"),
                 key=lambda r: r.info.start_time)  # fmt: skip
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    first = min(r.info.start_time for r in trials) / 1e3
    last = max(r.info.end_time for r in trials) / 1e3
    at = parent.info.start_time / 1e3
    return {
        "start": round(at - start, 1),
        "to first trial": round(first - at, 1),
        "trials": round(last - first, 1),
        "end": round(end - last, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--experiment", default="image_mnist_lt")
    p.add_argument("--old", default=None, help="also run the sweeps on this commit")
    p.add_argument("--runs", nargs="+", default=["64:1", "64:32", "256:32"],
                   help="SETTINGS:POPULATION pairs (default 64:1 64:32 256:32)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    pairs = [tuple(int(x) for x in r.split(":")) for r in args.runs]
    start = time.time()
    result = {"experiment": args.experiment, "after": short_commit("HEAD"), "sweeps": {}}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sides = {"after": ROOT}
        if args.old:
            result["before"] = short_commit(args.old)
            sides = {"before": stack.enter_context(worktree(args.old)), **sides}
        stores = {k: tmp / k for k in sides}
        for k, side in sides.items():  # the stage-1 entry, untimed
            sweep(side, args.experiment, stores[k], 1, 1)
        for settings, pop in pairs:
            row = {}
            for k, side in sides.items():
                row[k] = sweep(side, args.experiment, stores[k], settings, pop)
                print(f"{k}: {settings} settings, P={pop}: {row[k]}", flush=True)
            result["sweeps"][f"{settings}:{pop}"] = row
    out = args.out or ROOT / f"bench/results/sweep_cost_{args.experiment}.json"
    save_cpu_result(out, result, start)
    print(json.dumps(result["sweeps"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
