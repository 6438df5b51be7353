"""``python -m orchestrator.ui`` serves the local store on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from .._serving import wait_healthy

pytestmark = pytest.mark.slow


def test_ui_serves_the_local_store(tmp_path, repo, free_port):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.create_experiment("image_mnist_lt", artifact_location=(tmp_path / "a").as_uri())
    run = c.create_run(exp)
    c.log_text(run.info.run_id, "class,train_count\n0,5\n", "per_class_acc.csv")
    port = free_port
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.ui", "--storage", str(tmp_path), "--port", str(port)],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, what="the UI", timeout_s=90)
        req = urllib.request.Request(
            f"{base}/api/2.0/mlflow/experiments/search",
            data=json.dumps({"max_results": 10}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            names = [e["name"] for e in json.loads(r.read())["experiments"]]
        assert "image_mnist_lt" in names
        url = f"{base}/get-artifact?path=per_class_acc.csv&run_uuid={run.info.run_id}"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read().decode().startswith("class,train_count")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ui_without_a_store_says_what_to_do(tmp_path, repo):
    res = subprocess.run(
        [sys.executable, "-m", "orchestrator.ui", "--storage", str(tmp_path / "none")],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "orchestrator.sweep first" in res.stderr
