"""The best setting's control (``stage2.learn_weights=false``) and its re-run alone, as a
sweep's Ray tasks: stage 2 of a config from the cached stage 1, untracked (the driver logs
what they return). Its process loads torch, the stages and the stage-1 cache, and neither
MLflow, Tune, Ray Train nor matplotlib: those took half of each such task's start (a
contract of ``lint-imports`` keeps it so)."""

from __future__ import annotations

import torch

from trainables.config import ExperimentConfig
from trainables.trial import needs_features, pick_device, run_stage2

from .stage_cache import read_entry

__all__ = ["control_run"]


def control_run(cfg: ExperimentConfig, entry_uri: str, threads: int = 1) -> dict:
    """Stage 2 of ``cfg`` from the cached stage 1 at ``entry_uri``: its validation-selected
    balanced accuracies and epoch (counted from 1)."""
    torch.set_num_threads(max(1, threads))
    stage1 = read_entry(entry_uri, features=needs_features(cfg))
    res, _ = run_stage2(cfg, stage1, device=pick_device())
    sel = res.selected
    return {
        "val": sel["val"]["balanced_acc"],
        "test": sel["test"]["balanced_acc"],
        "epoch": sel["epoch"] + 1,
    }
