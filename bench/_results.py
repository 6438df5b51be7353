"""Shared by the bench scripts: mean / std over seeds and the JSON written under bench/results/."""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["mean_std", "placed_sides", "save_cpu_result", "short_commit", "worktree"]

ROOT = Path(__file__).resolve().parents[1]


def mean_std(rows: dict, keys) -> tuple[dict, dict]:
    """Per key: mean and sample std over the seeds' rows (std 0 for a single seed)."""
    mean = {k: statistics.mean(r[k] for r in rows.values()) for k in keys}
    sd = {
        k: statistics.stdev([r[k] for r in rows.values()]) if len(rows) > 1 else 0.0 for k in keys
    }
    return mean, sd


def save_cpu_result(out: Path, payload: dict, start: float, device: str = "cpu") -> None:
    """``payload`` plus the torch version, device, threads and wall time, as JSON at ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if device.startswith("cuda"):
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    record = {
        **payload,
        "torch": torch.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        "wall_s": round(time.time() - start, 1),
    }
    out.write_text(json.dumps(record, indent=1))


def short_commit(ref: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


@contextlib.contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """A git worktree of ``commit`` in a temporary folder (named ``before-<commit>``), with
    this checkout's ``.venv`` linked in; removed on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / f"before-{short_commit(commit)}"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT,
                       check=True, capture_output=True)  # fmt: skip
        (tree / ".venv").symlink_to(ROOT / ".venv")
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           check=False)  # fmt: skip


def placed_sides(stack: contextlib.ExitStack, old: str | None) -> dict[str, Path]:
    """``{"after": this checkout}``, or with ``old`` ``{"before": .., "after": ..}`` as git
    worktrees of ``old`` and HEAD, removed when ``stack`` closes. Both sides are worktrees: the
    same code runs slower there than in this checkout (a sweep's P=1 trials 61.5 s against
    35.4 s, cause not found), so each side must be placed alike."""
    if not old:
        return {"after": ROOT}
    return {"before": stack.enter_context(worktree(old)),
            "after": stack.enter_context(worktree("HEAD"))}  # fmt: skip
