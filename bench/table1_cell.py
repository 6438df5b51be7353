"""One Table-1 cell end to end without Ray or MLflow: what a lent GPU machine has (its image
holds torch, triton and torch-geometric, not Ray, MLflow or Optuna). Not a test.

    python bench/table1_cell.py PATH/TO/cifar10_jpeg_q75.npz [--column cifar10_if100]
        [--methods ce ot_weight_vector ot@released_code] [--seed 0] [--set KEY=VALUE ...]
        [--device cuda] [--out bench/results/gpu/table1_cell.json]

The runs are exactly those of ``python -m orchestrator.reproduce table1 --columns COLUMN
--methods ... --fidelity`` (``search_spaces.tables.cell_config``; the fidelity rows are named
``ot@PRESET``) on the JPEG q75 copy of CIFAR-10, with the ``--set`` overrides after them (e.g.
``stage1.amp=bf16``). Stage 1 is built once per distinct stage-1 config; a baseline row is
that stage-1 model at its validation-selected epoch, an OT row is stage 2 on top of it.

Cheap rows run first (baselines, then stage 2 on cached features, then stage 2 that trains
f1), and the JSON is rewritten after every stage-2 epoch with that epoch's validation and test
numbers and its time, so a run cut by a time limit keeps what finished and the pace of what
did not. The paper's numbers for the cell are printed beside ours; ours are on "CIFAR-10 (JPEG
q75 copy)".
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from search_spaces.tables import TABLES, cell_config, paper_value
from trainables.config import apply_overrides
from trainables.trial import build_stage1, run_stage2, stage1_key, stage1_summary


def _cost_rank(cfg) -> int:
    """0: a baseline (stage 1 only); 1: stage 2 on cached features; 2: stage 2 training f1."""
    if cfg.stage2.method == "none":
        return 0
    return 1 if cfg.stage2.train == "classifier" else 2


def _errors(result_part: dict) -> dict:
    return {
        "epoch": result_part.get("epoch"),
        "top1_error": result_part["test"]["top1_error"],
        "balanced_acc": result_part["test"]["balanced_acc"],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data", type=Path, help="cifar10_jpeg_q75.npz")
    p.add_argument("--table", default="table1")
    p.add_argument("--column", default="cifar10_if100")
    p.add_argument("--methods", nargs="+", default=["ce", "ot_weight_vector", "ot@released_code"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="sets", action="append", default=[])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("bench/results/gpu/table1_cell.json"))
    args = p.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"error: {args.data} is not a file (give cifar10_jpeg_q75.npz)")
    device = torch.device(args.device)
    table = TABLES[args.table]
    every = table.cells(None, fidelity=True, columns=[args.column])
    unknown = sorted(set(args.methods) - {c.method.name for c in every})
    if unknown:
        known = ", ".join(c.method.name for c in every)
        bad = ", ".join(unknown)
        raise SystemExit(f"error: {args.table} has no row {bad}; choose from {known}")
    data_sets = ["data.source=cifar10_jpeg", f"data.root={args.data.resolve()}"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    record: dict = {
        "table": args.table,
        "column": args.column,
        "data": "CIFAR-10 (JPEG q75 copy)",
        "seed": args.seed,
        "sets": args.sets,
        "device": name or str(device),
        "torch": torch.__version__,
        "stage1_builds": {},
        "runs": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(record, indent=1))

    configs = [
        (cell, apply_overrides(cell_config(cell, seed=args.seed), [*data_sets, *args.sets]))
        for cell in every
        if cell.method.name in args.methods
    ]
    configs.sort(key=lambda pair: _cost_rank(pair[1]))  # stable: the table's order otherwise
    stage1_cache: dict[str, object] = {}
    for cell, cfg in configs:
        key = stage1_key(cfg)
        if key not in stage1_cache:
            t = time.perf_counter()
            stage1_cache[key] = build_stage1(cfg, device=device)
            seconds = time.perf_counter() - t
            record["stage1_builds"][cell.key] = {"seconds": seconds}
            print(f"stage 1 for {cell.key}: {seconds / 60:.1f} min", flush=True)
        stage1 = stage1_cache[key]
        paper = paper_value(table, cell)
        row = {"paper_top1_error": paper[0] if paper else None, "preset": cfg.preset}
        if cfg.stage2.method == "none":
            summary = stage1_summary(cfg, stage1.info)
            row["selected"] = _errors(summary["validation_selected"])
            row["last"] = _errors(summary["last_epoch"])
        else:
            t = time.perf_counter()
            row["epochs"] = []
            record["runs"][cell.key] = row

            def progress(stage, epoch, metrics, key=cell.key, t=t, row=row):
                if stage != "stage2":
                    return
                row["epochs"].append(
                    {
                        "epoch": epoch,
                        "val_balanced_acc": metrics.get("val_balanced_acc"),
                        "test_top1_error": metrics.get("test_top1_error"),
                        "seconds": time.perf_counter() - t,
                    }
                )
                save()
                print(
                    f"  {key} epoch {epoch}: val balanced acc "
                    f"{metrics.get('val_balanced_acc', float('nan')):.2f} "
                    f"({time.perf_counter() - t:.0f} s)",
                    flush=True,
                )

            s2, _ = run_stage2(cfg, stage1, device=device, callback=progress)
            row["stage2_seconds"] = time.perf_counter() - t
            row["selected"] = _errors(s2.selected)
            row["last"] = _errors(s2.last)
        record["runs"][cell.key] = row
        save()
        print(
            f"{cell.key:<40} top-1 error {row['selected']['top1_error']:6.2f} (last "
            f"{row['last']['top1_error']:6.2f}); paper {row['paper_top1_error']}",
            flush=True,
        )
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
