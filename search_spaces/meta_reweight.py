"""Search space for the meta-learning re-weighting baselines of Table 1 (L2RW, Meta-Weight-Net),
for ``sweep NAME --space meta_reweight --set stage1.reweight=mwn`` (or l2rw).

These methods live in stage 1, so every trial trains its own stage 1 (cached by content hash).
Sampled: the weight net's step size (MWN; published 1e-5) and the meta batch (100) that scores
the look-ahead. L2RW's look-ahead uses the model's own learning rate, as published, so for it
only the meta batch matters.
"""

from __future__ import annotations

from ._space import SuggestTrial

__all__ = ["STAGE1", "best", "space"]

STAGE1 = True  # the space samples stage-1 keys: trials build their own stage 1


def space(trial: SuggestTrial) -> None:
    """Define-by-run space for Optuna: only ``trial.suggest_*`` calls, dotted config keys."""
    trial.suggest_float("stage1.meta_lr", 1e-6, 1e-2, log=True)
    trial.suggest_categorical("stage1.meta_batch", [50, 100, 200])


def best() -> dict[str, object]:
    """The published settings (Meta-Weight-Net's CIFAR-LT recipe)."""
    return {"stage1.meta_lr": 1e-5, "stage1.meta_batch": 100}
