"""``stage1.threads``: the CPU threads stage 1 is built on, the same in ``run`` and in a sweep's
(or reproduce's) Ray task, part of the stage-1 key, the Ray request capped at what a node has."""

from __future__ import annotations

import types

import pytest
import torch

from orchestrator import run, stages, sweep
from orchestrator.stage_cache import stage1_hash
from orchestrator.stages import ensure_stage1, stage1_cpus
from orchestrator.storage import Storage
from search_spaces import resolve
from trainables import trial
from trainables.config import apply_overrides


class _Seen(Exception):
    """Raised by the spy once stage 1 starts training: what it saw is all a test needs."""


@pytest.fixture
def threads_seen(monkeypatch):
    """The thread counts ``train_stage1`` ran on; it stops the build right there."""
    seen = []

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise _Seen

    monkeypatch.setattr(trial, "train_stage1", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # unlike any value a test sets
    yield seen
    torch.set_num_threads(before)


def _cfg(*overrides: str):
    return apply_overrides(resolve("image_mnist_lt", smoke=True), list(overrides))


def test_the_thread_count_is_part_of_the_stage1_key():
    cfg = _cfg()
    assert cfg.stage1.threads == 2  # fixed, not this machine's CPUs
    keys = {stage1_hash(_cfg(f"stage1.threads={n}")) for n in (1, 2, 3)}
    assert len(keys) == 3 and stage1_hash(cfg) in keys


def test_run_builds_stage1_on_the_configured_threads(threads_seen):
    with pytest.raises(_Seen):
        run.main(["image_mnist_lt", "--smoke", "--quiet", "--set", "stage1.threads=3"])
    assert threads_seen == [3]
    assert torch.get_num_threads() == 1  # the command's own count again after stage 1


def _fake_ray(requests: list) -> types.ModuleType:
    """Ray's remote/get as ensure_stage1 calls them, running the task here and noting the CPUs
    it asked for."""

    def remote(*, num_cpus, num_gpus, max_retries):
        def wrap(fn):
            requests.append(num_cpus)
            return types.SimpleNamespace(remote=fn)

        return wrap

    return types.SimpleNamespace(remote=remote, get=lambda value: value)


@pytest.mark.parametrize("threads, node_cpus, asked", [(3, 8, 3.0), (3, 2, 2.0), (1, 2, 1.0)])
def test_a_sweep_builds_stage1_on_the_configured_threads_and_asks_ray_for_them(
    tmp_path, monkeypatch, threads_seen, threads, node_cpus, asked
):
    """ensure_stage1 (sweep and reproduce): the Ray task asks for stage1.threads CPUs, at most
    a node's; the build runs on stage1.threads threads either way (a node with fewer CPUs
    shares them: capping the threads would change the stage 1 the key names)."""
    requests, lines = [], []
    monkeypatch.setattr(stages, "ray", _fake_ray(requests))
    cfg = _cfg(f"stage1.threads={threads}")
    with pytest.raises(_Seen):
        ensure_stage1(cfg, Storage(str(tmp_path)), None, max_cpus=node_cpus, log=lines.append)
    assert requests == [asked] and threads_seen == [threads]
    assert any("they share them" in line for line in lines) == (asked < threads)


def test_data_parallel_workers_each_run_the_threads_within_a_node():
    cfg = _cfg("stage1.threads=4", "stage1.workers=2")
    assert stage1_cpus(cfg, 16) == 4.0 and stage1_cpus(cfg, 4) == 2.0


def test_the_features_added_to_an_entry_are_computed_on_stage1s_threads(monkeypatch):
    seen = []

    def spy(model, data):
        seen.append(torch.get_num_threads())
        raise _Seen

    monkeypatch.setattr(trial, "frozen_feature_data", spy)
    monkeypatch.setattr(trial, "data_and_model", lambda *a, **k: (None, torch.nn.Identity()))
    stage1 = trial.Stage1Output(model_state={}, rng={}, info={}, features=None)
    before = torch.get_num_threads()
    with pytest.raises(_Seen):
        trial.add_features(_cfg("stage1.threads=3"), stage1, torch.device("cpu"))
    assert seen == [3] and torch.get_num_threads() == before


@pytest.mark.parametrize("main", [run.main, sweep.main], ids=["run", "sweep"])
@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_a_bad_thread_count_stops_the_command_in_one_line(capsys, main, value):
    code = main(["image_mnist_lt", "--smoke", "--print-config", "--set", f"stage1.threads={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: bad value for stage1.threads:"), err
