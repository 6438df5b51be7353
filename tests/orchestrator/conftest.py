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
