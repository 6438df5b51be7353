"""CE, L2RW, Meta-Weight-Net and the OT method on MNIST-LT (IF 100, real digits), 3 seeds, and
the cost of one training step of each relative to a CE step. Not a test.

    .venv/bin/python bench/meta_baselines.py [--seeds 0 1 2] [--out PATH]

Every method runs under the same split, seed and selection rule (validation-selected epoch):
CE, L2RW and MWN are stage 1 of `image_mnist_lt` with stage1.reweight none / l2rw / mwn (MWN at
its published weight-net step size 1e-5); OT is the experiment's stage 2 from the CE stage 1.
Step costs: the median time of one step on a batch of 64 digits (the OT step is stage 2's, on
cached features, so it is cheap by construction).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _results import mean_std, save_cpu_result

from search_spaces import resolve
from trainables.config import apply_overrides
from trainables.image import build_image_data, build_image_model
from trainables.meta_reweight import MetaWeightNet, l2rw_weights, mwn_step
from trainables.trial import build_stage1, run_stage2

METHODS = ("ce", "l2rw", "mwn", "ot")


def accuracies(seed: int) -> dict:
    base = resolve("image_mnist_lt", seed=seed)
    out = {}
    cpu = torch.device("cpu")
    for m in ("none", "l2rw", "mwn"):
        cfg = apply_overrides(base, [f"stage1.reweight={m}"])
        t = time.time()
        s1 = build_stage1(cfg, device=cpu, with_features=m == "none")
        name = "ce" if m == "none" else m
        out[name] = s1.info["summary"]["validation_selected"]["test"]["balanced_acc"]
        out[f"{name}_stage1_s"] = round(time.time() - t, 1)
        if m == "none":
            s2, _ = run_stage2(base, s1, device=cpu)
            out["ot"] = s2.selected["test"]["balanced_acc"]
    return out


def step_costs(repeat: int = 20) -> dict:
    cfg = resolve("image_mnist_lt")
    torch.manual_seed(0)
    data = build_image_data(cfg.data, 0)
    model = build_image_model(cfg.model, data)
    x = data.prepare(data.train.x[:64], augment=False, generator=None)
    y = data.train.y[:64]
    mx = data.prepare(data.meta.x[:100], augment=False, generator=None)
    my = data.meta.y[:100]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    vnet = MetaWeightNet(100)
    vopt = torch.optim.SGD(vnet.parameters(), lr=1e-5, momentum=0.9, weight_decay=5e-4)

    def step(weights):
        def f():
            w = weights()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y, reduction="none")
            (loss.mean() if w is None else (w * loss).sum()).backward()
            opt.step()

        return f

    def median_ms(fn):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)

    ce = median_ms(step(lambda: None))
    l2rw = median_ms(step(lambda: l2rw_weights(model, x, y, mx, my, lr=0.05)))
    mwn = median_ms(step(lambda: mwn_step(model, vnet, vopt, x, y, mx, my, lr=0.05)))
    return {
        "ce_ms": ce,
        "l2rw_ms": l2rw,
        "mwn_ms": mwn,
        "l2rw_x_ce": l2rw / ce,
        "mwn_x_ce": mwn / ce,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("bench/results/meta_baselines.json"))
    args = p.parse_args()
    start = time.time()
    costs = step_costs()
    print(
        f"step on 64 digits: CE {costs['ce_ms']:.1f} ms, L2RW {costs['l2rw_ms']:.1f} ms "
        f"({costs['l2rw_x_ce']:.1f}x), MWN {costs['mwn_ms']:.1f} ms ({costs['mwn_x_ce']:.1f}x)"
    )
    print("MNIST-LT IF 100, balanced test accuracy %, validation-selected epoch")
    print(f"{'seed':>4} " + " ".join(f"{m:>7}" for m in METHODS))
    rows = {}
    for seed in args.seeds:
        r = rows[seed] = accuracies(seed)
        print(f"{seed:>4} " + " ".join(f"{r[m]:7.2f}" for m in METHODS), flush=True)
    mean, sd = mean_std(rows, METHODS)
    print("mean " + " ".join(f"{mean[m]:7.2f}" for m in METHODS))
    print("std  " + " ".join(f"{sd[m]:7.2f}" for m in METHODS))
    save_cpu_result(
        args.out, {"per_seed": rows, "mean": mean, "std": sd, "step_costs": costs}, start
    )


if __name__ == "__main__":
    main()
