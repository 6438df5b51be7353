"""The OT re-weighting method (Guo et al., NeurIPS 2022), in pure torch.

No Ray, no MLflow, no data loading: usable from a notebook.
"""

from __future__ import annotations

from .costs import (
    COSTS,
    combined_cost,
    feature_cost,
    label_cost,
    released_code_mixing,
    transport_cost,
)
from .fit import fit_batch_weights
from .meta import (
    META_DISTRIBUTIONS,
    MetaDistribution,
    class_prototypes,
    pixel_mean_prototypes,
    random_prototype_batch,
    random_sample_per_class,
    whole_meta_set,
)
from .ot import IMPLS, ot_loss
from .sinkhorn import GRAD_MODES, STOP_RULES, SinkhornResult, sinkhorn
from .step import (
    LOSS_WEIGHTINGS,
    Parallel,
    SplitModel,
    StepConfig,
    StepResult,
    reweight_step,
    step_cost,
    step_ot_loss,
)
from .weights import (
    WEIGHT_INITS,
    WEIGHT_MODES,
    WEIGHT_PARAMS,
    WeightNet,
    WeightVector,
    class_balanced_weights,
    initial_logits,
)

__all__ = [
    "COSTS",
    "GRAD_MODES",
    "IMPLS",
    "LOSS_WEIGHTINGS",
    "META_DISTRIBUTIONS",
    "STOP_RULES",
    "WEIGHT_INITS",
    "WEIGHT_MODES",
    "WEIGHT_PARAMS",
    "MetaDistribution",
    "Parallel",
    "SinkhornResult",
    "SplitModel",
    "StepConfig",
    "StepResult",
    "WeightNet",
    "WeightVector",
    "class_balanced_weights",
    "class_prototypes",
    "combined_cost",
    "feature_cost",
    "fit_batch_weights",
    "initial_logits",
    "label_cost",
    "ot_loss",
    "pixel_mean_prototypes",
    "random_prototype_batch",
    "random_sample_per_class",
    "released_code_mixing",
    "reweight_step",
    "sinkhorn",
    "step_cost",
    "step_ot_loss",
    "transport_cost",
    "whole_meta_set",
]
