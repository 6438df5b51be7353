"""Where the commands' Ray runs: a bad ``--address`` fails in one line within seconds and leaves
no MLflow run RUNNING; a local Ray listens on loopback only.

Ray rewrites 127.0.0.1 and localhost into the machine's own interface address before it
connects, so the bad addresses here are on 127.0.0.2: the traffic stays on the loopback range.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from orchestrator import cli, cluster, names

REPO = Path(__file__).resolve().parents[2]


def _runs(db: Path) -> list:
    """Every run in the store at ``db`` (none when the command never created it)."""
    if not db.exists():
        return []
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{db}")
    ids = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ALL)]
    return c.search_runs(ids, run_view_type=ViewType.ALL) if ids else []


def _one_error_line(res, address: str) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot connect to Ray at {address}: ")
    return lines[0]


@pytest.fixture
def silent_port():
    """A port on 127.0.0.2 that accepts connections and never says anything."""
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_a_bad_address_fails_in_one_line_within_seconds(tmp_path, command, kind, request):
    port = 9 if kind == "refused" else request.getfixturevalue("silent_port")
    address = f"127.0.0.2:{port}"
    start = time.monotonic()
    res = command(
        "sweep", "image_mnist_lt", "--smoke", "--trials", "2", "--address", address,
        "--storage", str(tmp_path), timeout=90,
    )  # fmt: skip
    took = time.monotonic() - start
    line = _one_error_line(res, address)
    assert took < 30, f"{took:.0f} s"
    assert ("Connection refused" if kind == "refused" else "no answer within") in line
    assert [r for r in _runs(tmp_path / "mlflow.db") if r.info.status == "RUNNING"] == []


def test_reproduce_closes_its_parent_run_when_ray_is_not_there(tmp_path, command):
    """reproduce opens its parent run before Ray is needed; the failure closes it."""
    address = "127.0.0.2:9"
    res = command(
        "reproduce", "offline_image", "--smoke", "--seeds", "1", "--methods", "ce",
        "--address", address, "--storage", str(tmp_path), timeout=120,
    )  # fmt: skip
    line = _one_error_line(res, address)
    runs = _runs(tmp_path / "mlflow.db")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags[names.ERROR] == line.removeprefix("error: ")


def test_the_check_tells_a_silent_port_and_a_stranger_from_a_ray_cluster(silent_port):
    with pytest.raises(cluster.UnreachableRay, match="no answer within 5 s"):
        cluster.check_reachable(f"ray://127.0.0.2:{silent_port}")
    with socket.socket() as http:  # answers as an HTTP/1 server does to a request it can't read
        http.bind(("127.0.0.2", 0))
        http.listen(1)

        def answer():
            conn, _ = http.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        with pytest.raises(cluster.UnreachableRay, match="not a Ray cluster"):
            cluster.check_reachable(f"127.0.0.2:{http.getsockname()[1]}")
    with pytest.raises(cluster.UnreachableRay, match="expected HOST:PORT"):
        cluster.check_reachable("head-node")


_LISTENERS = """
import json, sys, time
import psutil
from orchestrator import cluster
cluster.before_ray_import(None)  # as the commands do, before the modules that import Ray
from orchestrator import runtime
runtime.init_ray(None)
import ray

@ray.remote
def niceness():
    import os
    return os.nice(0)

# worker processes, each with its own server
nice = ray.get([niceness.remote() for _ in range(2)])
me = psutil.Process()
seen = set()
for _ in range(6):  # the agents may open their ports a moment after ray.init returns
    for p in [me, *me.children(recursive=True)]:
        try:
            conns = p.net_connections(kind="inet")
            name = p.name()
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN or c.type == 2:  # TCP listening, or any UDP
                seen.add((name, c.laddr.ip, c.laddr.port))
    time.sleep(0.5)
gcs = ray.get_runtime_context().gcs_address
cluster.check_reachable(gcs)  # the check before a connect accepts a real GCS
print(json.dumps({"gcs": gcs, "listening": sorted(seen), "niceness": nice}))
ray.shutdown()
"""


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def test_a_local_ray_listens_on_loopback_only_and_runs_its_workers_at_normal_priority():
    """init_ray(None) as the commands call it: every socket that Ray's processes (this
    driver, GCS, raylet, agents, workers) listen on is in 127.0.0.0/8; the workers run at
    niceness 0, not Ray's 15 (which starves the trials beside any other program); Ray's
    warning that a new local cluster uses token authentication is not printed."""
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_LISTENERS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["gcs"].startswith("127.0.0.1:")
    names_ = {name for name, _, _ in got["listening"]}
    assert {"gcs_server", "raylet"} <= names_, got  # what is checked is really there
    assert [s for s in got["listening"] if not _loopback(s[1])] == []
    assert got["niceness"] == [0, 0]
    assert "Token authentication" not in res.stderr  # Ray's warning at every local start


def test_a_local_start_after_ray_was_imported_is_refused(monkeypatch):
    """The loopback setting is read when Ray is imported: too late is an error, not a silent
    Ray on every interface."""
    monkeypatch.setitem(sys.modules, "ray", object())
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    with pytest.raises(RuntimeError, match="imported before"):
        cluster.local_on_loopback()


@pytest.mark.parametrize(
    ("raised", "status"), [(cli.CommandError("no room"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_a_failing_command_closes_the_run_it_opened(tmp_path, raised, status, capsys):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = c.create_run(c.create_experiment("x")).info.run_id
    closed = c.create_run("0").info.run_id  # a run the command closed itself stays as it is
    c.set_terminated(closed, status="FINISHED")

    def body():
        cli.watch_run(c, run_id)
        cli.watch_run(c, closed)
        raise raised

    # Ctrl-C: exit 130 with one line, not a traceback; a failure: exit 2
    assert cli.run_command(body) == (130 if isinstance(raised, KeyboardInterrupt) else 2)
    run = c.get_run(run_id)
    assert run.info.status == status
    assert run.data.tags[names.ERROR] == (str(raised) or "KeyboardInterrupt")
    assert c.get_run(closed).info.status == "FINISHED"
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("interrupted (Ctrl-C): " if status == "KILLED" else "error: no room")


def test_a_failed_stage1_build_closes_the_parent_with_its_cause(tmp_path):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = c.create_run(c.create_experiment("x")).info.run_id

    class TaskError(Exception):  # what Ray raises for a task: the task's own error as .cause
        cause = ValueError("Traceback ...\nValueError: no classes left")

    err = cli.stage1_failure(TaskError(), c, parent)
    run = c.get_run(parent)
    assert str(err) == "stage 1 failed: ValueError: no classes left"
    assert run.info.status == "FAILED" and run.data.tags[names.ERROR] == str(err)


def test_a_local_start_that_times_out_is_one_line(monkeypatch):
    """Ray raises a plain Exception when its node does not come up in time (seen on 2 busy
    cores): the command says so in one line, not with a traceback."""
    from orchestrator import runtime

    def timed_out(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because\n")

    monkeypatch.setattr(runtime.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.ray, "init", timed_out)
    monkeypatch.setattr(runtime.cluster, "local_on_loopback", lambda: None)
    with pytest.raises(cli.CommandError) as err:
        runtime.init_ray(None)
    assert str(err.value) == (
        "cannot start a local Ray: The current node timed out during startup. This could "
        "happen because"
    )
