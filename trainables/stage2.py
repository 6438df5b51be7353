"""Stage 2: Algorithm 1 on top of the stage-1 model, one entry point for every setting.

Where f1 is frozen and its features are cached (``stage2.train=classifier``,
``stage2.features=cached``: the offline image, text and point-cloud experiments and the
released-code preset) a setting is a population of one (:mod:`trainables.population`): a single
trial and a sweep's population run the same loop. Where f1 runs at every step
(``stage2.train=all``, or the frozen f1 on augmented images) each step is
:func:`trainables.reweight.reweight_step` with torch's optimisers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from trainables.config import POSTHOC_PREFIX, Stage2Config
from trainables.data.arrays import StageData, TensorSplit, iterate_batches
from trainables.loop import (
    Callback,
    Selector,
    StageResult,
    check_finite,
    check_stage2,
    evaluate,
    evaluate_views,
    flat_metrics,
    meta_distribution_builder,
    step_config,
)
from trainables.losses import posthoc_logit_adjustment
from trainables.models import SplitNet
from trainables.population import population_reason, train_population
from trainables.reweight import (
    Parallel,
    StepConfig,
    WeightNet,
    WeightVector,
    pixel_mean_prototypes,
    reweight_step,
)

__all__ = ["train_stage2"]


def train_stage2(
    model: SplitNet,
    data: StageData,
    cfg: Stage2Config,
    *,
    generator: torch.Generator,
    callback: Callback | None = None,
    features: StageData | None = None,
    on_improve: Callable[[StageResult], None] | None = None,
    parallel: Parallel | None = None,
    adjust: Callable[[Tensor], Tensor] | None = None,
) -> StageResult:
    """Algorithm 1 steps (a)-(c) for ``cfg.epochs`` epochs, evaluating after each epoch; the
    trained parameters are left in ``model`` (its state after the last epoch).
    ``stage2.method=none`` evaluates the model once instead, its logits through ``adjust``
    when given (post-hoc logit adjustment).

    ``features``: on cached features, the f1 features of every split
    (:func:`trainables.loop.frozen_feature_data`, e.g. from the stage-1 cache); ``data`` may
    then be the same object and f1 never runs. ``on_improve(result)`` is called after each
    epoch whose validation balanced accuracy is a new best, before the callback (trackers
    upload the selected model's artifacts there). ``parallel``: data-parallel workers (see
    :func:`reweight_step`); every worker draws the same batches and trains on its shard of
    each, and the callback also gets ``shard_samples``. A non-finite epoch loss raises
    FloatingPointError.
    """
    if cfg.method == "none":
        return _evaluate_once(model, data, callback, on_improve, parallel, adjust)
    check_stage2(cfg, data.num_classes)
    if population_reason(cfg) is None:
        return _population_of_one(
            model, data, cfg, generator, callback, features, on_improve, parallel
        )
    return _train_through_f1(model, data, cfg, generator, callback, on_improve, parallel)


def _evaluate_once(model, data, callback, on_improve, parallel, adjust) -> StageResult:
    """``stage2.method=none``: the stage-1 model, evaluated once (reported as epoch 0)."""
    sel = Selector()
    metrics = evaluate(model, data, adjust=adjust)
    sel.update(0, metrics, model)
    if on_improve:
        on_improve(sel.result)
    if callback:
        extra = {"shard_samples": 0} if parallel is not None else {}
        callback("stage2", 0, {**extra, **flat_metrics(metrics)})
    return sel.result


def _population_of_one(
    model, data, cfg, generator, callback, features, on_improve, parallel
) -> StageResult:
    (outcome,) = train_population(
        model,
        data,
        [cfg],
        generator=generator,
        features=features,
        callback=(lambda _m, stage, epoch, metrics: callback(stage, epoch, metrics))
        if callback
        else None,
        on_improve=(lambda _m, result: on_improve(result)) if on_improve else None,
        parallel=parallel,
    )
    if outcome.error is not None:
        raise outcome.error
    with torch.no_grad():  # as a trial through f1 leaves it: the last epoch's classifier
        model.classifier.load_state_dict(outcome.last_state)
    return outcome.result


def _train_through_f1(model, data, cfg, generator, callback, on_improve, parallel) -> StageResult:
    """Stage 2 where f1 runs at every step: trained (``stage2.train=all``) or frozen on
    augmented images (``stage2.features=augmented``)."""
    k = data.num_classes
    augmented = cfg.train == "classifier"  # population_reason: features=augmented
    if augmented:
        if not data.is_images:
            raise ValueError("stage2.features=augmented needs images; this data has features")
        model.features.requires_grad_(False)
        # f1 in eval mode inside a training classifier: batch norm keeps stage 1's statistics
        work = SplitNet(model.features, model.classifier, model.feature_dim)
    else:
        work = model
    step_cfg = step_config(cfg, k)
    model_opt, weights, weight_opt = _optimisers(work, model.feature_dim, data, cfg)
    build_q = meta_distribution_builder(cfg, k, generator)
    sel, posthoc = Selector(), Selector(keep_state=False)
    sel.result.posthoc = posthoc.result  # the post-hoc logit-adjusted reading, selected apart
    views = (None, lambda z: posthoc_logit_adjustment(z, data.train_counts, cfg.la_tau))
    vector = isinstance(weights, WeightVector)  # a weight net's weights need features
    if vector:
        sel.result.start_mass, _ = _class_mass(weights, data.train, k)
    try:
        for epoch in range(cfg.epochs):
            ot_mean, loss_mean, shard_samples = _epoch(
                work, data, cfg, step_cfg, (model_opt, weights, weight_opt), build_q,
                generator, parallel, augmented,
            )  # fmt: skip
            check_finite(ot_mean, "the OT loss", "stage 2", epoch)
            check_finite(loss_mean, "the weighted training loss", "stage 2", epoch)
            metrics, adjusted = evaluate_views(work, data, views)
            improved = sel.update(epoch, metrics, model)
            posthoc.update(epoch, adjusted, model)
            if vector:
                _record_weights(sel.result, weights, data.train, k, cfg.loss_weights == "raw")
            if improved and on_improve:  # before the callback: a scheduler may stop us there
                on_improve(sel.result)
            if callback:
                extra = {"shard_samples": shard_samples} if parallel is not None else {}
                losses = {"ot_loss": ot_mean, "train_loss": loss_mean}
                flat = {**flat_metrics(metrics), **flat_metrics(adjusted, POSTHOC_PREFIX)}
                callback("stage2", epoch, {**losses, **extra, **flat})
    finally:
        if augmented:
            model.features.requires_grad_(True)
    return sel.result


def _optimisers(work: nn.Module, feature_dim: int, data: StageData, cfg: Stage2Config):
    """(the model's SGD, the weights, the weights' optimiser)."""
    params = [p for p in work.parameters() if p.requires_grad]
    model_opt = torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    device = data.train.y.device
    if cfg.weights == "vector":
        weights = WeightVector(
            len(data.train),
            init=cfg.weight_init,
            labels=data.train.y.cpu(),
            num_classes=data.num_classes,
            mode=cfg.weight_mode,
            param=cfg.weight_param,
            raw=cfg.loss_weights == "raw",
        ).to(device)
    else:
        weights = WeightNet(feature_dim, cfg.weight_net_hidden).to(device)
    if cfg.weight_optimizer == "adam":
        weight_opt = torch.optim.Adam(weights.parameters(), lr=cfg.weight_lr)
    else:
        weight_opt = torch.optim.SGD(
            weights.parameters(), lr=cfg.weight_lr, momentum=cfg.weight_momentum
        )
    return model_opt, weights, weight_opt


def _epoch(
    work, data, cfg, step_cfg: StepConfig, opts, build_q, generator, parallel, augmented
) -> tuple[float, float, int]:
    """One epoch of steps; (mean OT loss, mean weighted loss, this worker's shard samples)."""
    model_opt, weights, weight_opt = opts
    k = data.num_classes
    work.train()
    if augmented:
        work.features.eval()
    # The meta set is drawn once per epoch, as the released code does, with fresh augmentation
    meta_x = data.prepare(
        data.meta.x[torch.arange(len(data.meta))], augment=True, generator=generator
    )
    meta_y = data.meta.y
    q = q_input = None
    if augmented:  # Q from this epoch's augmented meta images, through the frozen f1
        if cfg.prototype_from == "pixel_mean":
            q = pixel_mean_prototypes(work.features, meta_x, meta_y, k)
        with torch.no_grad():
            q_input = work.features(meta_x)
        if q is None and cfg.meta_distribution == "prototype" and not cfg.prototype_batch:
            q = build_q(q_input, meta_y)
    device = data.train.y.device
    ot_sum = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    steps = shard_samples = 0
    for idx in iterate_batches(len(data.train), cfg.batch_size, shuffle=True, generator=generator):
        idx_dev = idx.to(device)
        x = data.prepare(data.train.x[idx_dev], augment=True, generator=generator)
        step_q = q if q is not None or not augmented else build_q(q_input, meta_y)
        res = reweight_step(
            work, x, data.train.y[idx_dev], idx_dev, weights, model_opt, weight_opt, step_cfg,
            num_classes=k, meta_x=meta_x, meta_y=meta_y, q=step_q,
            build_q=None if augmented else build_q, parallel=parallel,
        )  # fmt: skip
        if parallel is not None:
            shard_samples += len(range(parallel.rank, idx.numel(), parallel.world))
        ot_sum += res.ot_loss
        loss_sum += res.loss
        steps += 1
    return ot_sum.item() / steps, loss_sum.item() / steps, shard_samples


def _record_weights(result: StageResult, weights: WeightVector, train: TensorSplit, k, raw):
    """The epoch's class masses and per-sample weights (and the raw logits' under
    ``stage2.loss_weights=raw``: what the CE multiplies)."""
    mass, per_sample = _class_mass(weights, train, k)
    result.weight_mass.append(mass)
    result.sample_weights = per_sample
    if raw:
        mass, per_sample = _class_mass(weights, train, k, raw=True)
        result.raw_mass.append(mass)
        result.raw_sample_weights = per_sample


def _class_mass(
    weights: WeightVector, train: TensorSplit, k: int, *, raw: bool = False
) -> tuple[list[float], list[float]]:
    """Mass per class and per sample of the normalised weights over the whole training set;
    with ``raw``, the sums of the raw logits instead."""
    with torch.no_grad():
        w = weights.logits.detach().clone() if raw else torch.softmax(weights.logits, 0)
        mass = torch.zeros(k, dtype=w.dtype, device=w.device).index_add(0, train.y, w)
        return mass.tolist(), w.tolist()
