"""A sweep's cost per setting: the whole command a user types, end to end. Not a test.

    .venv/bin/python bench/sweep_cost.py [--experiment image_mnist_lt] [--old COMMIT]
        [--runs 64:1 64:32 256:32] [--server] [--out bench/results/sweep_cost_<exp>.json]

Each ``SETTINGS:P`` runs ``python -m orchestrator.sweep NAME --quiet --trials SETTINGS
--population P`` on a run storage whose stage-1 entry was built first (untimed), timed from
the command's start to its exit: Ray's start, the trials, MLflow, the figures, the summary, the
control and the re-run included. With ``--old`` the same sweeps run on a git worktree of that
commit and on one of HEAD (both with this checkout's ``.venv``), each pair back to back on one
machine, so the two columns compare.

Per sweep, a timeline read from its MLflow runs' clocks: ``start`` (the command's start to the
parent run: imports, Ray), ``to first trial`` (stage-1 check, the Tuner, the trial processes'
start), ``trials`` (the first trial run's start to the last's end: training, tracking), ``end``
(the last trial's end to the exit: the ranking, figures, summary, control, re-run). With
``--server`` each side tracks to its own ``mlflow server`` on 127.0.0.1 (SQLite behind it,
artifacts proxied: the cluster path) instead of the storage's SQLite file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import placed_sides, save_cpu_result, short_commit

ROOT = Path(__file__).resolve().parents[1]


def sweep(side: Path, name: str, storage: Path, settings: int, population: int,
          uri: str | None) -> dict:  # fmt: skip
    """One sweep on ``side`` (a checkout), timed; its timeline from the store (``uri``, or
    the storage's SQLite file)."""
    cmd = [str(ROOT / ".venv/bin/python"), "-m", "orchestrator.sweep", name, "--quiet",
           "--storage", str(storage), "--trials", str(settings),
           "--population", str(population)]  # fmt: skip
    if uri:
        cmd += ["--tracking-uri", uri]
    env = {**os.environ, "PYTHONPATH": str(side)}  # Ray's workers import the side's code too
    start = time.time()
    res = subprocess.run(cmd, cwd=side, env=env, capture_output=True, text=True)
    end = time.time()
    if res.returncode:
        sys.exit(f"sweep failed ({side.name}): {res.stderr.strip().splitlines()[-1]}")
    return {
        "wall_s": round(end - start, 1),
        "settings_per_min": round(60 * settings / (end - start), 1),
        "timeline_s": timeline(uri or f"sqlite:///{storage / 'mlflow.db'}", name, start, end),
    }


@contextlib.contextmanager
def mlflow_server(root: Path):
    """``mlflow server`` on a free 127.0.0.1 port over ``root`` (SQLite, proxied artifacts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root.mkdir(parents=True)
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/python"), "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", (root / "artifacts").as_uri(), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.5)
        else:
            sys.exit(f"mlflow server on {url} did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def timeline(uri: str, name: str, start: float, end: float) -> dict:
    """The latest sweep's phases (seconds) from its MLflow runs' start and end times."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
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
    p.add_argument("--server", action="store_true",
                   help="track to an mlflow server on 127.0.0.1 (one per side)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    pairs = [tuple(int(x) for x in r.split(":")) for r in args.runs]
    start = time.time()
    result = {"experiment": args.experiment, "after": short_commit("HEAD"),
              "store": "mlflow server" if args.server else "sqlite", "sweeps": {}}  # fmt: skip
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sides = placed_sides(stack, args.old)
        if args.old:
            result["before"] = short_commit(args.old)
        stores = {k: tmp / k for k in sides}
        uris = {k: None for k in sides}
        if args.server:
            uris = {k: stack.enter_context(mlflow_server(tmp / f"server-{k}")) for k in sides}
        for k, side in sides.items():  # the stage-1 entry, untimed
            sweep(side, args.experiment, stores[k], 1, 1, uris[k])
        for settings, pop in pairs:
            row = {}
            for k, side in sides.items():
                row[k] = sweep(side, args.experiment, stores[k], settings, pop, uris[k])
                print(f"{k}: {settings} settings, P={pop}: {row[k]}", flush=True)
            result["sweeps"][f"{settings}:{pop}"] = row
    suffix = "_server" if args.server else ""
    out = args.out or ROOT / f"bench/results/sweep_cost_{args.experiment}{suffix}.json"
    save_cpu_result(out, result, start)
    print(json.dumps(result["sweeps"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
