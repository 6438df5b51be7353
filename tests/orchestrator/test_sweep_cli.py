"""The sweep command's quick paths: bad input fails fast with one line, --list."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .test_sweep import REPO, sweep


@pytest.mark.parametrize(
    "args, message",
    [
        (["no_such_experiment"], "unknown experiment"),
        (["image_mnist_lt", "--smoke", "--set", "stage2.nope=1"], "unknown config key"),
        (["image_mnist_lt", "--smoke", "--set", "stage2.eps=abc"], "bad value"),
        (["image_mnist_lt", "--smoke", "--set", "stage2.eps"], "malformed override"),
        (
            ["image_mnist_lt", "--smoke", "--tracking-uri", "http://127.0.0.1:9"],
            "unreachable",
        ),
        (["image_mnist_lt", "--smoke", "--resume"], "no interrupted sweep"),
        (["text_sst5", "--smoke"], "SST-5 not found"),
        (["text_sst2", "--smoke", "--set", "data.root=/nonexistent"], "SST-2.zip"),
        (
            ["pointcloud_modelnet10", "--smoke", "--set", "data.root=/nonexistent"],
            "ModelNet10 not found under /nonexistent/raw",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    res = sweep(tmp_path, *args, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert message in lines[-1]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "sets, message",
    [
        (["stage1.amp=fp16"], "stage1.amp must be none or bf16, got 'fp16'"),
        (["stage1.reweight=bogus"], "stage1.reweight must be none, l2rw, mwn or metasaug"),
        (["stage1.loss=hinge"], "unknown loss 'hinge'"),
        (["stage2.impl=fast"], "impl must be one of"),
        (["stage2.weights=matrix"], "stage2.weights must be vector or net"),
        (["stage2.meta_distribution=median"], "unknown meta_distribution 'median'"),
    ],
)
def test_bad_choices_stop_the_sweep_before_ray_starts(tmp_path, sets, message):
    args = [x for s in sets for x in ("--set", s)]
    res = sweep(tmp_path, "image_mnist_lt", "--smoke", *args, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: bad configuration: ") and message in lines[-1]
    assert "Ray" not in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_list_names_every_experiment():
    from search_spaces import EXPERIMENTS

    res = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0
    lines = res.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(EXPERIMENTS)
    assert any("table1" in ln for ln in lines)


@pytest.mark.parametrize(
    "args, message",
    [
        (["no_table"], "unknown table"),
        (["offline_image", "--methods", "metasaug_ldam"], "has no method metasaug_ldam"),
        (["offline_image", "--columns", "nope"], "has no column nope"),
        (["offline_image", "--set", "stage2.nope=1"], "unknown config key"),
        (["table5"], "SST-2"),
        (["offline_image", "--tuned", "--dry-run"], "--tuned: no finished sweep matches"),
        (["offline_image", "--set", "stage1.compile=jit"], "stage1.compile must be one of"),
    ],
)
def test_reproduce_bad_input_is_one_line_exit_2(tmp_path, args, message):
    cmd = [sys.executable, "-m", "orchestrator.reproduce", *args, "--storage", str(tmp_path)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert message in lines[-1] and "Traceback" not in res.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_reproduce_dry_run_needs_no_data(tmp_path):
    cmd = [sys.executable, "-m", "orchestrator.reproduce", "table5", "--dry-run"]
    res = subprocess.run(
        [*cmd, "--storage", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "cells: 49, runs: 490 (490 to run" in res.stdout  # 7 columns x 7 rows x 10 seeds
    assert "warning: SST-2" in res.stderr and not (tmp_path / "mlflow.db").exists()
