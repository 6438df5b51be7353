"""Shared by the tests that start a server in a subprocess (MLflow UI, MLflow server)."""

from __future__ import annotations

import subprocess
import time
import urllib.request


def wait_healthy(base: str, proc: subprocess.Popen, *, what: str, timeout_s: float = 120) -> None:
    """Poll ``base/health`` until it answers "OK"; fail with the server's output if it exits,
    or when ``timeout_s`` passes."""
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.read().decode().strip() == "OK":
                    return
        except OSError:
            pass
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else what
        assert time.time() < deadline, f"{what} did not come up"
        time.sleep(0.5)
