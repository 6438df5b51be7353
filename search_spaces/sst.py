"""Stage-2 search space for Table 5 (SST-2 / SST-5, ``text_sst2``, ``text_sst5``).

Stage 2 trains the FCN with the OT weight net on cached BERT features: alpha is the FCN's step
size and beta the weight net's. Appendix C (the paper's text settings) is not in our copy, so
``best()`` holds the experiment's own values; lambda 0.1 and 200 iterations are the paper's.
"""

from __future__ import annotations

from ._space import Stage2Ranges, SuggestTrial, suggest_stage2

__all__ = ["RANGES", "best", "space"]

RANGES = Stage2Ranges(
    lr=(1e-4, 0.3),
    weight_lr=(1e-4, 1.0),
    eps=(0.01, 1.0),
    max_iter=(20, 300, 10),
    tol=(None, 1e-4, 1e-3, 1e-2),
    feature_weight=(0.1, 10.0),
)


def space(trial: SuggestTrial) -> None:
    """Define-by-run space for Optuna: only ``trial.suggest_*`` calls, dotted config keys."""
    suggest_stage2(trial, RANGES)


def best() -> dict[str, object]:
    """The text experiments' stage-2 values (experiments.py): alpha 0.01, beta 0.01, lambda 0.1,
    the paper's 200 Sinkhorn iterations, no early stop, equal feature and label cost."""
    return {
        "stage2.lr": 0.01,
        "stage2.weight_lr": 0.01,
        "stage2.eps": 0.1,
        "stage2.max_iter": 200,
        "stage2.tol": None,
        "stage2.feature_weight": 1.0,
    }
