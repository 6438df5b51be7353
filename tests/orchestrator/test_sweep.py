"""``python -m orchestrator.sweep`` end to end on the offline MNIST-LT smoke experiment.

Each test runs the real command in a subprocess (its own local Ray cluster and SQLite store)
and checks what it left behind: MLflow runs, metrics, artifacts, the stage-1 cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from orchestrator import names

from .._serving import wait_healthy

pytestmark = pytest.mark.slow


def runs(storage: Path, experiment: str = "image_mnist_lt") -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = c.get_experiment_by_name(experiment)
    return [] if exp is None else c.search_runs([exp.experiment_id], max_results=1000)


PNGS = {"confusion_matrix.png", "learned_weights.png"}


def kind(rs, k: str) -> list:
    return [r for r in rs if r.data.tags.get("ot.kind") == k]


def children(rs, parent) -> list:
    return [r for r in rs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _best_run_alone(c, parent, tmp_path: Path, repo, *sets: str) -> dict:
    """What `orchestrator.run` gives (validation-selected) for the sweep's best setting (its
    parent's ``best.json``) with the extra ``--set``s: a smoke run of image_mnist_lt."""
    best_params = json.loads(
        Path(c.download_artifacts(parent.info.run_id, "best.json", str(tmp_path))).read_text()
    )["params"]
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.run", "image_mnist_lt", "--smoke", "--quiet"]
        + [f"--set={s}" for s in sets]
        + [f"--set={k}={v}" for k, v in best_params.items()],
        cwd=repo, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)["stage2"]["validation_selected"]


