"""The data behind the report's figures: Fig. 1 (learned weights of one 10..1 batch under each
transport cost, from a trained stage-1 model) and Fig. 2 (test confusion matrices of a run)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from trainables.config import ExperimentConfig
from trainables.reweight import COSTS, StepConfig, class_prototypes, fit_batch_weights
from trainables.trial import data_and_model

from . import names, tracking
from .stage_cache import read_entry

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__all__ = ["fig1_batch_indices", "fig1_masses", "run_confusion"]


def fig1_batch_indices(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """A batch of 10, 9, ... samples of classes 0, 1, ... (at most 10 classes; the paper's
    55-sample batch on 10 classes), drawn from ``labels`` with a seeded permutation."""
    rng = np.random.default_rng([seed, 55])
    out = []
    for c in range(min(10, num_classes)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        want = 10 - c
        if idx.size < want:
            raise ValueError(f"Fig. 1 needs {want} training samples of class {c}, has {idx.size}")
        out.append(idx[:want])
    return np.concatenate(out)


@torch.no_grad()
def _features(model, data, split, idx: np.ndarray) -> torch.Tensor:
    model.eval()
    x = data.prepare(split.x[torch.as_tensor(idx)], augment=False, generator=None)
    return model.features(x).double()


def fig1_masses(cfg: ExperimentConfig, entry_uri: str, steps: int = 300) -> dict:
    """Per-class mass of the OT weights learned on the Fig. 1 batch for each cost, with the
    stage-1 model's features and Q the meta set's class prototypes (``fit_batch_weights``)."""

    torch.manual_seed(cfg.seed)
    stage1 = read_entry(entry_uri, features=False)
    data, model = data_and_model(cfg, torch.device("cpu"), load_pretrained=False)
    model.load_state_dict(stage1.model_state)
    k = data.num_classes
    idx = fig1_batch_indices(data.train.y.numpy(), k, cfg.seed)
    z = _features(model, data, data.train, idx)
    y = data.train.y[torch.as_tensor(idx)]
    z_meta = _features(model, data, data.meta, np.arange(len(data.meta)))
    q = class_prototypes(z_meta, data.meta.y, k)
    shown = min(10, k)
    out = {"classes": list(range(shown)), "counts": [10 - c for c in range(shown)], "mass": {}}
    for cost in COSTS:
        step = StepConfig(cost=cost, eps=cfg.stage2.eps, max_iter=cfg.stage2.max_iter)
        w = fit_batch_weights(z, y, q, k, step, steps=steps)
        mass = torch.zeros(k, dtype=w.dtype).index_add(0, y, w)[:shown]
        out["mass"][cost] = [float(v) for v in mass]
    out["experiment"], out["seed"] = cfg.name, cfg.seed
    return out


def run_confusion(c, exp_id: str, table: str, cell: str, seed: int) -> dict | None:
    """The test confusion matrix (validation-selected) of the latest finished run of a cell and
    seed, with its training counts; None when there is none."""
    runs = tracking.all_runs_with_tags(
        c, exp_id, {names.TABLE: table, names.CELL: cell, names.SEED: str(seed)}
    )
    runs = [r for r in runs if r.info.status == "FINISHED"]
    if not runs:
        return None
    run = max(runs, key=lambda r: r.info.end_time or 0)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = c.download_artifacts(run.info.run_id, "confusion.json", tmp)
        except Exception:  # an older run without the artifact
            return None
        return json.loads(Path(path).read_text())
