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

import math
from collections.abc import Callable, Mapping, Sequence
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


# ``Space.scaled``: searched log-uniformly within this factor either side of the published value
SCALE = 10.0


@dataclass(frozen=True)
class Space:
    """One search space (see the module doc).

    name: what ``sweep --space`` takes. about: what it searches and for which experiments
    (shown by ``sweep --help`` and recorded on the sweep's MLflow run). suggest: the
    define-by-run body over fixed ranges. first: the published setting, enqueued first, from the
    experiment's config. scaled: keys searched log-uniformly from 1/SCALE to SCALE times their
    published value (the learning rate and weight decay of the stage a method trains: their
    scale differs by experiment, so the range follows it). halved: whole-number keys searched
    from half their published value up to it (LDAM-DRW's re-weighting start). unfit: why an
    experiment cannot use the space (None when it can). stage1: the space samples stage-1
    keys, so each trial builds (and caches) its own stage 1.
    """

    name: str
    about: str
    suggest: Callable[[SuggestTrial], None]
    first: Callable[[ExperimentConfig], dict[str, object]]
    unfit: Callable[[ExperimentConfig], str | None] = _fits_any
    stage1: bool = False
    scaled: tuple[str, ...] = ()
    halved: tuple[str, ...] = ()

    def space(self, trial: SuggestTrial, around: Mapping[str, object]) -> None:
        """Optuna define-by-run: only ``trial.suggest_*`` calls, dotted config keys.
        ``around``: the published setting (:meth:`best`), which the scaled and halved ranges
        are placed around."""
        self.suggest(trial)
        for key in self.scaled:
            value = float(around[key])  # type: ignore[arg-type]
            if value <= 0:
                raise ValueError(f"--space {self.name}: {key}={value:g} cannot be scaled")
            trial.suggest_float(key, value / SCALE, value * SCALE, log=True)
        for key in self.halved:
            value = int(around[key])  # type: ignore[call-overload]
            trial.suggest_int(key, max(1, math.ceil(value / 2)), max(1, value))

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


def _stage2_first(
    cfg: ExperimentConfig, lr: float, weight_lr: float, max_iter: int
) -> dict[str, object]:
    """A published stage-2 setting: lambda 0.1, no Sinkhorn early stop, 1:1 costs, the
    experiment's own weight decay."""
    return {
        "stage2.lr": lr,
        "stage2.weight_lr": weight_lr,
        "stage2.eps": 0.1,
        "stage2.max_iter": max_iter,
        "stage2.tol": None,
        "stage2.feature_weight": 1.0,
        "stage2.weight_decay": cfg.stage2.weight_decay,
    }


def _paper_first(cfg: ExperimentConfig) -> dict[str, object]:
    """Paper Sec. 6: alpha 2e-5, beta 1e-3, 200 Sinkhorn iterations."""
    return _stage2_first(cfg, 2e-5, 1e-3, 200)


def _offline_first(cfg: ExperimentConfig) -> dict[str, object]:
    """The offline experiments' own values (experiments.py): alpha 0.05, beta 5.0, 100
    Sinkhorn iterations."""
    return _stage2_first(cfg, 0.05, 5.0, 100)


def _text_first(cfg: ExperimentConfig) -> dict[str, object]:
    """The text experiments' values (experiments.py; Appendix C is not in our copy): alpha
    0.01, beta 0.01, the paper's 200 iterations."""
    return _stage2_first(cfg, 0.01, 0.01, 200)


STAGE2_OPTIM = ("stage2.weight_decay",)  # alpha is in every stage-2 range already


# -- the baselines' spaces: each method's knobs and the optimiser of the stage it trains --------

STAGE1_OPTIM = ("stage1.lr", "stage1.weight_decay")


def _nothing(trial: SuggestTrial) -> None:
    """No knob of its own: the method is the trained stage's optimiser alone."""


def _stage1_optim(cfg: ExperimentConfig) -> dict[str, object]:
    return {"stage1.lr": cfg.stage1.lr, "stage1.weight_decay": cfg.stage1.weight_decay}


def _stage0_first(cfg: ExperimentConfig) -> dict[str, object]:
    return {"stage0.lr": cfg.stage0.lr, "stage0.weight_decay": cfg.stage0.weight_decay}


def _focal(trial: SuggestTrial) -> None:
    trial.suggest_float("stage1.focal_gamma", 0.0, 3.0)


def _focal_first(cfg: ExperimentConfig) -> dict[str, object]:
    """Focal loss as the LDAM-DRW repository runs it: gamma 1."""
    return {"stage1.focal_gamma": 1.0, **_stage1_optim(cfg)}


CB_BETAS = (0.9, 0.99, 0.999, 0.9999)  # Cui et al.'s grid


def _cb(trial: SuggestTrial) -> None:
    trial.suggest_categorical("stage1.cb_beta", list(CB_BETAS))


def _cb_first(cfg: ExperimentConfig) -> dict[str, object]:
    """Class-balanced weights at Cui et al.'s beta 0.9999."""
    return {"stage1.cb_beta": 0.9999, **_stage1_optim(cfg)}


def _cb_focal(trial: SuggestTrial) -> None:
    _cb(trial)
    _focal(trial)


def _cb_focal_first(cfg: ExperimentConfig) -> dict[str, object]:
    return {**_cb_first(cfg), **_focal_first(cfg)}


def _ldam(trial: SuggestTrial) -> None:
    trial.suggest_float("stage1.ldam_max_m", 0.1, 1.0, log=True)
    trial.suggest_float("stage1.ldam_s", 5.0, 50.0, log=True)


