"""``python -m orchestrator.ui`` serves the local store on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from orchestrator import ui

from .._serving import wait_healthy


@pytest.mark.slow
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


def _ui(repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.ui", *args],
        cwd=repo, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_busy_port_is_one_line_and_a_non_zero_exit(tmp_path, repo):
    (tmp_path / "mlflow.db").touch()  # a store: the port is what is wrong
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = _ui(repo, "--storage", str(tmp_path), "--port", str(port))
    assert res.returncode == 2, res.stdout + res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith("error: ") and f"port {port} on 127.0.0.1 is in use" in line, line
    assert f"--port {port + 1}" in line  # how to pick another
    assert "MLflow UI on" not in res.stdout  # nothing claims to serve


def test_a_port_that_is_not_one_is_refused(tmp_path, repo):
    (tmp_path / "mlflow.db").touch()
    res = _ui(repo, "--storage", str(tmp_path), "--port", "70000")
    assert res.returncode == 2 and res.stderr.startswith("error: --port 70000"), res.stderr


def test_the_printed_link_points_where_ui_serves_by_default(tmp_path, capsys, monkeypatch):
    # the link a sweep prints opens ui's base URL (tests/orchestrator/test_ui_browser.py reads
    # it from a real sweep); that URL's port is the one ui serves on without --port
    assert ui.base_url("sqlite:////x/mlflow.db") == f"http://127.0.0.1:{ui.DEFAULT_PORT}"
    assert ui.base_url("http://host:8080") == "http://host:8080"  # a server is its own UI
    (tmp_path / "mlflow.db").touch()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(ui, "DEFAULT_PORT", taken.getsockname()[1])
        assert ui.base_url("sqlite:////x/mlflow.db").endswith(f":{ui.DEFAULT_PORT}")
        assert ui.main(["--storage", str(tmp_path)]) == 2  # no --port: the default, taken
    assert f"port {ui.DEFAULT_PORT} on 127.0.0.1 is in use" in capsys.readouterr().err


def test_a_server_that_stops_by_itself_is_one_line_and_status_1(tmp_path, capsys, monkeypatch):
    # `mlflow ui` exits 0 when its uvicorn cannot bind: ui reports any stop it did not ask for
    (tmp_path / "mlflow.db").touch()
    monkeypatch.setattr(ui, "ui_command", lambda *a: [sys.executable, "-c", "print('bye')"])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert ui.main(["--storage", str(tmp_path), "--port", str(port)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "error: the MLflow UI stopped by itself (status 0); its lines above say why"
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the caller's, restored


def test_a_checkout_without_the_plugin_is_told_to_reinstall(tmp_path, capsys, monkeypatch):
    (tmp_path / "mlflow.db").touch()
    monkeypatch.setattr(ui.importlib.metadata, "entry_points", lambda group: [])
    assert ui.main(["--storage", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "app plugin 'ot-reweight' is not installed" in line and "setup.sh" in line
