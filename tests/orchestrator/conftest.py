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