def _ldam_first(cfg: ExperimentConfig) -> dict[str, object]:
    """Cao et al.: the rarest class's margin 0.5, scale 30."""
    return {"stage1.ldam_max_m": 0.5, "stage1.ldam_s": 30.0, **_stage1_optim(cfg)}


def _ldam_drw_first(cfg: ExperimentConfig) -> dict[str, object]:
    """LDAM-DRW: re-weighting from the first lr milestone (the table's setting)."""
    return {**_ldam_first(cfg), "stage1.drw_epoch": cfg.stage1.drw_epoch}


def _la_tau(trial: SuggestTrial) -> None:
    trial.suggest_float("stage1.la_tau", 0.0, 2.5)


def _la_first(cfg: ExperimentConfig) -> dict[str, object]:
    """Menon et al.'s tau 1 on the CE stage 1 it adjusts."""
    return {"stage1.la_tau": 1.0, **_stage1_optim(cfg)}


def _meta_reweight(trial: SuggestTrial) -> None:
    trial.suggest_float("stage1.meta_lr", 1e-6, 1e-2, log=True)
    trial.suggest_categorical("stage1.meta_batch", [50, 100, 200])


def _meta_reweight_first(cfg: ExperimentConfig) -> dict[str, object]:
    """Meta-Weight-Net's published CIFAR-LT recipe (L2RW reads the meta batch only: its
    look-ahead step is the current learning rate, searched with the optimiser)."""
    return {"stage1.meta_lr": 1e-5, "stage1.meta_batch": 100, **_stage1_optim(cfg)}


def _metasaug(trial: SuggestTrial) -> None:
    trial.suggest_float("stage1.isda_lambda", 0.05, 2.0, log=True)
    trial.suggest_float("stage1.meta_lr", 1e-3, 1.0, log=True)


def _metasaug_first(cfg: ExperimentConfig) -> dict[str, object]:
    """MetaSAug's released recipe: lambda_0 0.5, covariance step 0.1."""
    return {"stage1.isda_lambda": 0.5, "stage1.meta_lr": 0.1, **_stage1_optim(cfg)}


# -- how the OT weight vector learns ----------------------------------------------------------

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


def _trains_stage(stage: str) -> Callable[[ExperimentConfig], str | None]:
    """A baseline's space fits a config that trains ``stage``."""

    def unfit(cfg: ExperimentConfig) -> str | None:
        epochs = getattr(cfg, stage).epochs
        if epochs <= 0:
            return f"it tunes {stage}, which {cfg.name} does not train ({stage}.epochs=0)"
        return None

    return unfit


def _baseline(
    name: str, about: str, suggest, first, *, halved: tuple[str, ...] = (), stage: str = "stage1"
) -> Space:
    """A baseline's space: its knobs and its trained stage's lr and weight decay."""
    optim = STAGE1_OPTIM if stage == "stage1" else ("stage0.lr", "stage0.weight_decay")
    return Space(
        name,
        f"{about}; with the {stage} learning rate and weight decay (reproduce --tune)",
        suggest,
        first,
        unfit=_trains_stage(stage),
        stage1=True,
        scaled=optim,
        halved=halved,
    )


def _stage2(name: str, about: str, ranges: Stage2Ranges, first) -> Space:
    return Space(name, about, ranges.suggest, first, scaled=STAGE2_OPTIM)


SEARCH_SPACES: dict[str, Space] = {
    s.name: s
    for s in (
        _stage2(
            "paper",
            "stage 2 around the paper's setting (Tables 1, 3, 4, ModelNet10): alpha, beta, "
            "lambda, Sinkhorn cap and tolerance, cost mixing, weight decay",
            PAPER_RANGES,
            _paper_first,
        ),
        _stage2(
            "offline",
            "stage 2 of the offline experiments (MNIST-LT, synthetic shapes: classifier only, "
            "10 epochs, larger steps)",
            OFFLINE_RANGES,
            _offline_first,
        ),
        _stage2(
            "text",
            "stage 2 of the text experiments (Table 5, tweets: the FCN's and the weight net's "
            "steps, lambda, Sinkhorn, cost mixing, weight decay)",
            TEXT_RANGES,
            _text_first,
        ),
        Space(
            "ot_learn",
            "how the OT weight vector learns: parametrisation, optimiser, step size, normalisation",
            _ot_learn,
            _ot_learn_first,
            unfit=_ot_learn_unfit,
        ),
        _baseline("ce", "a plain stage 1 (CE, proportion)", _nothing, _stage1_optim),
        _baseline(
            "stage0", "stage 0 alone (fine-tuned BERT)", _nothing, _stage0_first, stage="stage0"
        ),
        _baseline("focal", "focal loss: gamma", _focal, _focal_first),
        _baseline("cb", "class-balanced CE: beta", _cb, _cb_first),
        _baseline("cb_focal", "class-balanced focal: beta, gamma", _cb_focal, _cb_focal_first),
        _baseline("ldam", "LDAM: margin and scale", _ldam, _ldam_first),
        _baseline(
            "ldam_drw",
            "LDAM-DRW: margin, scale and the re-weighting start",
            _ldam,
            _ldam_drw_first,
            halved=("stage1.drw_epoch",),
        ),
        _baseline(
            "logit_adjustment",
            "logit adjustment (post-hoc or in the loss): tau",
            _la_tau,
            _la_first,
        ),
        _baseline(
            "meta_reweight",
            "L2RW / Meta-Weight-Net (with --set stage1.reweight=mwn or l2rw): the weight "
            "net's step and the meta batch",
            _meta_reweight,
            _meta_reweight_first,
        ),
        _baseline(
            "metasaug", "MetaSAug: lambda and the covariances' step", _metasaug, _metasaug_first
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
