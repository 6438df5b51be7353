"""Fixtures of the command tests: a sweep in a fresh interpreter, on a given run storage."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sweep(command):
    """``sweep(storage, *args, env=..., timeout=...)``: ``python -m orchestrator.sweep``."""

    def run(storage, *args: str, **kw):
        return command("sweep", *args, "--storage", str(storage), **kw)

    return run


@pytest.fixture(scope="session")
def smoke(sweep):
    """``smoke(storage, *args)``: the smoke sweep of image_mnist_lt, quietly."""

    def run(storage, *args: str, **kw):
        return sweep(storage, "image_mnist_lt", "--smoke", "--quiet", *args, **kw)

    return run


@pytest.fixture
def in_process(capsys):
    """``in_process(module, *argv) -> (status, stderr)``: ``python -m orchestrator.<module>``'s
    ``main`` called in this interpreter, for failures that stop before Ray starts (a fresh
    interpreter per case spends seconds importing Ray and torch); the environment the command
    changes is restored after."""
    import importlib
    import os

    def run(module: str, *argv: str) -> tuple[int, str]:
        main = importlib.import_module(f"orchestrator.{module}").main
        saved = dict(os.environ)
        try:
            status = main(list(argv))
        except SystemExit as stop:  # argparse's usage errors
            status = stop.code
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return status, capsys.readouterr().err

    return run


@pytest.fixture
def sweep_context(tmp_path):
    """``(context, client)``: a sweep's shared trial context over a fresh SQLite store in
    ``tmp_path`` (experiment, parent run, the image_mnist_lt config), as trials receive it."""
    from orchestrator import tracking
    from orchestrator.trainable import SweepContext
    from search_spaces import resolve

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "sweep", str(tmp_path / "artifacts"))
    c = tracking.client(uri)
    parent = c.create_run(exp, run_name="sweep").info.run_id
    cfg = resolve("image_mnist_lt")
    return SweepContext(cfg, "", "key", tracking.TrackingSpec(uri, exp), parent, "sweep-1"), c


@pytest.fixture
def tracker(sweep_context):
    """``(tracker, client)``: trial ``t0``'s tracker in :func:`sweep_context`."""
    from orchestrator.trainable import TrialTracker

    ctx, c = sweep_context
    return TrialTracker(ctx, ctx.base, "t0", "trial_0"), c


def _stage_result(epoch: int):
    """(StageResult, StageData): a 2-class selection at ``epoch`` (from 0) with its weight
    mass over the epochs and per-sample weights, on 4 training samples (3 of class 0)."""
    import torch

    from trainables.data.arrays import StageData, TensorSplit
    from trainables.loop import StageResult

    split = TensorSplit(torch.zeros(4, 2), torch.tensor([0, 0, 0, 1]))
    data = StageData(split, split, split, split, 2, train_counts=(3, 1), source="features")
    sel = {
        "epoch": epoch,
        "val": {"balanced_acc": 60.0 + epoch},
        "test": {"balanced_acc": 50.0, "confusion": [[3, 0], [1, 0]], "per_class_acc": [1.0, 0.0]},
    }
    res = StageResult(last=sel, selected=sel, best_test_epoch=sel)
    res.weight_mass = [[0.5, 0.5]] * (epoch + 1)
    res.sample_weights = [0.25] * 4
    return res, data


@pytest.fixture
def stage_result():
    """:func:`_stage_result`: ``stage_result(epoch) -> (StageResult, StageData)``."""
    return _stage_result


@pytest.fixture
def sweep_trial(sweep_context):
    """``sweep_trial(i, val, draw=False, close="finish")``: trial ``t<i>`` of
    :func:`sweep_context` with one epoch at validation ``val`` and its selection uploaded
    (figures drawn at close only with ``draw``), then finished, failed (``"fail"``) or left
    open (``"open"``)."""
    import dataclasses

    from orchestrator.trainable import TrialTracker
    from trainables.trial import scalar_summary

    ctx, _c = sweep_context

    def make(i: int, val: float, *, draw: bool = False, close: str = "finish"):
        t = TrialTracker(dataclasses.replace(ctx, draw=draw), ctx.base, f"t{i}", f"trial_{i}")
        t.start({"stage2.eps": 0.1 * (i + 1)})
        t.epoch({"val_balanced_acc": val, "test_balanced_acc": val - 5}, 0)
        res, data = _stage_result(0)
        t.upload_selected(res, data)
        if close == "finish":
            t.finish(scalar_summary(res))
        elif close == "fail":
            t.fail(RuntimeError("worker lost"))
        return t

    return make
