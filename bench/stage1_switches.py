"""Stage 1 under the GPU throughput switches of issue #8 (``stage1.channels_last``,
``stage1.amp=bf16``): the time of the whole stage 1 and the test error it reaches, against
float32 in the same run and on the same seeds. Not a test.

    .venv/bin/python bench/stage1_switches.py [--experiment image_mnist_lt] [--seeds 0 1 2]
        [--set KEY=VALUE ...] [--variants fp32 bf16_channels_last ...] [--out PATH]

Each (seed, variant) builds stage 1 from scratch (``build_stage1``, no cache) and reports the
top-1 test error at the validation-selected epoch and at the last epoch, and the seconds per
epoch after the first (training and the per-epoch evaluation; no data loading).
A CPU with bfloat16 instructions speeds ResNets up under autocast; whether a GPU does is for
``bench/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _results import mean_std, save_cpu_result

from search_spaces import resolve
from trainables.trial import build_stage1

VARIANTS = {
    "fp32": [],
    "channels_last": ["stage1.channels_last=true"],
    "bf16": ["stage1.amp=bf16"],
    "bf16_channels_last": ["stage1.amp=bf16", "stage1.channels_last=true"],
    "compiled": ["stage1.compile=reduce-overhead"],
}
KEYS = ("selected_top1_error", "last_top1_error", "epoch_seconds")


def one(experiment: str, sets: list[str], seed: int, variant: str) -> dict:
    cfg = resolve(experiment, seed=seed, overrides=[*sets, *VARIANTS[variant]])
    stamps = []
    out = build_stage1(
        cfg,
        device=torch.device("cpu"),
        with_features=False,
        callback=lambda stage, epoch, metrics: stamps.append(time.perf_counter()),
    )
    summary = out.info["summary"]
    return {
        "selected_top1_error": summary["validation_selected"]["test"]["top1_error"],
        "last_top1_error": summary["last_epoch"]["test"]["top1_error"],
        # from the end of the first epoch to the end of the last: no data loading, no warm-up
        "epoch_seconds": (stamps[-1] - stamps[0]) / (len(stamps) - 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--experiment", default="image_mnist_lt")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", dest="sets", action="append", default=[])
    p.add_argument(
        "--variants",
        nargs="+",
        default=["fp32", "channels_last", "bf16", "bf16_channels_last"],
        choices=list(VARIANTS),
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    start = time.time()
    rows: dict[str, dict] = {v: {} for v in args.variants}
    for seed in args.seeds:  # seeds outermost: the variants of one seed run back to back
        for v in args.variants:
            rows[v][seed] = one(args.experiment, args.sets, seed, v)
            r = rows[v][seed]
            print(
                f"seed {seed} {v:<19} top-1 error {r['selected_top1_error']:6.2f} (last "
                f"{r['last_top1_error']:6.2f}), {r['epoch_seconds']:7.2f} s an epoch",
                flush=True,
            )
    summary = {}
    base = mean_std(rows["fp32"], KEYS)[0]["epoch_seconds"] if "fp32" in rows else None
    for v in args.variants:
        mean, sd = mean_std(rows[v], KEYS)
        summary[v] = {"mean": mean, "std": sd}
        speed = f", {base / mean['epoch_seconds']:.2f}x fp32's speed" if base else ""
        print(
            f"{v:<19} top-1 error {mean['selected_top1_error']:6.2f} +- "
            f"{sd['selected_top1_error']:.2f} (last {mean['last_top1_error']:6.2f}), "
            f"{mean['epoch_seconds']:.2f} s an epoch{speed}"
        )
    out = args.out or Path(f"bench/results/stage1_switches_{args.experiment}.json")
    payload = {
        "experiment": args.experiment,
        "sets": args.sets,
        "seeds": args.seeds,
        "runs": {v: {str(s): r for s, r in rows[v].items()} for v in rows},
        "summary": summary,
    }
    save_cpu_result(out, payload, start)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
