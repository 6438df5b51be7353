"""One full two-stage trial of a registered experiment, runnable without Ray."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from search_spaces.config import ExperimentConfig, to_dict
from trainables.image import build_image_data, build_image_model
from trainables.loop import Callback, StageResult, train_stage1, train_stage2

__all__ = ["pick_device", "run_trial", "scalar_summary"]


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _scalars(block: dict) -> dict:
    out = {}
    for key, value in block.items():
        if key == "epoch":
            out[key] = value
        elif isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if isinstance(v, float) or v is None}
    return out


def scalar_summary(res: StageResult) -> dict:
    """The printed part of a stage's result: scalar metrics only, three selections labelled."""
    return {
        "last_epoch": _scalars(res.last),
        "validation_selected": _scalars(res.selected),
        "best_test_epoch (selection on test, as the released code reports)": _scalars(
            res.best_test_epoch
        ),
    }


def run_trial(
    cfg: ExperimentConfig,
    *,
    out_dir: Path | None = None,
    callback: Callback | None = None,
    device: torch.device | None = None,
) -> dict:
    """Stage 1 then stage 2; returns a JSON-ready dict and writes it (and the stage-1
    checkpoint) under ``out_dir`` when given. Every random choice is seeded from ``cfg.seed``."""
    device = device or pick_device()
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    data = build_image_data(cfg.data, cfg.seed).to(device)
    model = build_image_model(cfg.model, data).to(device)
    s1 = train_stage1(model, data, cfg.stage1, generator=generator, callback=callback)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out_dir / "stage1.pt")
    s2 = train_stage2(model, data, cfg.stage2, generator=generator, callback=callback)
    result = {
        "experiment": cfg.name,
        "data_source": data.source,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "train_counts": list(data.train_counts),
        "stage1": scalar_summary(s1),
        "stage2": scalar_summary(s2),
    }
    if out_dir is not None:
        full = {
            **result,
            "config": to_dict(cfg),
            "stage2_test_per_class_acc": s2.selected.get("test", {}).get("per_class_acc"),
            "stage2_test_confusion": s2.selected.get("test", {}).get("confusion"),
            "stage2_weight_mass": s2.weight_mass,
        }
        (out_dir / "result.json").write_text(json.dumps(full, indent=1))
    return result
