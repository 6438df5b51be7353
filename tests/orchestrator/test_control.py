"""The sweep's control task: what its fresh Ray worker loads."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("mlflow", "ray.tune", "ray.train", "matplotlib", "optuna")


def test_the_control_task_loads_neither_mlflow_tune_ray_train_nor_matplotlib(repo):
    """A Ray worker has imported Ray; what the control's function pulls in on top is what its
    task waits for. Tracking, Tune, Ray Train and the figures are the driver's (half the
    start of a worker that imported the trial's module)."""
    code = (
        "import sys, ray, ray._private.worker\n"
        "from orchestrator.control import control_run\n"
        f"print(*[m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [], res.stdout
    # each name is one sys.modules knows once imported (else the test would pass vacuously)
    code = code.replace(
        "from orchestrator.control import control_run", f"import {', '.join(HEAVY)}"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert res.stdout.split() == list(HEAVY), res.stdout + res.stderr
