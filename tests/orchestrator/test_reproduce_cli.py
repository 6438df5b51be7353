"""``orchestrator.reproduce``'s quick paths that print and run nothing: a dry run's data
warnings, and ``--help``'s row and column names."""

from __future__ import annotations

import subprocess
import sys

from search_spaces.tables import TABLES


def test_a_dry_run_warns_once_per_missing_dataset(tmp_path, repo):
    """Table 1's eight columns read two datasets: one warning each, naming no option the user
    did not set."""
    cmd = [sys.executable, "-m", "orchestrator.reproduce", "table1", "--dry-run"]
    where = f"data.root={tmp_path / 'nothing'}"
    res = subprocess.run(
        [*cmd, "--storage", str(tmp_path), "--set", where],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    assert [w.split()[1] for w in warnings] == ["CIFAR-10", "CIFAR-100"], res.stderr
    assert "data.download=false" not in "\n".join(warnings)
    assert "a dry run fetches nothing" in res.stderr
    # 8 columns x 13 rows, one seed each; the OT row and its control read adjusted: no runs
    assert (
        "cells: 104, runs: 104 (104 to run, 0 finished before); 16 +la cells read from "
        "these runs (none of their own)" in res.stdout
    )


def test_help_lists_every_tables_rows_and_columns(repo):
    cmd = [sys.executable, "-m", "orchestrator.reproduce", "--help"]
    res = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    listed = res.stdout.split("rows (--methods) and columns (--columns) of each table:")[1]
    words = set(listed.split())
    for table in TABLES.values():
        assert table.name in words
        assert {
            m.name for m in table.methods if not (m.control_of or m.fidelity or m.la_of)
        } <= words
        assert {c.name for c in table.columns} <= words
    assert "ot_weight_vector@ldam_drw" in words and "cifar100_if20" in words
    assert "ROW+la" in listed and "ot_weight_vector+la" not in words  # readings, not rows
