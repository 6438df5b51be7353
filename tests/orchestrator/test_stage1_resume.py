"""A stage 1 killed mid-way continues where it stopped: ``orchestrator.run --out`` after a
kill -9, and a cache build (``build_entry``) that finds an interrupted build's checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from orchestrator import names, tracking
from orchestrator.stage_cache import checkpoint_store, partial_rel, read_entry
from orchestrator.stages import build_entry
from orchestrator.storage import Storage
from search_spaces import resolve
from trainables.config import apply_overrides
from trainables.resume import Stage1Checkpoints
from trainables.trial import STAGE1_CHECKPOINTS, build_stage1, stage1_key

ARGS = ["image_mnist_lt", "--smoke", "--set", "stage1.epochs=4", "--quiet"]


def _command(out):
    return [sys.executable, "-m", "orchestrator.run", *ARGS, "--out", str(out)]


def _kill_after_checkpoint(out, name: str, timeout: float = 300.0) -> None:
    """Start the run and SIGKILL it as soon as the checkpoint ``name`` is in place."""
    proc = subprocess.Popen(_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / STAGE1_CHECKPOINTS / name
    deadline = time.monotonic() + timeout
    try:
        while not target.exists():
            assert proc.poll() is None, "the run ended before its checkpoint appeared"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_with_the_uninterrupted_numbers(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    ref = subprocess.run(_command(whole), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    assert "resuming" not in ref.stderr
    _kill_after_checkpoint(killed, "stage1-epoch-0002.ckpt")
    assert not (killed / "result.json").exists()
    again = subprocess.run(_command(killed), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    resumed = [line for line in again.stderr.splitlines() if "resuming" in line]
    assert len(resumed) == 1 and resumed[0] in {
        f"stage 1: resuming from epoch {e} of 4" for e in (2, 3, 4)
    }, again.stderr
    assert json.loads((killed / "result.json").read_text()) == json.loads(
        (whole / "result.json").read_text()
    )
    a, b = (torch.load(d / "stage1.pt", weights_only=True) for d in (whole, killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a complete run leaves no checkpoints behind
    assert not (killed / STAGE1_CHECKPOINTS).exists()


def test_a_cache_build_continues_from_the_partial_checkpoints_and_removes_them(tmp_path, capfd):
    cfg = apply_overrides(resolve("image_mnist_lt", smoke=True), ["stage1.epochs=1"])
    storage = Storage(str(tmp_path))
    key = stage1_key(cfg)
    # what a build killed after its last epoch, before the entry was written, leaves behind
    store = checkpoint_store(storage, partial_rel(key))
    out = build_stage1(cfg, device=torch.device("cpu"), checkpoints=Stage1Checkpoints(store, key))
    assert storage.list_files(partial_rel(key)) == ["stage1-epoch-0001.ckpt"]
    capfd.readouterr()
    # the killed build's MLflow run, left RUNNING by its process
    uri = tracking.default_tracking_uri(tmp_path)
    spec = tracking.TrackingSpec(uri, tracking.ensure_experiment(uri, "e", None))
    c = tracking.client(uri)
    tags = {names.KIND: "stage1_build", names.STAGE1_HASH: key}
    dead = c.create_run(spec.experiment_id, tags=tags).info.run_id
    entry = build_entry(cfg, storage.uri, spec, device=torch.device("cpu"))
    assert "stage 1: resuming from epoch 1 of 1" in capfd.readouterr().err
    runs = {r.info.run_id: r for r in tracking.runs_with_tags(c, spec.experiment_id, tags)}
    assert runs.pop(dead).info.status == "KILLED"  # closed as interrupted by the resume
    assert c.get_run(dead).data.tags[names.INTERRUPTED] == "true"
    assert [r.info.status for r in runs.values()] == ["FINISHED"]  # the resumed build's
    assert not storage.exists(partial_rel(key))
    cached = read_entry(entry.uri, features=False)
    assert all(torch.equal(v, cached.model_state[k]) for k, v in out.model_state.items())
    assert cached.info == out.info
