"""Stage-2 search space for Table 1 (CIFAR-LT-10 / CIFAR-LT-100, ResNet-32).

Used by ``image_cifar10_lt`` and ``image_cifar100_lt``. Step sizes span a few decades around the
paper's alpha 2e-5 and beta 1e-3; lambda, the Sinkhorn budget and the cost mixing around 0.1,
200 iterations and 1:1.
"""

from __future__ import annotations

from ._space import Stage2Ranges, SuggestTrial, suggest_stage2

__all__ = ["RANGES", "best", "space"]

RANGES = Stage2Ranges(
    lr=(1e-6, 1e-2),
    weight_lr=(1e-4, 10.0),
    eps=(0.01, 1.0),
    max_iter=(20, 300, 10),
    tol=(None, 1e-4, 1e-3, 1e-2),
    feature_weight=(0.1, 10.0),
)


def space(trial: SuggestTrial) -> None:
    """Define-by-run space for Optuna: only ``trial.suggest_*`` calls, dotted config keys."""
    suggest_stage2(trial, RANGES)


def best() -> dict[str, object]:
    """The published settings (paper Sec. 6): alpha 2e-5, beta 1e-3, lambda 0.1, 200 Sinkhorn
    iterations without early stop, equal feature and label cost; the sweep's first trial."""
    return {
        "stage2.lr": 2e-5,
        "stage2.weight_lr": 1e-3,
        "stage2.eps": 0.1,
        "stage2.max_iter": 200,
        "stage2.tol": None,
        "stage2.feature_weight": 1.0,
    }
