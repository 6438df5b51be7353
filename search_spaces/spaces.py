"""The search spaces, one typed entry each: what a sweep samples and where it starts.

A :class:`Space` is an Optuna define-by-run space over dotted config keys (``space(trial)``:
only ``trial.suggest_*`` calls), the setting enqueued as the first trial (``best(cfg)``), the
experiments it fits (``check(cfg)``) and whether it samples stage-1 keys (then every trial
builds its own stage 1). :data:`SEARCH_SPACES` holds them by the name ``sweep --space`` takes;
:data:`EXPERIMENT_SPACES` gives each experiment its own.

The stage-2 spaces differ only in their ranges (:class:`Stage2Ranges`): the paper's image
protocol (Tables 1, 3, 4 and ModelNet10 share one setting), the offline experiments (MNIST-LT
and the synthetic shapes: classifier-only stage 2 of 10 epochs, larger steps) and text
(Table 5 and the tweets: the FCN with the OT weight net).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from trainables.config import ExperimentConfig

__all__ = [
    "EXPERIMENT_SPACES",
    "SEARCH_SPACES",
    "Space",
    "Stage2Ranges",
    "SuggestTrial",
]


class SuggestTrial(Protocol):
    """The part of ``optuna.trial.Trial`` a define-by-run space may touch."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = ..., log: bool = ...
    ) -> float: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = ..., log: bool = ...
    ) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Stage2Ranges:
    """Bounds of the stage-2 knobs a space searches.

    lr (alpha), weight_lr (beta), eps (lambda), feature_weight: ``(low, high)`` on a log scale.
    max_iter: ``(low, high, step)`` Sinkhorn iteration cap. tol: the Sinkhorn tolerances to try,
    ``None`` meaning "no early stop" (run all ``max_iter`` iterations). feature_weight is the
    weight of the feature cost in the combined cost; label_weight stays at 1.0.
    """

    lr: tuple[float, float]
    weight_lr: tuple[float, float]
    # every stage-2 space searches these the same way (around lambda 0.1, 200 iterations, 1:1)
    eps: tuple[float, float] = (0.01, 1.0)
    max_iter: tuple[int, int, int] = (20, 300, 10)
    tol: tuple[float | None, ...] = (None, 1e-4, 1e-3, 1e-2)
    feature_weight: tuple[float, float] = (0.1, 10.0)

    def suggest(self, trial: SuggestTrial) -> None:
        trial.suggest_float("stage2.lr", *self.lr, log=True)
        trial.suggest_float("stage2.weight_lr", *self.weight_lr, log=True)
        trial.suggest_float("stage2.eps", *self.eps, log=True)
        low, high, step = self.max_iter
        trial.suggest_int("stage2.max_iter", low, high, step=step)
        trial.suggest_categorical("stage2.tol", list(self.tol))
        trial.suggest_float("stage2.feature_weight", *self.feature_weight, log=True)


def _fits_any(cfg: ExperimentConfig) -> str | None:
    return None


@dataclass(frozen=True)
class Space:
    """One search space (see the module doc).

    name: what ``sweep --space`` takes. about: what it searches and for which experiments
    (shown by ``sweep --help`` and recorded on the sweep's MLflow run). suggest: the
    define-by-run body. first: the setting enqueued first, from the experiment's config.
    unfit: why an experiment cannot use the space (None when it can). stage1: the space
    samples stage-1 keys, so each trial builds (and caches) its own stage 1.
    """

    name: str
    about: str
    suggest: Callable[[SuggestTrial], None]
    first: Callable[[ExperimentConfig], dict[str, object]]
    unfit: Callable[[ExperimentConfig], str | None] = _fits_any
    stage1: bool = False

    def space(self, trial: SuggestTrial) -> None:
        """Optuna define-by-run: only ``trial.suggest_*`` calls, dotted config keys."""
        self.suggest(trial)

    def best(self, cfg: ExperimentConfig) -> dict[str, object]:
        """The first setting a sweep of ``cfg`` asks (enqueued before the sampler's)."""
        return self.first(cfg)

    def check(self, cfg: ExperimentConfig) -> None:
        """ValueError (one line) when ``cfg``'s experiment cannot use this space."""
        reason = self.unfit(cfg)
        if reason:
            raise ValueError(f"--space {self.name}: {reason}")


# -- the stage-2 spaces ---------------------------------------------------------------------

# Step sizes span a few decades around the paper's alpha 2e-5 and beta 1e-3.
PAPER_RANGES = Stage2Ranges(lr=(1e-6, 1e-2), weight_lr=(1e-4, 10.0))
# Classifier-only stage 2 of 10 epochs: step sizes far larger than the paper's (alpha 0.05,
# beta 5.0); the ranges span those values.
OFFLINE_RANGES = Stage2Ranges(lr=(1e-3, 0.5), weight_lr=(0.05, 50.0))
# alpha is the FCN's step size and beta the weight net's, on cached sentence features.
TEXT_RANGES = Stage2Ranges(lr=(1e-4, 0.3), weight_lr=(1e-4, 1.0))


