"""Stage-2 search space for the offline image table (``offline_image``: MNIST-LT).

The offline analogue of Table 1, used by ``image_mnist_lt``. Stage 2 there trains the
classifier alone for 10 epochs, so its step sizes are far larger than the paper's (alpha 0.05,
beta 5.0, 100 Sinkhorn iterations); the ranges span those values.
"""

from __future__ import annotations

from ._space import Stage2Ranges, SuggestTrial, suggest_stage2

__all__ = ["RANGES", "best", "space"]

RANGES = Stage2Ranges(
    lr=(1e-3, 0.5),
    weight_lr=(0.05, 50.0),
    eps=(0.01, 1.0),
    max_iter=(20, 300, 10),
    tol=(None, 1e-4, 1e-3, 1e-2),
    feature_weight=(0.1, 10.0),
)


def space(trial: SuggestTrial) -> None:
    """Define-by-run space for Optuna: only ``trial.suggest_*`` calls, dotted config keys."""
    suggest_stage2(trial, RANGES)


def best() -> dict[str, object]:
    """image_mnist_lt's own stage-2 values (experiments.py): alpha 0.05, beta 5.0, lambda 0.1,
    100 Sinkhorn iterations without early stop, equal feature and label cost."""
    return {
        "stage2.lr": 0.05,
        "stage2.weight_lr": 5.0,
        "stage2.eps": 0.1,
        "stage2.max_iter": 100,
        "stage2.tol": None,
        "stage2.feature_weight": 1.0,
    }