def test_sweep_tracks_runs_and_builds_stage1_once(tmp_path, smoke, repo):
    from mlflow.tracking import MlflowClient

    first = smoke(tmp_path, "--trials", "4")
    ok(first)
    assert "stage 1: building" in first.stdout
    assert "== sweep summary ==" in first.stdout
    assert f"{Path(sys.executable).relative_to(repo)} -m orchestrator.ui" in first.stdout
    assert "Downloading artifacts" not in first.stdout + first.stderr  # no progress bars
    rs = runs(tmp_path)
    (parent,) = kind(rs, "sweep")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.source.git.commit"] != "unknown"
    assert parent.data.params["stage2.eps"] == "0.1" and parent.data.params["sweep.trials"] == "4"
    trials = children(rs, parent)
    assert len(trials) == 4 and {t.info.status for t in trials} == {"FINISHED"}
    (build,) = kind(rs, "stage1_build")
    # stage 1's numbers live on its own run (epochs counted from 1), linked from every trial
    b = build.data.metrics
    assert 1 <= b["best_val_epoch/epoch"] <= b["last_epoch/epoch"] == 2  # smoke: 2 epochs
    assert 0.0 <= b["best_val_epoch/test_balanced_acc"] <= 100.0
    assert parent.data.tags["ot.stage1_run"] == build.info.run_id
    key = parent.data.tags["ot.stage1_hash"]
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    sampled, drawn = set(), {}
    for t in trials:
        assert t.data.tags["ot.stage1_hash"] == key
        assert 0.0 <= t.data.metrics["selected_val_balanced_acc"] <= 100.0
        hist = c.get_metric_history(t.info.run_id, "val_balanced_acc")
        assert [m.step for m in hist] == [1]  # smoke: one stage-2 epoch, counted from 1
        assert t.data.metrics["selected_epoch"] == t.data.metrics["last_epoch/epoch"] == 1
        assert not [k for k in t.data.metrics if k.startswith("stage1_")]  # on the build's run
        assert t.data.tags["ot.stage1_run"] == build.info.run_id
        arts = {a.path for a in c.list_artifacts(t.info.run_id)}
        assert {
            "per_class_acc.csv",
            "confusion.json",
            "weight_mass.json",
            "config.json",
            "best_model.pt",
            "result.json",
        } <= arts
        drawn[t.info.run_id] = arts >= PNGS
        assert t.data.tags["ot.figures"] == ("drawn" if drawn[t.info.run_id] else "pending")
        sampled.add(t.data.params["stage2.lr"])
    assert len(sampled) == 4  # the searcher proposed four different settings
    # the PNGs of the best 3 (--figures' default) only; the command draws the fourth's
    from orchestrator import figures
    from orchestrator.sweep_results import ranking

    ranked = [r.info.run_id for r in ranking(c, parent.info.experiment_id, parent.info.run_id)]
    assert [drawn[r] for r in ranked] == [True, True, True, False]
    assert f"orchestrator.figures {parent.data.tags['ot.sweep_id']} --storage" in first.stdout
    assert figures.main([ranked[3], "--storage", str(tmp_path)]) == 0
    assert {a.path for a in c.list_artifacts(ranked[3])} >= PNGS
    # the paper's settings (here: the offline experiment's own) are enqueued as a trial
    from search_spaces import SPACES, resolve

    published = SPACES["image_mnist_lt"].best(resolve("image_mnist_lt"))
    best = {k: str(v) for k, v in published.items()}
    assert any(all(t.data.params[k] == v for k, v in best.items()) for t in trials)

    # a sweep trial reproduces `orchestrator.run` with the same settings, number for number
    (enqueued,) = [t for t in trials if all(t.data.params[k] == v for k, v in best.items())]
    alone = subprocess.run(
        [sys.executable, "-m", "orchestrator.run", "image_mnist_lt", "--smoke", "--quiet"]
        + [f"--set=stage2.{k.split('.')[1]}={v}" for k, v in best.items()],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode == 0, alone.stderr[-2000:]
    selected = json.loads(alone.stdout)["stage2"]["validation_selected"]
    assert enqueued.data.metrics["selected_val_balanced_acc"] == selected["val"]["balanced_acc"]
    assert enqueued.data.metrics["selected_test_balanced_acc"] == selected["test"]["balanced_acc"]

    # the best setting's control ran once (weights held at their start): its numbers on the
    # parent are what `orchestrator.run` gives for that setting with the weight learning off
    ctl = _best_run_alone(c, parent, tmp_path, repo, "stage2.learn_weights=false")
    pm = parent.data.metrics
    assert pm["control_selected_val_balanced_acc"] == ctl["val"]["balanced_acc"]
    assert pm["control_selected_test_balanced_acc"] == ctl["test"]["balanced_acc"]
    gain = pm["best_selected_val_balanced_acc"] - ctl["val"]["balanced_acc"]
    assert f"OT's own gain (balanced accuracy points, + = OT better): val {gain:+.2f}" in (
        first.stdout
    )

    second = smoke(tmp_path, "--trials", "1")
    ok(second)
    assert "cached" in second.stdout and "stage 1: building" not in second.stdout
    rs = runs(tmp_path)
    assert len(kind(rs, "stage1_build")) == 1 and len(kind(rs, "sweep")) == 2

    # a corrupt entry is detected and rebuilt, never used
    ckpt = next((tmp_path / "stage_cache").glob("*/checkpoint.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:-10])
    third = smoke(tmp_path, "--trials", "1")
    ok(third)
    assert "checksum" in third.stdout and "stage 1: building" in third.stdout
    assert len(kind(runs(tmp_path), "stage1_build")) == 2


def test_a_set_on_a_searched_key_pins_it_in_every_trial_and_member(tmp_path, smoke):
    """``--set stage2.eps=0.05`` on a searched key: every setting of a population sweep trains
    with 0.05 (params and what the searcher gave it), the parent records the pin, the sweep says
    so; pinning every searched key runs the one setting once."""
    from mlflow.tracking import MlflowClient

    res = smoke(tmp_path, "--trials", "6", "--population", "3", "--set", "stage2.eps=0.05")
    ok(res)
    assert "stage2.eps fixed at 0.05: no longer searched" in res.stdout
    (parent,) = kind(runs(tmp_path), "sweep")
    assert parent.data.params["sweep.pinned"] == "stage2.eps=0.05"
    members = children(runs(tmp_path), parent)
    assert len(members) == 6 and len({m.data.params["stage2.lr"] for m in members}) == 6
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for m in members:
        assert m.data.params["stage2.eps"] == "0.05"
        got = json.loads(
            Path(c.download_artifacts(m.info.run_id, "sampled.json", str(tmp_path))).read_text()
        )
        assert got["stage2.eps"] == 0.05

    from search_spaces import SPACES, resolve

    published = SPACES["image_mnist_lt"].best(resolve("image_mnist_lt"))
    every = [x for k, v in published.items() for x in ("--set", f"{k}={v}")]
    one = smoke(tmp_path / "all", "--trials", "8", *every)
    ok(one)
    assert "every searched key is fixed: one setting, run once" in one.stdout
    (parent,) = kind(runs(tmp_path / "all"), "sweep")
    assert len(children(runs(tmp_path / "all"), parent)) == 1


def _kill_session(pid: int) -> None:
    """SIGKILL the driver and everything it started (its local Ray cluster)."""
    victims = [p for p in psutil.process_iter(["pid"]) if _sid(p) == pid]
    for p in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)


def _sid(p) -> int | None:
    try:
        return os.getsid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None


def test_sigkill_then_resume_loses_and_reruns_nothing(tmp_path, smoke, repo):
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.sweep",
        "image_mnist_lt",
        "--smoke",
        "--quiet",
        "--storage",
        str(tmp_path),
        "--trials",
        "6",
        "--concurrency",
        "1",
        "--population",
        "1",
        "--set",
        "stage2.epochs=3",
    ]
    _run_sweep_then_kill(cmd, tmp_path, repo, lambda done: len(done) >= 2)
    # what had finished at the moment of the kill
    done_before = {
        t.data.tags["ray.trial_id"]
        for t in kind(runs(tmp_path), "trial")
        if t.info.status == "FINISHED"
    }
    assert len(done_before) >= 2

    resumed, rs, trials = _resume_finishes_each_once(smoke, tmp_path, 6)
    finished = [t for t in trials if t.info.status == "FINISHED"]
    ids = [t.data.tags["ray.trial_id"] for t in finished]
    for t in trials:
        if t.data.tags["ray.trial_id"] in done_before:  # nothing finished was run again
            assert t.info.status == "FINISHED" and t.data.tags["ot.attempt"] == "1"
    assert len(kind(rs, "stage1_build")) == 1  # the restart reused the cache
    # the closing ranking lists every trial of the sweep, those finished before the kill too,
    # in the order of their selection metric; Optuna's re-report warnings are not shown
    table = resumed.stdout.split("rank  val_bal_acc  test_bal_acc  trial\n")[1].split("\n\n")[0]
    ranked = [ln.split() for ln in table.splitlines() if ln.split()[:1] and ln.split()[0].isdigit()]
    assert [int(r[0]) for r in ranked] == [1, 2, 3, 4, 5, 6], resumed.stdout[-3000:]
    assert {r[3] for r in ranked} == set(ids) and done_before <= {r[3] for r in ranked}
    vals = [float(r[1]) for r in ranked]
    assert vals == sorted(vals, reverse=True)
    by_id = {t.data.tags["ray.trial_id"]: t for t in finished}
    assert vals[0] == round(by_id[ranked[0][3]].data.metrics["selected_val_balanced_acc"], 2)
    assert "is already reported" not in resumed.stdout + resumed.stderr


def _resume_finishes_each_once(smoke, storage: Path, n: int) -> tuple:
    """``--resume`` the interrupted sweep under ``storage``: it finishes, each of its ``n``
    settings has exactly one FINISHED run, none is left RUNNING, all are ranked. Returns
    (the resumed command's result, every run, the sweep's trial runs)."""
    resumed = smoke(storage, "--resume")
    ok(resumed)
    rs = runs(storage)
    (parent,) = kind(rs, "sweep")
    assert parent.info.status == "FINISHED"
    trials = children(rs, parent)
    ids = [t.data.tags["ray.trial_id"] for t in trials if t.info.status == "FINISHED"]
    assert len(ids) == len(set(ids)) == n, ids  # every setting finished exactly once
    assert not [t for t in trials if t.info.status == "RUNNING"]
    assert f"{n} ranked" in resumed.stdout
    return resumed, rs, trials


def _run_sweep_then_kill(cmd, storage: Path, repo, enough) -> int:
    """Start ``cmd``, wait until ``enough(ids of the FINISHED trial-kind runs)``, then SIGKILL
    it all. Returns how many trial runs had finished at the kill."""
    done: list = []

    def ready(log: str) -> bool:
        if "stage 1:" not in log:  # the store is created (and migrated) before stage 1 starts
            return False
        done[:] = _finished_trials(storage / "mlflow.db")
        return enough(done)

    _signal_when(cmd, storage, repo, ready, lambda proc: _kill_session(proc.pid))
    return len(done)


def _finished_trials(db: Path) -> list:
    """The run ids of the FINISHED trial-kind runs in the SQLite store ``db``, read with a bare
    query: a few milliseconds, where an MLflow client takes seconds on busy cores, long
    enough for a short sweep to finish between two looks."""
    query = (
        "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid"
        " WHERE r.status = 'FINISHED' AND t.key = 'ot.kind' AND t.value = 'trial'"
    )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return [row[0] for row in con.execute(query)]
    except sqlite3.OperationalError:  # not created yet, or a writer holds it: look again
        return []


def test_sigterm_during_the_stage1_build_is_one_line_and_leaves_no_run_open(tmp_path, smoke, repo):
    """SIGTERM (a scheduler's time limit) while stage 1 builds, in a Ray task that opened the
    build's run: the command stops as for Ctrl-C, in one line (exit 143), not by Ray's driver
    handler (which exits at once, its C++ handler aborting); the driver closes the build's run
    (its task goes with the driver) and the sweep's as KILLED. The command run again builds
    stage 1 and finishes. (Ctrl-C takes the same path: ``cli.run_command``'s test.)"""
    args = ["--trials", "2", "--set", "stage1.epochs=8"]
    cmd = [sys.executable, "-m", "orchestrator.sweep", "image_mnist_lt", "--smoke",
           "--quiet", "--storage", str(tmp_path), *args]  # fmt: skip

    def building(log: str) -> bool:
        return "stage 1: building" in log and bool(kind(runs(tmp_path), "stage1_build"))

    # the driver only, as a scheduler signals its job
    rc, out = _signal_when(cmd, tmp_path, repo, building, lambda p: p.send_signal(signal.SIGTERM))
    assert rc == 128 + signal.SIGTERM, out[-3000:]
    assert "Traceback" not in out and "SIGTERM received" not in out  # Ray's C++ handler
    assert out.strip().splitlines()[-1].startswith("stopped (SIGTERM): its open runs are")
    rs = runs(tmp_path)
    assert not [r for r in rs if r.info.status == "RUNNING"]
    (build,) = kind(rs, "stage1_build")
    assert build.info.status == "KILLED" and build.data.tags["ot.interrupted"] == "true"
    assert kind(rs, "sweep")[0].info.status == "KILLED"
    ok(smoke(tmp_path, *args))
    builds = sorted(r.info.status for r in kind(runs(tmp_path), "stage1_build"))
    assert builds == ["FINISHED", "KILLED"]


def _signal_when(cmd, storage: Path, repo, ready, send) -> tuple[int, str]:
    """Start ``cmd`` (its own session, output in ``storage/driver.log``), ``send(proc)`` once
    ``ready(log so far)``, then wait for it: (exit status, its output)."""
    log_path = storage / "driver.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_sigint_as_in_a_terminal,
        )  # fmt: skip
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if ready(log_path.read_text()):
                break
        assert proc.poll() is None, "the command ended before it could be signalled"
        send(proc)
        try:
            rc = proc.wait(timeout=120)
        finally:
            _kill_session(proc.pid)  # whatever Ray left behind
    return rc, log_path.read_text()


