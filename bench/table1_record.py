"""The record of one Table 1 cell run by ``orchestrator.reproduce``, read back from its MLflow
store: ``bench/results/table1_<column>.json``.

    .venv/bin/python bench/table1_record.py --storage STORAGE [STORAGE ...] --column cifar10_if100

For each finished row of the cell (seed ``--seed``): the test top-1 error at the last epoch
and at the validation-selected epoch (a baseline's are its stage 1's; an OT row's its stage
2's); the row's data source, stage-1 epochs and switches; and the stage-1 build's wall time
per epoch (from the times MLflow recorded each epoch's metrics; epochs before a resume are
re-logged at the resume, so those gaps are left out). Names as in the issue that asked for it:
``ot_paper`` is the paper preset's OT row (``ot_weight_vector``), ``ot_released_code`` the
released-code preset's (``ot@released_code``, and its two ablations), each with its ``+no_ot``
control. With several storages (runs of the same stage 1 under other overrides, e.g. its stage
cache linked into a second storage) each row comes from the first storage that has it, and
every row says how its stage 2 saw f1 (``stage2_features``: cached or augmented).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from orchestrator import names, tracking
from orchestrator.report import run_value
from search_spaces.tables import TABLES, paper_value

ROWS = {  # the record's name -> the table's row
    "ce": "ce",
    "posthoc_la": "posthoc_la",
    "ldam_drw": "ldam_drw",
    "ot_paper": "ot_weight_vector",
    "ot_paper+no_ot": "ot_weight_vector+no_ot",
    "ot_released_code": "ot@released_code",
    "ot_released_code+no_ot": "ot@released_code+no_ot",
    "ot_released_code-cb_init": "ot@released_code-cb_init",
    "ot_released_code-cb_init+no_ot": "ot@released_code-cb_init+no_ot",
    "ot_released_code-meta_ce": "ot@released_code-meta_ce",
    "ot_released_code-meta_ce+no_ot": "ot@released_code-meta_ce+no_ot",
}
SWITCHES = ("stage1.amp", "stage1.channels_last", "stage1.compile", "stage1.threads")


def _latest(c, exp_id: str, cell: str, seed: int):
    tags = {names.KIND: "trial", names.CELL: cell, names.SEED: str(seed)}
    done = [r for r in tracking.all_runs_with_tags(c, exp_id, tags) if r.info.status == "FINISHED"]
    return max(done, key=lambda r: r.info.end_time or 0) if done else None


def _epoch_seconds(c, run_id: str) -> dict:
    """Median and mean seconds between consecutive epochs' metrics of a stage-1 build run,
    over the epochs logged as they ran (a resumed build re-logs the earlier ones at once)."""
    hist = sorted(c.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)
    gaps = [(b.timestamp - a.timestamp) / 1000 for a, b in itertools.pairwise(hist)]
    gaps = [g for g in gaps if g > 1.0]  # re-logged epochs arrive within milliseconds
    if not gaps:
        return {}
    return {
        "median": round(statistics.median(gaps), 1),
        "mean": round(statistics.fmean(gaps), 1),
        "epochs_timed": len(gaps),
    }


def _store(storage: Path, smoke: bool):
    """(client, experiment id) of a reproduce storage's Table 1 runs."""
    uri = tracking.default_tracking_uri(storage.resolve())
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(names.experiment_name("table1", smoke=smoke))
    if exp is None:
        raise SystemExit(f"error: no reproduce-table1 experiment in {uri}")
    return c, exp.experiment_id


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", required=True, nargs="+", help="the reproduce runs' --storage")
    p.add_argument("--column", default="cifar10_if100")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--device", default="cpu (2 cores)", help="what the runs ran on")
    p.add_argument("--smoke", action="store_true", help="the smoke runs' experiment")
    args = p.parse_args()
    stores = [_store(Path(s), args.smoke) for s in args.storage]
    table = TABLES["table1"]
    cells = {c.method.name: c for c in table.cells(fidelity=True, columns=[args.column])}
    rows, first = {}, None
    for name, row in ROWS.items():
        found = (
            (c, exp_id, _latest(c, exp_id, f"{args.column}|{row}", args.seed))
            for c, exp_id in stores
        )
        c, exp_id, run = next((f for f in found if f[2] is not None), (None, None, None))
        if run is None:
            continue
        first = first or (c, exp_id, run)
        params, metrics = run.data.params, run.data.metrics
        paper = paper_value(table, cells[row]) if row in cells else None
        rows[name] = {
            "paper_top1_err": paper[0] if paper else None,
            "top1_err_last": run_value(params, metrics, "last_epoch", "top1_error"),
            "top1_err_selected": run_value(params, metrics, "validation_selected", "top1_error"),
            "preset": run.data.tags.get(names.PRESET),
            "stage2_train": params.get("stage2.train"),
            "stage2_features": params.get("stage2.features"),
            "stage2_epochs": int(params.get("stage2.epochs", 0)),
            "storage": str(Path(args.storage[stores.index((c, exp_id))])),
        }
    if first is None:
        where = ", ".join(args.storage)
        raise SystemExit(f"error: no finished run of {args.column} seed {args.seed} in {where}")
    c, exp_id, run = first
    params = run.data.params
    build = tracking.stage1_build_run(c, exp_id, run.data.tags[names.STAGE1_HASH])
    record = {
        "table": "table1",
        "smoke": args.smoke,
        "column": args.column,
        "source": params.get("data.source"),
        "stage1_epochs": int(params["stage1.epochs"]),
        "seed": args.seed,
        "device": args.device,
        "switches": {k: params.get(k) for k in SWITCHES},
        "stage1_epoch_seconds": _epoch_seconds(c, build) if build else {},
        "rows": rows,
    }
    out = args.out or Path(__file__).parent / "results" / f"table1_{args.column}.json"
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
