"""CE stage 1 vs OT stage 2 on the synthetic point-cloud shapes (IF 50), PointNet and DGCNN,
3 seeds. Not a test.

    .venv/bin/python bench/pointcloud_shapes_ot_vs_ce.py [--seeds 0 1 2] [--models pointnet dgcnn]

The data is SYNTHETIC (ten trimesh primitives, trainables.data.shapes), not ModelNet. For each
model and seed: one CE stage 1 (``pointcloud_shapes``'s config), then from the same checkpoint
and RNG state (a) the experiment's OT stage 2 and (b) a control running the very same stage 2
with weight learning off (weight_lr=0: uniform weights, plain classifier fine-tuning), which
separates what the OT weights do from what extra classifier epochs do. Prints balanced test
accuracy at the validation-selected epoch, and writes the JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _results import mean_std, save_cpu_result

from search_spaces import resolve
from trainables.config import apply_overrides
from trainables.trial import build_stage1, run_stage2

COLUMNS = ("ce", "ce_finetune", "ot")


def one_run(arch: str, seed: int) -> dict:
    cfg = resolve("pointcloud_shapes", seed=seed, overrides=[f"model.arch={arch}"])
    device = torch.device("cpu")
    start = time.time()
    stage1 = build_stage1(cfg, device=device)
    stage1_s = time.time() - start
    sel = stage1.info["summary"]["validation_selected"]["test"]
    out = {"ce": sel["balanced_acc"], "ce_few": sel["few_acc"], "stage1_s": round(stage1_s, 1)}
    variants = {"ot": cfg, "ce_finetune": apply_overrides(cfg, ["stage2.weight_lr=0.0"])}
    for name, c in variants.items():
        s2, _ = run_stage2(c, stage1, device=device)
        out[name] = s2.selected["test"]["balanced_acc"]
        out[f"{name}_few"] = s2.selected["test"]["few_acc"]
    out["train_counts"] = stage1.info["train_counts"]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=["pointnet", "dgcnn"])
    p.add_argument(
        "--out", type=Path, default=Path("bench/results/pointcloud_shapes_ot_vs_ce.json")
    )
    args = p.parse_args()
    start = time.time()
    cfg = resolve("pointcloud_shapes")
    print(
        f"shapes (SYNTHETIC, trimesh), IF {cfg.data.imbalance_factor:g}, "
        f"{cfg.data.num_points} points; balanced test accuracy %, validation-selected epoch"
    )
    results = {}
    for arch in args.models:
        rows = {}
        print(f"\n{arch}\n{'seed':>4} {'CE':>7} {'CE+finetune':>11} {'CE+OT':>7} {'OT-CE':>7}")
        for seed in args.seeds:
            r = rows[seed] = one_run(arch, seed)
            print(
                f"{seed:>4} {r['ce']:7.2f} {r['ce_finetune']:11.2f} {r['ot']:7.2f} "
                f"{r['ot'] - r['ce']:+7.2f}   (stage 1 {r['stage1_s']:.0f} s)",
                flush=True,
            )
        mean, sd = mean_std(rows, COLUMNS)
        print(
            f"mean {mean['ce']:7.2f} {mean['ce_finetune']:11.2f} {mean['ot']:7.2f} "
            f"{mean['ot'] - mean['ce']:+7.2f}"
        )
        print(f"std  {sd['ce']:7.2f} {sd['ce_finetune']:11.2f} {sd['ot']:7.2f}")
        results[arch] = {"per_seed": rows, "mean": mean, "std": sd}
    save_cpu_result(
        args.out,
        {
            "data": "shapes (synthetic, trimesh)",
            "imbalance_factor": cfg.data.imbalance_factor,
            "models": results,
        },
        start,
    )


if __name__ == "__main__":
    main()
