"""A refactor's speed kept: the OT and population benchmarks of an older commit (a git worktree)
and of this checkout, in one run, alternately, and their ratios side by side. Not a test.

    .venv/bin/python bench/before_after.py OLD_COMMIT [--out PATH]

(default PATH: bench/results/before_after.json). Each side runs its own copy of
``bench/ot_speed.py`` (the OT loss and gradient at four sizes, the released code's call, the
stage-2 step; one stage-1 step) and of ``bench/population.py`` on MNIST-LT and on the tweets,
with this checkout's ``.venv``, on one thread per process (``OMP_NUM_THREADS=1``: a torch op
split over two threads stalls whenever another process holds one core, and the ratios would
measure that). Every number compared is a ratio measured inside one side's run (a fast path
against the reference loop, a population against one setting per trial), so the machine's
speed cancels; the change is ``after / before - 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import short_commit, worktree

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "ot_speed": ["bench/ot_speed.py", "--device", "cpu", "--stage1-steps", "1",
                 "--stage1-variants", "fp32"],
    "population_image_mnist_lt": ["bench/population.py", "--experiment", "image_mnist_lt"],
    "population_text_tweets": ["bench/population.py", "--experiment", "text_tweets",
                               "--sizes", "4", "8", "16", "32"],
}  # fmt: skip


def run(side: Path, name: str, out: Path) -> dict:
    cmd = [str(ROOT / ".venv/bin/python"), *RUNS[name], "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(side), "OMP_NUM_THREADS": "1"}
    print(f"== {side.name}: {' '.join(RUNS[name])}", flush=True)
    subprocess.run(cmd, cwd=side, env=env, check=True)
    return json.loads(out.read_text())


def ratios(name: str, res: dict) -> dict[str, float]:
    """The ratios a benchmark's run measured, by name (higher is faster)."""
    if name == "ot_speed":
        out = {f"{size} auto": row["reference"] / row["auto"]
               for size, row in res["ot_loss_grad_ms"].items()}  # fmt: skip
        rule = res["released_rule_ms"]
        out["released rule auto"] = rule["reference"] / rule["auto"]
        step = res["stage2_step_ms"]
        out["stage-2 step, CE / OT (auto)"] = step["ce_step"] / step["ot_step_auto"]
        return out
    out = {k: v["ratio"] for k, v in res["training"].items() if k.startswith("P=") and k != "P=1"}
    # one setting per trial, absolute: both sides ran alternately on the same machine
    out["P=1 settings per minute"] = res["training"]["P=1"]["settings_per_min"]
    return out


def score_difference(before: dict, after: dict) -> float:
    """The largest difference between the two sides' validation scores of the same settings
    trained one per trial (NaN, a diverged setting, equal to NaN)."""
    a, b = before["training"]["P=1"]["vals"], after["training"]["P=1"]["vals"]
    return max((0.0 if (x != x and y != y) else abs(x - y)) for x, y in zip(a, b, strict=True))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("old", help="the commit before the change")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/before_after.json")
    p.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS),
                   help="these benchmarks only (default: all)")  # fmt: skip
    args = p.parse_args()
    old, new = short_commit(args.old), short_commit("HEAD")
    start = time.time()
    table, scores = {}, {}
    with worktree(args.old) as tree, tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            raw_before = run(tree, name, Path(tmp) / f"before_{name}.json")
            raw_after = run(ROOT, name, Path(tmp) / f"after_{name}.json")
            before, after = ratios(name, raw_before), ratios(name, raw_after)
            if name != "ot_speed":
                scores[name] = score_difference(raw_before, raw_after)
            for key in before:
                table[f"{name}: {key}"] = {"before": float(f"{before[key]:.3g}"),
                                           "after": float(f"{after[key]:.3g}")}  # fmt: skip
    print(f"\n| ratio | before ({old}) | after ({new}) | change |\n|---|---|---|---|")
    for key, row in table.items():
        change = row["after"] / row["before"] - 1
        unit = "" if key.endswith("per minute") else "x"
        print(f"| {key} | {row['before']:.3g}{unit} | {row['after']:.3g}{unit} | {change:+.0%} |")
    for name, diff in scores.items():
        print(f"{name}: one setting per trial, largest validation-score difference {diff:.3g}")
    args.out.write_text(json.dumps({"before": old, "after": new, "ratios": table,
                                    "single_trial_score_difference": scores,
                                    "wall_s": round(time.time() - start)}, indent=1))  # fmt: skip
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
