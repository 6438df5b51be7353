"""Shared by the bench scripts: mean / std over seeds and the JSON written under bench/results/."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

__all__ = ["mean_std", "save_cpu_result"]


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