def _sigint_as_in_a_terminal() -> None:
    """SIGINT's default action in the command, as a user's shell gives it: a shell without job
    control starts background jobs (pytest run with ``&``) with SIGINT ignored, and a child
    inherits that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_population_sweep_tracks_every_member_as_a_trial(tmp_path, smoke, repo):
    from mlflow.tracking import MlflowClient

    res = smoke(tmp_path, "--trials", "32", "--population", "8", "--set", "stage2.epochs=4")
    ok(res)
    assert "32 settings as 4 trials of up to 8" in res.stdout
    # a stopped population draws nothing as its process exits (the driver draws its figures)
    assert "Fatal Python error" not in res.stdout + res.stderr
    assert "32 ranked" in res.stdout
    rs = runs(tmp_path)
    (parent,) = kind(rs, "sweep")
    assert parent.info.status == "FINISHED"
    members = children(rs, parent)
    assert len(members) == 32 and {m.info.status for m in members} == {"FINISHED"}
    assert {m.data.tags["ot.kind"] for m in members} == {"trial"}
    pops = {}
    for m in members:
        pops.setdefault(m.data.tags["ot.population"], set()).add(int(m.data.tags["ot.member"]))
        assert (
            m.data.tags["ray.trial_id"]
            == f"{m.data.tags['ot.population']}_m{m.data.tags['ot.member']}"
        )
    assert len(pops) == 4 and all(v == set(range(8)) for v in pops.values())
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # successive halving inside each population (rungs after epochs 1 and 3, factor 3: 3 of
    # 8 go past epoch 1, 1 past epoch 3); ASHA may also stop a whole population at a rung
    ran, with_pngs = {}, 0
    for m in members:
        hist = c.get_metric_history(m.info.run_id, "val_balanced_acc")
        epochs = [h.step for h in hist]
        assert epochs == list(range(1, len(epochs) + 1))
        ran[m.info.run_id] = len(epochs)
        assert (m.data.tags.get("ot.stopped_early") == "true") == (len(epochs) < 4)
        assert m.data.metrics["selected_val_balanced_acc"] == max(h.value for h in hist)
        arts = {a.path for a in c.list_artifacts(m.info.run_id)}
        assert {
            "confusion.json", "per_class_acc.csv", "config.json",
            "sampled.json", "best_model.pt", "result.json", "weight_mass.json",
        } <= arts, arts  # fmt: skip
        with_pngs += arts >= PNGS
    assert with_pngs == 3  # the best 3 settings' (--figures' default)
    for pop in pops:
        lengths = [ran[m.info.run_id] for m in members if m.data.tags["ot.population"] == pop]
        assert sum(n > 1 for n in lengths) <= 3 and sum(n > 3 for n in lengths) <= 1
    assert max(ran.values()) == 4
    # the published setting was asked first; 32 different settings in all
    from search_spaces import SPACES, resolve

    published = SPACES["image_mnist_lt"].best(resolve("image_mnist_lt"))
    best = {k: str(v) for k, v in published.items()}
    assert any(all(m.data.params[k] == v for k, v in best.items()) for m in members)
    assert len({m.data.params["stage2.lr"] for m in members}) == 32
    # the parent's best is the best member by validation
    top = max(members, key=lambda m: m.data.metrics["selected_val_balanced_acc"])
    assert (
        parent.data.metrics["best_selected_val_balanced_acc"]
        == top.data.metrics["selected_val_balanced_acc"]
    )
    # picked inside a population, the best setting is re-run alone beside its control: the
    # numbers on the parent are what `orchestrator.run` gives for that setting
    sel = _best_run_alone(c, parent, tmp_path, repo, "stage2.epochs=4")
    pm = parent.data.metrics
    assert pm["alone_selected_val_balanced_acc"] == sel["val"]["balanced_acc"]
    assert pm["alone_selected_test_balanced_acc"] == sel["test"]["balanced_acc"]
    gain = sel["val"]["balanced_acc"] - pm["control_selected_val_balanced_acc"]
    assert "the best setting re-run alone (a single trial" in res.stdout
    assert f"against its control: val {gain:+.2f}" in res.stdout


def test_population_sigkill_then_resume_loses_no_finished_member(tmp_path, smoke, repo):
    cmd = [
        sys.executable, "-m", "orchestrator.sweep", "image_mnist_lt", "--smoke", "--quiet",
        "--storage", str(tmp_path), "--trials", "16", "--population", "4",
        "--concurrency", "1", "--set", "stage2.epochs=3",
    ]  # fmt: skip
    _run_sweep_then_kill(cmd, tmp_path, repo, lambda done: len(done) >= 4)
    done_before = {
        t.data.tags["ray.trial_id"]: t.info.run_id
        for t in kind(runs(tmp_path), "trial")
        if t.info.status == "FINISHED"
    }
    assert len(done_before) >= 4
    _, _, members = _resume_finishes_each_once(smoke, tmp_path, 16)
    finished = [m for m in members if m.info.status == "FINISHED"]
    for tid, run_id in done_before.items():  # the finished ones kept their run, not re-run
        (again,) = [m for m in finished if m.data.tags["ray.trial_id"] == tid]
        assert again.info.run_id == run_id and again.data.tags["ot.attempt"] == "1"


def test_ctrl_c_stops_a_population_sweep_resumably_and_resume_loses_no_finished_member(
    tmp_path, smoke, repo
):
    """Ctrl-C (SIGINT to the command's process group): Tune saves its state and returns as if
    done; the sweep says it was interrupted and how to resume (exit 130), is not marked
    finished, and the members it stopped stay open, not closed as stopped early. --resume
    trains those again and keeps every member that had finished."""
    cmd = [
        sys.executable, "-m", "orchestrator.sweep", "image_mnist_lt", "--smoke", "--quiet",
        "--storage", str(tmp_path), "--trials", "16", "--population", "4",
        "--concurrency", "1", "--set", "stage2.epochs=3",
    ]  # fmt: skip

    def four_finished(log: str) -> bool:
        if "stage 1:" not in log:
            return False
        return len(_finished_trials(tmp_path / "mlflow.db")) >= 4

    rc, out = _signal_when(
        cmd, tmp_path, repo, four_finished, lambda p: os.killpg(p.pid, signal.SIGINT)
    )
    assert rc == 130, out[-3000:]
    assert (
        "interrupted: the sweep's state is saved; resume it with: "
        f"{Path(sys.executable).relative_to(repo)} -m orchestrator.sweep "
        f"image_mnist_lt --resume --storage {tmp_path}"
    ) in out
    assert "== sweep summary ==" not in out and "Fatal Python error" not in out
    assert "Tuner.restore" not in out  # Tune's own hint, which is not how a sweep resumes
    (record,) = tmp_path.glob("image_mnist_lt/sweep-*/ot_sweep.json")
    assert json.loads(record.read_text())["status"] != "finished"
    rs = runs(tmp_path)
    (parent,) = kind(rs, "sweep")
    assert parent.info.status == "KILLED" and parent.data.tags["ot.interrupted"] == "true"
    members = children(rs, parent)
    done_before = {m.data.tags["ray.trial_id"]: m for m in members if m.info.status == "FINISHED"}
    assert len(done_before) >= 4
    from orchestrator.trainable import asha_rungs

    for m in done_before.values():  # finished for real: all epochs, or stopped at a rung
        epochs = len(_val_history(tmp_path, m.info.run_id))
        stopped = m.data.tags.get("ot.stopped_early") == "true"
        assert (epochs == 3 and not stopped) or (stopped and epochs in asha_rungs(3)), epochs
    assert len(done_before) < 16  # some were stopped by the interrupt, and left open

    _, _, members = _resume_finishes_each_once(smoke, tmp_path, 16)
    finished = [m for m in members if m.info.status == "FINISHED"]
    for tid, m in done_before.items():  # kept, not trained again
        (again,) = [f for f in finished if f.data.tags["ray.trial_id"] == tid]
        assert again.info.run_id == m.info.run_id and again.data.tags["ot.attempt"] == "1"


def _val_history(storage: Path, run_id: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    return c.get_metric_history(run_id, "val_balanced_acc")


def _outcome(storage: Path, parent) -> list:
    """Each trial of a sweep: its searched setting, where it stopped and what it selected."""
    rows = []
    for t in kind(children(runs(storage), parent), "trial"):
        if t.info.status != "FINISHED":  # an attempt a kill interrupted
            continue
        setting = {k: v for k, v in t.data.params.items() if k.startswith("stage2.")}
        rows.append((sorted(setting.items()), t.data.tags.get("ot.stopped_early", "no"),
                     t.data.metrics["selected_val_balanced_acc"]))  # fmt: skip
    return sorted(rows)


def test_the_outcome_does_not_depend_on_which_trial_reports_first(tmp_path, smoke):
    """Two sweeps, 16 single trials two at a time, each trial sleeping an unseeded random time
    before each report (a different order of results every time): past TPE's 10 random
    startup settings and through ASHA's rungs (epochs 1 and 3 of 4), they ask for the same
    settings, stop the same trials and print the same summary."""
    from orchestrator.trainable import JITTER_ENV

    args = ("--trials", "16", "--population", "1", "--concurrency", "2", "--order", "trial",
            "--set", "stage2.epochs=4")  # fmt: skip
    printed = []
    for _ in range(2):
        res = smoke(tmp_path, *args, env={JITTER_ENV: "0.5"}, timeout=600)
        ok(res)
        assert "A new study created" not in res.stdout + res.stderr  # Optuna's INFO line
        summary = res.stdout[res.stdout.index("== sweep summary ==") : res.stdout.index("MLflow:")]
        printed.append(re.sub(r"[0-9a-f]{8,}", "ID", summary))  # Tune's trial ids are random
    parents = sorted(kind(runs(tmp_path), "sweep"), key=lambda r: r.info.start_time)
    first, second = (_outcome(tmp_path, p) for p in parents)
    assert len(first) == 16 and first == second
    assert any(stopped == "true" for _, stopped, _ in first)  # ASHA did stop trials
    assert printed[0] == printed[1] and "concurrency 2, trial order" in printed[0]


def _outcome_diff(named: dict) -> str:
    """What differs between sweeps' ``_outcome`` rows (name -> rows): each setting whose
    (stopped early, selected value) is not the same in all, side by side."""
    by = {n: {json.dumps(s): (stop, val) for s, stop, val in rows} for n, rows in named.items()}
    lines = [f"{n}: {len(rows)} trials" for n, rows in named.items()]
    for key in sorted(set().union(*by.values())):
        seen = [by[n].get(key) for n in by]
        if any(v != seen[0] for v in seen):
            lines.append(f"{key}: " + "  ".join(f"{n}={by[n].get(key)}" for n in by))
    return "\n".join(lines)


def test_a_resumed_sweep_decides_as_the_uninterrupted_one(tmp_path, smoke, repo, monkeypatch):
    """The same sweep (8 single trials, two at a time) three times: once to its end, and twice
    SIGKILLed after three trials finished, then resumed. The first kill leaves Tune's
    experiment state as the sweep saves it, at every controller step. The second leaves it as
    saved at the start only (``TUNE_GLOBAL_CHECKPOINT_S``): the restored Tuner holds as pending
    trials that finished (they report their epochs again from MLflow, so ASHA's rungs get the
    values they had) and does not know the later ones (their runs are superseded and the
    searcher asks for the same settings again). Each resumed sweep asks the same settings,
    stops the same trials and selects the same numbers as the uninterrupted one."""
    args = ["--trials", "8", "--population", "1", "--concurrency", "2",
            "--set", "stage2.epochs=4"]  # fmt: skip
    whole = tmp_path / "whole"
    done = {"whole": smoke(whole, *args)}
    ok(done["whole"])
    for name, period in (("cut", None), ("lagged", "600")):
        storage = tmp_path / name
        storage.mkdir()
        cmd = [sys.executable, "-m", "orchestrator.sweep", "image_mnist_lt", "--smoke",
               "--quiet", "--storage", str(storage), *args]  # fmt: skip
        with monkeypatch.context() as m:
            if period:
                m.setenv("TUNE_GLOBAL_CHECKPOINT_S", period)
            killed_at = _run_sweep_then_kill(cmd, storage, repo, lambda f: len(f) >= 3)
        # killed after Tune's closing save, the lagged state would know every trial
        assert killed_at < 8, f"{name}: every trial had finished when the kill came"
        done[name] = _resume_finishes_each_once(smoke, storage, 8)[0]
    outcomes = {n: _outcome(tmp_path / n, kind(runs(tmp_path / n), "sweep")[0]) for n in done}
    summaries = "\n".join(
        f"-- {n}:\n" + r.stdout[r.stdout.find("== sweep summary ==") :] for n, r in done.items()
    )
    assert outcomes["cut"] == outcomes["whole"] == outcomes["lagged"], (
        _outcome_diff(outcomes) + "\n" + summaries
    )
    assert len(outcomes["whole"]) == 8
    assert any(stopped == "true" for _, stopped, _ in outcomes["whole"])  # ASHA did stop trials
    lagged = kind(runs(tmp_path / "lagged"), "trial")
    assert any(t.data.tags.get("ot.superseded") == "true" for t in lagged)  # the lag was real


def test_failed_trial_is_retried(tmp_path, smoke):
    marker = tmp_path / "faults"
    marker.mkdir()
    res = smoke(tmp_path, "--trials", "2", env={"OT_REWEIGHT_FAIL_ONCE": str(marker)})
    ok(res)
    assert (marker / "raised").exists()
    trials = kind(runs(tmp_path), "trial")
    failed = [t for t in trials if t.info.status == "FAILED"]
    finished = [t for t in trials if t.info.status == "FINISHED"]
    assert len(failed) == 1 and "injected fault" in failed[0].data.tags["ot.error"]
    assert len({t.data.tags["ray.trial_id"] for t in finished}) == 2
    retried = failed[0].data.tags["ray.trial_id"]
    again = [t for t in finished if t.data.tags["ray.trial_id"] == retried]
    assert len(again) == 1 and again[0].data.tags["ot.attempt"] == "2"


def test_eight_concurrent_trials_all_complete(tmp_path, smoke):
    res = smoke(tmp_path, "--trials", "8", "--concurrency", "8", "--cpus-per-trial", "0.25")
    ok(res)
    assert "concurrency 8" in res.stdout
    trials = kind(runs(tmp_path), "trial")
    assert len(trials) == 8 and {t.info.status for t in trials} == {"FINISHED"}
    spans = sorted((t.info.start_time, t.info.end_time) for t in trials)
    overlap = max(sum(s <= start < e for s, e in spans) for start, _ in spans)
    assert overlap >= 2, spans  # trials really ran side by side


def _best_state(storage: Path, run) -> dict:
    import torch
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    path = c.download_artifacts(run.info.run_id, "best_model.pt", str(storage / "dl"))
    return torch.load(path, weights_only=True)


def test_two_worker_trial_trains_data_parallel(tmp_path, smoke):
    """A trial on 2 Ray Train workers (TorchTrainer, gloo) equals the 1-worker trial."""
    args = ("--trials", "1", "--set", "stage2.epochs=2", "--cpus-per-trial", "0.5")
    dp, single = tmp_path / "dp", tmp_path / "single"
    ok(smoke(dp, *args, "--workers-per-trial", "2"))
    ok(smoke(single, *args))
    (t2,) = kind(runs(dp), "trial")
    (t1,) = kind(runs(single), "trial")
    assert t2.info.status == "FINISHED" and t2.data.tags["ot.workers"] == "2"
    assert "ot.workers" not in t1.data.tags
    # each worker saw its own half of every batch, together the whole training set
    r0, r1 = t2.data.metrics["shard_samples_rank0"], t2.data.metrics["shard_samples_rank1"]
    n_train = sum(json.loads(_info(dp))["train_counts"])
    assert r0 + r1 == n_train and abs(r0 - r1) <= n_train // 16 + 1
    # the metrics reached Tune (the summary) and MLflow, and match the single-worker run
    for key in ("selected_val_balanced_acc", "val_balanced_acc", "test_balanced_acc"):
        assert abs(t2.data.metrics[key] - t1.data.metrics[key]) < 1e-6, key
    a, b = _best_state(dp, t2), _best_state(single, t1)
    assert a.keys() == b.keys()
    for k in a:
        torch_close(a[k], b[k])


def _info(storage: Path) -> str:
    return next((storage / "stage_cache").glob("*/info.json")).read_text()


def torch_close(a, b) -> None:
    import torch

    torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5)


@contextlib.contextmanager
def mlflow_server(root: Path, port: int):
    """``mlflow server`` on 127.0.0.1: SQLite backend, artifacts proxied by the server (the
    clients never see its artifact folder), as README's cluster section starts it."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination", (root / "server-artifacts").as_uri(),
            "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, what="mlflow server")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_two_node_cluster_with_an_mlflow_server(tmp_path, smoke, free_port):
    """The cluster path end to end on this machine: `ray start --head` plus a second
    `ray start --address` (1 CPU each), an `mlflow server` on 127.0.0.1 with proxied artifacts,
    and a sweep given both addresses. Trials land on both nodes; runs, metrics and an artifact
    are read back through the server over HTTP."""
    from mlflow.tracking import MlflowClient

    ray_cli = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a throwaway cluster on localhost
    port = free_port
    # its own temp dir (short: Ray's socket paths must fit 107 bytes), so no other Ray on this
    # machine takes it for "the current cluster", and only its processes are stopped after
    temp = tempfile.mkdtemp(prefix="otr", dir="/tmp")
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    server_root = tmp_path / "server"
    server_root.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        mlflow_port = sock.getsockname()[1]
    try:
        for extra in (
            ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"],
            [f"--address=127.0.0.1:{port}"],
        ):
            started = subprocess.run(
                [ray_cli, "start", *extra, *common],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert started.returncode == 0, started.stderr[-2000:]
        with mlflow_server(server_root, mlflow_port) as url:
            res = smoke(
                tmp_path / "shared",
                "--trials", "4",
                "--address", f"127.0.0.1:{port}",
                "--tracking-uri", url,
                env={"RAY_AUTH_MODE": "disabled"},
            )  # fmt: skip
            ok(res)
            assert "concurrency 2" in res.stdout  # 2 nodes x 1 CPU, 1 CPU per trial
            assert f"open {url} in a browser" in res.stdout
            assert f"the trials, ranked: {url}/#/experiments/" in res.stdout
            assert not (tmp_path / "shared" / "mlflow.db").exists()  # nothing tracked locally

            c = MlflowClient(url)
            exp = c.get_experiment_by_name("image_mnist_lt")
            rs = c.search_runs([exp.experiment_id], max_results=100)
            trials = kind(rs, "trial")
            assert len(trials) == 4 and {t.info.status for t in trials} == {"FINISHED"}
            assert len({t.data.tags["ray.node_id"] for t in trials}) == 2
            (parent,) = kind(rs, "sweep")
            assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}
            best = parent.data.tags["ot.best_trial_run"]
            assert parent.data.metrics["best_selected_val_balanced_acc"] == max(
                t.data.metrics["selected_val_balanced_acc"] for t in trials
            )
            # an artifact, through the server's proxy (the run's URI is mlflow-artifacts:/)
            run = c.get_run(best)
            assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
            got = Path(c.download_artifacts(best, "per_class_acc.csv", str(tmp_path)))
            rows = got.read_text().strip().splitlines()
            assert rows[0].startswith("class,") and len(rows) == 1 + 10  # MNIST: 10 classes
            stored = list((server_root / "server-artifacts").rglob("per_class_acc.csv"))
            assert len(stored) == 4  # every trial's, written by the server, not the clients
    finally:
        _stop_cluster(temp, f"127.0.0.1:{port}")
        shutil.rmtree(temp, ignore_errors=True)


def _stop_cluster(temp: str, gcs: str) -> None:
    """Kill the processes of one `ray start` cluster: those whose command line names its temp
    dir or its GCS address (`ray stop` would stop every Ray on this machine)."""
    mine = []
    for p in psutil.process_iter(["cmdline"]):
        args = " ".join(p.info["cmdline"] or [])
        if p.pid != os.getpid() and (temp in args or gcs in args):
            mine.append(p)
    for p in mine:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(mine, timeout=30)


def test_stage1_builds_data_parallel_when_asked(tmp_path, smoke):
    """stage1.workers=2: stage 1 runs on a 2-worker TorchTrainer, rank 0 writes the entry."""
    res = smoke(tmp_path, "--trials", "1", "--cpus-per-trial", "0.5", "--set", "stage1.workers=2")
    ok(res)
    assert "2 Ray Train workers" in res.stdout
    rs = runs(tmp_path)
    (build,) = kind(rs, "stage1_build")
    assert build.info.status == "FINISHED" and build.data.tags["ot.workers"] == "2"
    assert build.data.metrics["val_balanced_acc"] > 15.0  # above chance (10 classes)
    assert [t.info.status for t in kind(rs, "trial")] == ["FINISHED"]


def test_text_tweets_sweep_end_to_end(tmp_path, sweep):
    """The offline text experiment: stages 0-1 once (a Ray task), stage 2 on cached features
    with the weight net, MLflow runs with artifacts."""
    res = sweep(tmp_path, "text_tweets", "--smoke", "--quiet", "--trials", "2")
    ok(res)
    rs = runs(tmp_path, "text_tweets")
    (parent,) = kind(rs, "sweep")
    trials = children(rs, parent)
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FINISHED"}
    assert trials[0].data.params["stage2.weights"] == "net"
    (build,) = kind(rs, "stage1_build")
    assert "stage0/train_loss" in build.data.metrics  # stage 0 logs under its own keys
    assert "val_balanced_acc" in build.data.metrics
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    arts = {a.path for a in c.list_artifacts(trials[0].info.run_id)}
    assert {"confusion_matrix.png", "learned_weights.png", "best_model.pt"} <= arts


@pytest.mark.parametrize("in_storage", [False, True], ids=["hf_cache", "cache_in_storage"])
def test_sweep_text_sst5_as_typed_fetches_data_and_encoder_on_first_use(
    tmp_path, sweep, in_storage
):
    """``sweep text_sst5`` on a connected machine, the hub being a loopback server: SST-5
    through ``datasets`` and the encoder through the hub before Ray starts, into the
    Hugging Face cache (``HF_HOME``; with ``--cache-in-storage``, ``<storage>/cache`` and not
    ``HF_HOME``), then a real sweep whose trials read them from there."""
    from .._loopback import LoopbackServer, sst5_files, tiny_bert_files

    home = tmp_path / "hf"
    extra = ("--cache-in-storage",) if in_storage else ()
    with LoopbackServer() as srv:
        srv.add_repo("dataset", "SetFit/sst5", sst5_files(40, 4))
        srv.add_repo("model", "bert-base-uncased", tiny_bert_files())
        env = {"HF_ENDPOINT": srv.url, "HF_HOME": str(home)}
        env.update(
            {v: "0" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
        )
        res = sweep(tmp_path, "text_sst5", "--smoke", "--quiet", "--trials", "2", *extra, env=env)
        ok(res)
        assert srv.fetched("/datasets/SetFit/sst5/resolve/") >= 2
        assert srv.fetched("/bert-base-uncased/resolve/") >= 2
    if in_storage:
        assert not home.exists()
        home = tmp_path.resolve() / "cache" / "huggingface"
    assert any((home / "hub").glob("models--bert-base-uncased/snapshots/*/model.safetensors"))
    assert any((home / "hub").glob("datasets--SetFit--sst5/snapshots/*/*"))
    rs = runs(tmp_path, "text_sst5")
    (parent,) = kind(rs, "sweep")
    trials = children(rs, parent)
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FINISHED"}
    (build,) = kind(rs, "stage1_build")
    assert trials[0].data.params["data.source"] == "sst5"
    assert "val_balanced_acc" in build.data.metrics


@pytest.mark.parametrize("arch", ["pointnet", "dgcnn"])
def test_pointcloud_shapes_sweep_end_to_end(tmp_path, arch, sweep):
    """The offline point-cloud experiment with either model: one stage-1 build, trials on
    cached features, MLflow runs with artifacts."""
    res = sweep(
        tmp_path,
        "pointcloud_shapes",
        "--smoke",
        "--quiet",
        "--trials",
        "2",
        "--set",
        f"model.arch={arch}",
    )
    ok(res)
    rs = runs(tmp_path, "pointcloud_shapes")
    (parent,) = kind(rs, "sweep")
    trials = children(rs, parent)
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FINISHED"}
    assert {t.data.params["model.arch"] for t in trials} == {arch}
    assert all("test_balanced_acc" in t.data.metrics for t in trials)
    (build,) = kind(rs, "stage1_build")
    assert build.info.status == "FINISHED" and "val_balanced_acc" in build.data.metrics
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    arts = {a.path for a in c.list_artifacts(trials[0].info.run_id)}
    assert {"confusion_matrix.png", "learned_weights.png", "best_model.pt"} <= arts


def test_pointcloud_modelnet10_sweep_reads_the_off_fixture(tmp_path, sweep, make_modelnet_tree):
    root = make_modelnet_tree(tmp_path / "modelnet10")
    res = sweep(
        tmp_path / "runs",
        "pointcloud_modelnet10",
        "--smoke",
        "--quiet",
        "--trials",
        "1",
        "--set",
        f"data.root={root}",
    )
    ok(res)
    (trial,) = kind(runs(tmp_path / "runs", "pointcloud_modelnet10"), "trial")
    assert trial.info.status == "FINISHED"
    assert (root / "processed" / "training.pt").exists()  # PyG processed the OFF files


@pytest.fixture
def reproduce(command):
    """``reproduce(storage, *args, tool="reproduce" | "report")``."""

    def run(storage: Path, *args: str, tool: str = "reproduce", timeout: int = 600):
        return command(tool, *args, "--storage", str(storage), timeout=timeout)

    return run


def test_reproduce_table_resumes_and_reports(tmp_path, reproduce):
    """``reproduce offline_image --smoke``: runs tagged per cell and seed, stage 1 shared by
    the CE and OT rows, a second invocation runs nothing, the report's numbers are the runs'."""
    args = ["offline_image", "--smoke", "--seeds", "2", "--methods", "ce", "ot_weight_vector"]
    dry = reproduce(tmp_path, *args, "--dry-run")
    ok(dry)
    # the OT row brings its control (ot_weight_vector+no_ot), on the same stage 1
    assert "cells: 3, runs: 6 (6 to run, 0 finished before)" in dry.stdout
    assert "stage-1 builds: 2 distinct" in dry.stdout
    assert not (tmp_path / "mlflow.db").exists()  # a dry run writes nothing
    est = re.search(r"wall clock: about ([0-9.]+) min at [0-9]+ trials at a time", dry.stdout)
    assert est, dry.stdout
    real = reproduce(tmp_path, *args)
    ok(real)
    # its status line counts the runs, with no "best val" (each run is its own cell)
    status = [ln for ln in real.stdout.splitlines() if re.match(r"\[[0-9hms]+\] trials ", ln)]
    assert status and status[-1].endswith(" 0 errored"), real.stdout[-2000:]
    assert "best val" not in real.stdout
    # the real run prints its time beside the estimate for the same plan
    took = re.search(r"took ([0-9.]+) min; estimated ([0-9.]+) min", real.stdout)
    assert took and took.group(2) == est.group(1), real.stdout[-2000:]
    assert float(took.group(1)) > 0
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.get_experiment_by_name("reproduce-offline_image-smoke")
    rs = c.search_runs([exp.experiment_id], max_results=1000)
    trials = kind(rs, "trial")
    assert len(trials) == 6 and {t.info.status for t in trials} == {"FINISHED"}
    rows = ("ce", "ot_weight_vector", "ot_weight_vector+no_ot")
    assert {(t.data.tags["ot.cell"], t.data.tags["ot.seed"]) for t in trials} == {
        (f"mnist_if100|{m}", s) for m in rows for s in ("0", "1")
    }
    builds = kind(rs, "stage1_build")
    assert len(builds) == 2  # one per seed: the CE row, the OT row and its control share it
    (parent,) = kind(rs, "reproduce")
    figs = {a.path for a in c.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/fig1_weights.png", "figures/fig2_confusion.png"} <= figs

    again = reproduce(tmp_path, *args, "--quiet")
    ok(again)
    assert "(0 to run, 6 finished before)" in again.stdout
    rs2 = c.search_runs([exp.experiment_id], max_results=1000)
    assert len(kind(rs2, "trial")) == 6  # nothing re-ran

    ot = [t for t in trials if t.data.tags["ot.method"] == "ot_weight_vector"]
    mean = sum(t.data.metrics["best_val_epoch/test_top1_error"] for t in ot) / 2
    md = reproduce(tmp_path, "offline_image", "--smoke", tool="report")
    ok(md)
    assert f"| ot_weight_vector | {mean:.2f} ± " in md.stdout
    # OT's own gain, paired by seed: the control's error minus the OT row's (+ = OT better)
    ctl = {
        t.data.tags["ot.seed"]: t.data.metrics["best_val_epoch/test_top1_error"]
        for t in trials
        if t.data.tags["ot.method"] == "ot_weight_vector+no_ot"
    }
    diffs = [
        ctl[t.data.tags["ot.seed"]] - t.data.metrics["best_val_epoch/test_top1_error"] for t in ot
    ]
    gain = f"{sum(diffs) / 2:+.2f} ± "
    key = "| mnist_if100\\|ot_weight_vector |"
    row = next(ln for ln in md.stdout.splitlines() if ln.startswith(key))
    assert row.split(" | ")[-1].startswith(gain), row
    out = tmp_path / "r.html"
    ok(reproduce(tmp_path, "offline_image", "--smoke", "--format", "html", "--out", str(out),
                  tool="report"))  # fmt: skip
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 2 and f"{mean:.2f}" in page


def test_stage1_space_builds_a_stage1_per_trial(tmp_path, sweep):
    """``--space meta_reweight`` samples Meta-Weight-Net's stage-1 knobs: the enqueued
    published setting uses the sweep's stage 1, the other trial builds and tags its own."""
    res = sweep(
        tmp_path, "image_mnist_lt", "--smoke", "--quiet", "--trials", "2",
        "--space", "meta_reweight", "--set", "stage1.reweight=mwn", "--set", "stage2.method=none",
    )  # fmt: skip
    ok(res)
    rs = runs(tmp_path)
    trials = kind(rs, "trial")
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FINISHED"}
    hashes = {t.data.tags["ot.stage1_hash"] for t in trials}
    builds = kind(rs, "stage1_build")
    assert len(hashes) == 2 and {b.data.tags["ot.stage1_hash"] for b in builds} == hashes
    assert {t.data.params["stage1.reweight"] for t in trials} == {"mwn"}
    assert "1e-05" in {t.data.params["stage1.meta_lr"] for t in trials}


def test_reproduce_tuned_takes_the_sweeps_best(tmp_path, smoke, reproduce):
    ok(smoke(tmp_path, "--trials", "2"))
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,) = kind(runs(tmp_path), "sweep")
    best = json.loads(
        Path(c.download_artifacts(parent.info.run_id, "best.json", str(tmp_path))).read_text()
    )
    args = ["offline_image", "--smoke", "--seeds", "2", "--methods", "ot_weight_vector", "--tuned"]
    ok(reproduce(tmp_path, *args, "--quiet"))
    exp = c.get_experiment_by_name("reproduce-offline_image-smoke")
    trials = kind(c.search_runs([exp.experiment_id], max_results=100), "trial")
    assert len(trials) == 4  # the OT row and its control, 2 seeds: both at the sweep's best
    controls = [t for t in trials if t.data.tags["ot.method"] == "ot_weight_vector+no_ot"]
    assert len(controls) == 2 and {t.data.params["stage2.learn_weights"] for t in controls} == {
        "False"
    }
    for t in trials:
        assert t.data.tags["ot.tuned_from"] == parent.info.run_id
        assert t.data.tags["ot.preset_asked"] == "paper+sweep"
        for k, v in best["params"].items():
            assert t.data.params[k] == str(v)
    rep = reproduce(tmp_path, "offline_image", "--smoke", "--tuned", tool="report")
    ok(rep)
    assert (
        "best setting of a sweep" in rep.stdout and "| ot_weight_vector | missing" not in rep.stdout
    )


def test_ot_learn_space_sweeps_how_the_weights_learn(tmp_path, sweep):
    """``--space ot_learn``: the experiment's own way first, then sampled parametrisations,
    optimisers and step sizes, every trial finished and tracked with what it sampled."""
    res = sweep(
        tmp_path, "image_mnist_lt", "--smoke", "--quiet", "--trials", "3", "--space", "ot_learn"
    )
    ok(res)
    trials = kind(runs(tmp_path), "trial")
    assert len(trials) == 3 and {t.info.status for t in trials} == {"FINISHED"}
    params = [t.data.params for t in trials]
    own = [p for p in params if p["stage2.weight_param"] == "sample"
           and p["stage2.weight_optimizer"] == "sgd" and p["stage2.weight_normalize"] == "False"
           and p["stage2.weight_lr"] == "5.0"]  # fmt: skip
    assert own, params  # image_mnist_lt's own weight step, enqueued first
    assert len({p["stage2.weight_lr"] for p in params}) == 3


def test_reproduce_tune_searches_every_row_then_reruns_on_fresh_seeds(tmp_path, reproduce):
    """``reproduce offline_image --smoke --tune 2 --seeds 2``: one finished 2-setting search
    per row (the control follows its OT row), the runs on seeds 1-2 at their row's best, the
    report's tuned rows with their intervals, and a second invocation searching nothing."""
    from mlflow.tracking import MlflowClient

    args = ["offline_image", "--smoke", "--tune", "2", "--seeds", "2",
            "--methods", "cb_ce", "ot_weight_vector"]  # fmt: skip
    dry = reproduce(tmp_path, *args, "--dry-run")
    ok(dry)
    assert "--tune 2: one search per row on seed 0" in dry.stdout
    assert re.search(r"mnist_if100\|cb_ce +2 settings of cb\n", dry.stdout), dry.stdout
    assert "+no_ot  " not in dry.stdout.split("--tune 2:")[1]  # a control is not searched
    ok(reproduce(tmp_path, *args, "--quiet"))
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    sweeps = kind(runs(tmp_path), "sweep")
    assert sorted(s.data.tags["ot.search_space"] for s in sweeps) == ["cb", "offline"]
    best = {}
    for s in sweeps:
        assert s.info.status == "FINISHED" and s.data.params["sweep.trials"] == "2"
        assert len(children(runs(tmp_path), s)) == 2
        path = c.download_artifacts(s.info.run_id, "best.json", str(tmp_path))
        best[s.info.run_id] = (json.loads(Path(path).read_text())["params"], s)
    exp = c.get_experiment_by_name("reproduce-offline_image-smoke")
    trials = kind(c.search_runs([exp.experiment_id], max_results=100), "trial")
    assert sorted((t.data.tags["ot.method"], t.data.tags["ot.seed"]) for t in trials) == [
        (m, s) for m in ("cb_ce", "ot_weight_vector", "ot_weight_vector+no_ot") for s in "12"
    ]
    for t in trials:
        assert t.data.tags["ot.preset_asked"] == "paper+tune2"
        params, sweep_run = best[t.data.tags["ot.tuned_from"]]
        for k, v in params.items():
            assert t.data.params[k] == str(v), k
        assert float(t.data.tags["ot.tuned_val"]) == pytest.approx(
            sweep_run.data.metrics[names.BEST_VAL], rel=1e-5
        )
    searched = {t.data.tags["ot.method"]: best[t.data.tags["ot.tuned_from"]][1] for t in trials}
    assert searched["ot_weight_vector+no_ot"] is searched["ot_weight_vector"]

    again = reproduce(tmp_path, *args, "--quiet")
    ok(again)
    assert again.stdout.count("finished before") >= 3  # two searches, and the runs
    assert len(kind(runs(tmp_path), "sweep")) == 2

    rep = reproduce(tmp_path, "offline_image", "--smoke", "--tune", "2", tool="report")
    ok(rep)
    section = rep.stdout.split("### Equal budgets: tuned rows, paired by seed")[1]
    row = next(ln for ln in section.splitlines() if ln.startswith("| mnist_if100\\|ot_weight"))
    cells = row.split(" | ")
    err = {
        (t.data.tags["ot.method"], t.data.tags["ot.seed"]):
            t.data.metrics["best_val_epoch/test_top1_error"]
        for t in trials
    }  # fmt: skip
    vs_ctl = [err[("ot_weight_vector+no_ot", s)] - err[("ot_weight_vector", s)] for s in "12"]
    assert cells[4].startswith(f"{sum(vs_ctl) / 2:+.2f} ["), row  # + = OT better
    vs_cb = [err[("cb_ce", s)] - err[("ot_weight_vector", s)] for s in "12"]
    assert cells[3].startswith(f"{sum(vs_cb) / 2:+.2f} ["), row
    assert "(n=2)" in cells[3] and cells[2] == "not run"  # no published-setting runs here
