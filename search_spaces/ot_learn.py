"""Search space for whether and how the OT weights learn: ``sweep NAME --space ot_learn``.

Under the paper's step sizes the learned weights hardly move (see ``bench/README.md``). This
space samples what carries them, on top of the experiment's other settings: the
parametrisation (one logit per sample as in the paper, one per class, or per class plus a
per-sample residual), the optimiser of the weight step (SGD or Adam), its step size on a log
scale wide enough to move the weights, and whether the step is normalised (a unit gradient, so
the step size alone sets how far the weights move).
"""

from __future__ import annotations

from trainables.config import ExperimentConfig

from ._space import SuggestTrial

__all__ = ["WEIGHT_LR", "best", "check", "space"]

WEIGHT_LR = (1e-4, 1e2)  # log-uniform


def space(trial: SuggestTrial) -> None:
    """Define-by-run space for Optuna: only ``trial.suggest_*`` calls, dotted config keys."""
    trial.suggest_categorical("stage2.weight_param", ["sample", "class", "class_residual"])
    trial.suggest_categorical("stage2.weight_optimizer", ["sgd", "adam"])
    trial.suggest_float("stage2.weight_lr", *WEIGHT_LR, log=True)
    trial.suggest_categorical("stage2.weight_normalize", [False, True])


def check(cfg: ExperimentConfig) -> None:
    """The experiments this space fits: OT with a weight vector (image and point-cloud
    experiments; text learns its weights with the weight net, which has no parametrisation)."""
    if cfg.stage2.method != "ot" or cfg.stage2.weights != "vector":
        raise ValueError(
            f"--space ot_learn samples how a weight vector learns; {cfg.name} has "
            f"stage2.method={cfg.stage2.method}, stage2.weights={cfg.stage2.weights}"
        )


def best(cfg: ExperimentConfig | None = None) -> dict[str, object]:
    """The experiment's own way (enqueued first): per-sample logits, SGD, its own step size
    (the paper's 1e-3 without a config), no normalisation."""
    return {
        "stage2.weight_param": "sample",
        "stage2.weight_optimizer": "sgd",
        "stage2.weight_lr": cfg.stage2.weight_lr if cfg is not None else 1e-3,
        "stage2.weight_normalize": False,
    }
