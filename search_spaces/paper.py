"""The paper's published numbers (``paper_tables/*.csv``, the tables as data) for a config."""

from __future__ import annotations

import csv
import io
from importlib import resources

from trainables.config import ExperimentConfig

__all__ = ["paper_number", "read_table"]

_FILES = {
    "table1": "table1_cifar_lt.csv",
    "table2": "table2_ablation_cifar100_if200.csv",
    "table3": "table3_places_lt.csv",
    "table4": "table4_imagenet_lt.csv",
    "table5": "table5_sst.csv",
}


def read_table(table: str) -> list[dict[str, str]]:
    """Rows of a paper table (the leading ``#`` comment line is skipped)."""
    text = resources.files(__package__).joinpath("paper_tables", _FILES[table]).read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def paper_number(
    cfg: ExperimentConfig, method: str = "ot_weight_vector"
) -> tuple[float, str] | None:
    """(test top-1 error %, description) the paper reports for this experiment's cell, or None
    when the paper has no such cell (offline experiments, unpublished imbalance factors)."""
    if cfg.table == "table1":
        if float(cfg.data.imbalance_factor).is_integer():
            column = f"{cfg.data.dataset}_if{int(cfg.data.imbalance_factor)}"
        else:
            return None
    elif cfg.table in ("table3", "table4"):
        column = "top1_error"
    else:
        return None
    for row in read_table(cfg.table):
        if row.get("method") == method and row.get(column):
            return float(row[column]), f"paper {cfg.table}, {method}, {column}"
    return None