def _stage2_first(lr: float, weight_lr: float, max_iter: int) -> dict[str, object]:
    """A published stage-2 setting: lambda 0.1, no Sinkhorn early stop, 1:1 costs."""
    return {
        "stage2.lr": lr,
        "stage2.weight_lr": weight_lr,
        "stage2.eps": 0.1,
        "stage2.max_iter": max_iter,
        "stage2.tol": None,
        "stage2.feature_weight": 1.0,
    }


def _paper_first(cfg: ExperimentConfig) -> dict[str, object]:
    """Paper Sec. 6: alpha 2e-5, beta 1e-3, 200 Sinkhorn iterations."""
    return _stage2_first(2e-5, 1e-3, 200)


def _offline_first(cfg: ExperimentConfig) -> dict[str, object]:
    """The offline experiments' own values (experiments.py): alpha 0.05, beta 5.0, 100
    Sinkhorn iterations."""
    return _stage2_first(0.05, 5.0, 100)


def _text_first(cfg: ExperimentConfig) -> dict[str, object]:
    """The text experiments' values (experiments.py; Appendix C is not in our copy): alpha
    0.01, beta 0.01, the paper's 200 iterations."""
    return _stage2_first(0.01, 0.01, 200)


# -- the spaces of other knobs --------------------------------------------------------------


def _meta_reweight(trial: SuggestTrial) -> None:
    trial.suggest_float("stage1.meta_lr", 1e-6, 1e-2, log=True)
    trial.suggest_categorical("stage1.meta_batch", [50, 100, 200])


def _meta_reweight_first(cfg: ExperimentConfig) -> dict[str, object]:
    """Meta-Weight-Net's published CIFAR-LT recipe."""
    return {"stage1.meta_lr": 1e-5, "stage1.meta_batch": 100}


WEIGHT_LR = (1e-4, 1e2)  # ot_learn's weight step size, log-uniform


def _ot_learn(trial: SuggestTrial) -> None:
    trial.suggest_categorical("stage2.weight_param", ["sample", "class", "class_residual"])
    trial.suggest_categorical("stage2.weight_optimizer", ["sgd", "adam"])
    trial.suggest_float("stage2.weight_lr", *WEIGHT_LR, log=True)
    trial.suggest_categorical("stage2.weight_normalize", [False, True])


def _ot_learn_first(cfg: ExperimentConfig) -> dict[str, object]:
    """The experiment's own way: per-sample logits, SGD, its own step size, no normalisation."""
    return {
        "stage2.weight_param": "sample",
        "stage2.weight_optimizer": "sgd",
        "stage2.weight_lr": cfg.stage2.weight_lr,
        "stage2.weight_normalize": False,
    }


def _ot_learn_unfit(cfg: ExperimentConfig) -> str | None:
    """OT with a weight vector only: text learns its weights with the weight net, which has no
    parametrisation."""
    if cfg.stage2.method != "ot" or cfg.stage2.weights != "vector":
        return (
            f"it samples how a weight vector learns; {cfg.name} has "
            f"stage2.method={cfg.stage2.method}, stage2.weights={cfg.stage2.weights}"
        )
    return None


SEARCH_SPACES: dict[str, Space] = {
    s.name: s
    for s in (
        Space(
            "paper",
            "stage 2 around the paper's setting (Tables 1, 3, 4, ModelNet10): alpha, beta, "
            "lambda, Sinkhorn cap and tolerance, cost mixing",
            PAPER_RANGES.suggest,
            _paper_first,
        ),
        Space(
            "offline",
            "stage 2 of the offline experiments (MNIST-LT, synthetic shapes: classifier only, "
            "10 epochs, larger steps)",
            OFFLINE_RANGES.suggest,
            _offline_first,
        ),
        Space(
            "text",
            "stage 2 of the text experiments (Table 5, tweets: the FCN's and the weight net's "
            "steps, lambda, Sinkhorn, cost mixing)",
            TEXT_RANGES.suggest,
            _text_first,
        ),
        Space(
            "meta_reweight",
            "stage 1 of L2RW / Meta-Weight-Net (with --set stage1.reweight=mwn or l2rw): the "
            "weight net's step and the meta batch",
            _meta_reweight,
            _meta_reweight_first,
            stage1=True,
        ),
        Space(
            "ot_learn",
            "how the OT weight vector learns: parametrisation, optimiser, step size, normalisation",
            _ot_learn,
            _ot_learn_first,
            unfit=_ot_learn_unfit,
        ),
    )
}

# Each experiment's own space (``sweep NAME`` without ``--space``).
EXPERIMENT_SPACES: dict[str, str] = {
    "image_cifar10_lt": "paper",
    "image_cifar100_lt": "paper",
    "image_imagenet_lt": "paper",
    "image_places_lt": "paper",
    "pointcloud_modelnet10": "paper",
    "image_mnist_lt": "offline",
    "pointcloud_shapes": "offline",
    "text_sst2": "text",
    "text_sst5": "text",
    "text_tweets": "text",
}
