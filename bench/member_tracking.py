"""Where a population trial's time goes: its members' training against their MLflow tracking.
Not a test.

    .venv/bin/python bench/member_tracking.py [--experiment image_mnist_lt] [--members 32]
        [--repeats 3] [--old COMMIT] [--out bench/results/member_tracking_<exp>.json]

One population trial of ``--members`` settings (``stage2.lr`` spread over a decade) trains in
this process, as a sweep's trial actor runs it (``orchestrator.population.train_members``,
the sweep's ASHA rungs, figures left to the sweep's end), on a fresh SQLite store and a stage 1
built once (untimed). Timed: the whole trial, and the time spent inside MLflow's client calls
(counted per call name), whose difference is the training; the median of ``--repeats``. With
``--old`` the same runs on git worktrees of that commit and of HEAD, one after the other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import placed_sides, save_cpu_result, short_commit

ROOT = Path(__file__).resolve().parents[1]
CALLS = ("create_run", "log_batch", "log_artifacts", "log_dict", "set_tag", "set_terminated",
         "search_runs")  # fmt: skip


def one_side(experiment: str, members: int, repeats: int, tmp: Path) -> dict:
    """In this interpreter: ``repeats`` trials of ``members`` settings; wall, store time, calls."""
    import torch
    from mlflow.tracking import MlflowClient

    from orchestrator import population, tracking
    from orchestrator.stages import build_entry
    from orchestrator.storage import Storage
    from orchestrator.trainable import SweepContext, asha_rungs
    from search_spaces import resolve
    from trainables.config import apply_values

    torch.set_num_threads(1)
    cfg = resolve(experiment)
    entry = build_entry(cfg, Storage(tmp.as_uri()).uri, None, device=torch.device("cpu"))
    store = {"s": 0.0, "calls": {}}
    for name in CALLS:
        real = getattr(MlflowClient, name)

        def timed(self, *a, _real=real, _name=name, **kw):
            t = time.perf_counter()
            try:
                return _real(self, *a, **kw)
            finally:
                store["s"] += time.perf_counter() - t
                store["calls"][_name] = store["calls"].get(_name, 0) + 1

        setattr(MlflowClient, name, timed)
    rows = []
    for r in range(repeats + 1):  # the first warms the kernels and the store: not counted
        uri = f"sqlite:///{tmp / f'mlflow{r}.db'}"
        exp = tracking.ensure_experiment(uri, "bench", str(tmp / f"artifacts{r}"))
        parent = tracking.client(uri).create_run(exp, run_name="sweep").info.run_id
        spec = tracking.TrackingSpec(uri, exp)
        ctx = SweepContext(cfg, entry.uri, entry.key, spec, parent, "bench", draw=False)
        settings = [{"stage2.lr": cfg.stage2.lr * 10 ** (i / members - 0.5)}
                    for i in range(members)]  # fmt: skip
        todo = [(ctx, apply_values(cfg, s), f"t_m{i}", s) for i, s in enumerate(settings)]
        store.update(s=0.0, calls={})
        start = time.perf_counter()
        population.train_members(todo, f"t{r}", lambda *a, **k: None,
                                 rungs=asha_rungs(cfg.stage2.epochs))  # fmt: skip
        wall = time.perf_counter() - start
        if r:
            rows.append({"wall_s": wall, "store_s": store["s"], "calls": dict(store["calls"])})
    wall = statistics.median(r["wall_s"] for r in rows)
    store_s = statistics.median(r["store_s"] for r in rows)
    return {"wall_s": round(wall, 2), "store_s": round(store_s, 2),
            "training_s": round(wall - store_s, 2), "calls": rows[-1]["calls"]}  # fmt: skip


def side_run(tree: Path, args, out: Path) -> dict:
    cmd = [str(ROOT / ".venv/bin/python"), str(ROOT / "bench/member_tracking.py"), "--side",
           "--experiment", args.experiment, "--members", str(args.members),
           "--repeats", str(args.repeats), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=tree, env=env, check=True)
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--experiment", default="image_mnist_lt")
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--old", default=None, help="also run on this commit (a git worktree)")
    p.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.side:  # one checkout's run, in this interpreter
        with tempfile.TemporaryDirectory() as tmp:
            res = one_side(args.experiment, args.members, args.repeats, Path(tmp))
        args.out.write_text(json.dumps(res))
        return
    start = time.time()
    result = {"experiment": args.experiment, "members": args.members,
              "after": short_commit("HEAD")}  # fmt: skip
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sides = placed_sides(stack, args.old)
        if args.old:
            result["before"] = short_commit(args.old)
        for k, tree in sides.items():
            result[k + "_run"] = side_run(tree, args, tmp / f"{k}.json")
            print(f"{k}: {result[k + '_run']}", flush=True)
    out = args.out or ROOT / f"bench/results/member_tracking_{args.experiment}.json"
    save_cpu_result(out, result, start)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
