"""What a sweep in trial order costs, and whether its outcome repeats. Not a test.

    .venv/bin/python bench/sweep_order.py [--experiment image_mnist_lt] [--trials 64]
        [--population 1] [--repeats 3] [--out bench/results/sweep_order_<exp>_p<P>.json]

Runs ``orchestrator.sweep NAME --trials N --population P`` (stage 1 built first, untimed, in a
fresh run storage shared by every run) with ``--order trial`` (ASHA and TPE in the order the
trials were created) and ``--order arrival`` (Tune's own: as results arrive), alternating,
``--repeats`` times each.
Printed for each side: the wall times and their median, each run's best validation score, and
how many different outcomes the repeats gave (the summary from ``== sweep summary ==`` to its
MLflow lines, Tune's random trial ids masked); then the ratio of the medians (trial order
against arrival order).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_cpu_result

REPO = Path(__file__).resolve().parent.parent


def _sweep(name: str, storage: str, trials: int, population: int, *extra: str) -> tuple:
    cmd = [sys.executable, "-m", "orchestrator.sweep", name, "--quiet", "--storage", storage,
           "--trials", str(trials), "--population", str(population), *extra]  # fmt: skip
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode:
        raise SystemExit(f"sweep failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    out = res.stdout
    summary = out[out.index("== sweep summary ==") : out.index("MLflow:")]
    best = float(re.search(r"best trial \S+: val balanced acc ([0-9.]+)", summary).group(1))
    return wall, re.sub(r"[0-9a-f]{8,}", "ID", summary), best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="image_mnist_lt")
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--population", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    start = time.time()
    sides = {"trial": ("--order", "trial"), "arrival": ("--order", "arrival")}
    walls: dict[str, list[float]] = {k: [] for k in sides}
    outcomes: dict[str, list[str]] = {k: [] for k in sides}
    bests: dict[str, list[float]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory() as storage:
        _sweep(args.experiment, storage, 1, 1)  # builds the stage-1 cache entry: not timed
        for r in range(args.repeats):
            for side, extra in sides.items():
                wall, summary, best = _sweep(
                    args.experiment, storage, args.trials, args.population, *extra
                )
                walls[side].append(round(wall, 1))
                outcomes[side].append(summary)
                bests[side].append(best)
                print(f"{side} run {r + 1}: {wall:.1f} s, best validation {best:.2f}", flush=True)
    result = {"experiment": args.experiment, "trials": args.trials,
              "population": args.population, "repeats": args.repeats}  # fmt: skip
    for side in sides:
        med = statistics.median(walls[side])
        distinct = len(set(outcomes[side]))
        result[side] = {"walls_s": walls[side], "median_s": med, "distinct_outcomes": distinct,
                        "best_val": bests[side]}  # fmt: skip
        print(f"{side}: median {med:.1f} s of {walls[side]}; {distinct} distinct outcome(s) "
              f"in {args.repeats} runs", flush=True)  # fmt: skip
    ratio = result["trial"]["median_s"] / result["arrival"]["median_s"]
    result["trial_over_arrival"] = round(ratio, 3)
    print(f"wall time, trial order / arrival order: {ratio:.2f}x", flush=True)
    out = args.out or (
        REPO / "bench" / "results" / f"sweep_order_{args.experiment}_p{args.population}.json"
    )
    save_cpu_result(out, result, start)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
