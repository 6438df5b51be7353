"""Stage 1's loop and what both stages share, for every modality.

Stage 1 trains with a classification loss on the imbalanced set; stage 2
(:mod:`trainables.stage2`) runs Algorithm 1 on top and shares from here the selection rule
(:class:`Selector`), the NaN rule (:func:`check_finite`), evaluation, the stage-2 checks and
the meta distribution. Every loop reports each epoch through a callback
``callback(stage, epoch, metrics)`` and knows nothing of Ray or MLflow.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.config import POSTHOC, POSTHOC_PREFIX, Stage1Config, Stage2Config
from trainables.data.arrays import StageData, TensorSplit, iterate_batches
from trainables.losses import check_loss_args, make_loss, posthoc_logit_adjustment
from trainables.metrics import classification_metrics
from trainables.models import SplitNet
from trainables.resume import Stage1Checkpoints
from trainables.reweight import (
    MetaDistribution,
    Parallel,
    StepConfig,
    class_balanced_weights,
    class_prototypes,
    random_prototype_batch,
    random_sample_per_class,
    released_code_mixing,
    whole_meta_set,
)

__all__ = [
    "Callback",
    "Selector",
    "StageResult",
    "check_finite",
    "check_stage1",
    "check_stage2",
    "evaluate",
    "evaluate_views",
    "flat_metrics",
    "frozen_feature_data",
    "improves",
    "lr_at",
    "meta_distribution_builder",
    "step_config",
    "train_stage1",
]

Callback = Callable[[str, int, dict], None]


@dataclass
class StageResult:
    """Final, validation-selected and best-test-epoch metrics of one stage.

    ``selected`` is the test metrics at the epoch of best validation balanced accuracy (the model
    a user should report); ``best_test_epoch`` is what the released code reports (selection on
    the test set) and is kept only under that name.
    """

    last: dict = field(default_factory=dict)
    selected: dict = field(default_factory=dict)
    best_test_epoch: dict = field(default_factory=dict)
    weight_mass: list[list[float]] = field(default_factory=list)
    # the mass per class before the first OT step (uniform weights: the class's share of the
    # training set), what the learned mass is read against
    start_mass: list[float] = field(default_factory=list)
    sample_weights: list[float] = field(default_factory=list)
    # under stage2.loss_weights=raw the CE multiplies the raw logits, not the softmax mass
    # above: their per-class sums per epoch and per-sample values (empty otherwise)
    raw_mass: list[list[float]] = field(default_factory=list)
    raw_sample_weights: list[float] = field(default_factory=list)
    state: dict | None = None
    # the same epochs read through Menon et al.'s post-hoc logit adjustment, selected on its own
    # validation score: a CE stage 1's (the posthoc_la row) and every stage 2's (``+la`` rows)
    posthoc: StageResult | None = None


def check_finite(value: float, what: str, stage: str, epoch: int) -> None:
    """The NaN rule of every loop: a non-finite loss at the end of an epoch stops the run with
    FloatingPointError (one line: what, where, the remedy)."""
    if not math.isfinite(value):
        raise FloatingPointError(
            f"{stage}: {what} is {value} at epoch {epoch}; lower the learning "
            "rates or check the data"
        )


@torch.no_grad()
def predict(
    model: nn.Module,
    split: TensorSplit,
    data: StageData,
    *,
    batch_size: int = 512,
    adjusts: tuple[Callable[[Tensor], Tensor] | None, ...] = (None,),
) -> list[Tensor]:
    """The predicted class of every sample of ``split`` under each of ``adjusts`` (a function
    of the logits, or None for the logits themselves), from one forward pass."""
    was = model.training
    model.eval()
    preds: list[list[Tensor]] = [[] for _ in adjusts]
    batch_size = min(batch_size, getattr(model, "eval_batch_size", batch_size))
    for idx in iterate_batches(len(split), batch_size, shuffle=False):
        logits = model(data.prepare(split.x[idx], augment=False, generator=None))
        for out, adjust in zip(preds, adjusts, strict=True):
            out.append((adjust(logits) if adjust else logits).argmax(1))
    model.train(was)
    empty = torch.empty(0, dtype=torch.long)
    return [torch.cat(p) if p else empty for p in preds]


def evaluate_views(
    model: nn.Module, data: StageData, adjusts: tuple[Callable[[Tensor], Tensor] | None, ...]
) -> list[dict[str, dict]]:
    """``{split: metrics}`` of val and test under each of ``adjusts`` (one forward pass)."""
    out: list[dict[str, dict]] = [{} for _ in adjusts]
    for name in ("val", "test"):
        split = getattr(data, name)
        for view, pred in zip(out, predict(model, split, data, adjusts=adjusts), strict=True):
            view[name] = classification_metrics(pred, split.y, data.num_classes, data.train_counts)
    return out


def evaluate(model: nn.Module, data: StageData, *, adjust=None) -> dict[str, dict]:
    return evaluate_views(model, data, (adjust,))[0]


def flat_metrics(metrics: dict[str, dict], prefix: str = "") -> dict[str, float]:
    """``{"<prefix><split>_<metric>": value}``: the scalars of ``{split: {metric: value}}``
    (lists and matrices are kept for the end only). Per-epoch logs and the final summaries of a
    trial are flattened by this one function."""
    flat = {}
    for split, m in metrics.items():
        for k, v in m.items():
            if isinstance(v, float):
                flat[f"{prefix}{split}_{k}"] = v
    return flat


def improves(val: float, best_val: float) -> bool:
    """The model-selection rule, the one place it is written: an epoch is selected when its
    validation balanced accuracy is strictly above the best so far (ties keep the earlier
    epoch; test never ranks). The trial's tracker applies the same rule to what it logs."""
    return val > best_val


class Selector:
    """The selection of every loop (:func:`improves`): the last epoch, the validation-selected
    one (with a copy of its model unless ``keep_state=False``) and the best test epoch."""

    def __init__(self, *, keep_state: bool = True) -> None:
        self.best_val = -1.0
        self.best_test = -1.0
        self.result = StageResult()
        self.keep_state = keep_state

    def update(self, epoch: int, metrics: dict[str, dict], model: nn.Module) -> bool:
        """Record an epoch; True when validation improved (the selected model changed)."""
        val, test = metrics["val"]["balanced_acc"], metrics["test"]["balanced_acc"]
        r = self.result
        r.last = {"epoch": epoch, **metrics}
        improved = improves(val, self.best_val)
        if improved:
            self.best_val = val
            r.selected = {"epoch": epoch, **metrics}
            if self.keep_state:
                r.state = copy.deepcopy(model.state_dict())
        if test > self.best_test:
            self.best_test = test
            r.best_test_epoch = {"epoch": epoch, "test": metrics["test"]}
        return improved


def lr_at(cfg: Stage1Config, epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then x``gamma`` at each milestone (LDAM-DRW)."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / cfg.warmup_epochs
    return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


def check_stage1(cfg: Stage1Config) -> None:
    """Stage 1's combinations of choices, checked before anything runs (``train_stage1``
    starts with this); each choice alone was checked when the config was built. Raises
    ValueError with a one-line reason."""
    loss_name = "ce" if cfg.loss == POSTHOC else cfg.loss
    check_loss_args(
        focal_gamma=cfg.focal_gamma,
        cb_beta=cfg.cb_beta,
        ldam_max_m=cfg.ldam_max_m,
        ldam_s=cfg.ldam_s,
        prefix="stage1.",
    )
    if cfg.reweight != "none" and loss_name != "ce":
        raise ValueError("stage1.reweight (l2rw / mwn) runs single-worker with stage1.loss=ce")
    switched = cfg.amp != "none" or cfg.channels_last or cfg.compile != "none"
    if cfg.reweight != "none" and switched:
        raise ValueError(
            "stage1.amp, stage1.channels_last and stage1.compile run with stage1.reweight=none"
        )


def check_stage2(cfg: Stage2Config, num_classes: int) -> None:
    """Stage 2's combinations, checked before anything runs (``train_stage2`` starts with
    this): the OT step's own constraints (``StepConfig``: eps > 0)."""
    if cfg.method == "none":
        return
    if not (cfg.la_tau >= 0 and math.isfinite(cfg.la_tau)):
        raise ValueError(f"stage2.la_tau={cfg.la_tau} must be a finite number >= 0")
    if cfg.weights == "net" and cfg.weight_param != "sample":
        raise ValueError(
            f"stage2.weight_param={cfg.weight_param} parametrises the weight vector; "
            "stage2.weights=net learns its weights with the weight net"
        )
    if cfg.weights == "net" and cfg.loss_weights == "raw":
        raise ValueError(
            "stage2.loss_weights=raw multiplies the CE by the weight vector's logits; "
            "stage2.weights=net outputs simplex weights (use loss_weights=simplex)"
        )
    if cfg.weight_param != "sample" and cfg.weight_mode == "scratch":
        raise ValueError("stage2.weight_mode=scratch resets per-sample logits: weight_param=sample")
    if cfg.features == "augmented" and (cfg.train != "classifier" or cfg.weights == "net"):
        raise ValueError(
            "stage2.features=augmented recomputes a frozen f1's features: it needs "
            "stage2.train=classifier and the weight vector (stage2.weights=vector)"
        )
    if cfg.prototype_from == "pixel_mean" and (
        cfg.features != "augmented" or cfg.meta_distribution != "prototype"
    ):
        raise ValueError(
            "stage2.prototype_from=pixel_mean puts mean images through f1: it needs "
            "stage2.features=augmented and stage2.meta_distribution=prototype"
        )
    step_config(cfg, num_classes)


def stage1_forward(model: nn.Module, cfg: Stage1Config) -> Callable[[Tensor], Tensor]:
    """The training forward under ``stage1.amp`` / ``stage1.channels_last`` /
    ``stage1.compile`` (the model is converted in place; its logits come back in float32;
    evaluation keeps using the eager model)."""
    check_stage1(cfg)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    device_type = next(model.parameters()).device.type
    net = model
    if cfg.compile != "none":
        net = torch.compile(model, mode=None if cfg.compile == "default" else cfg.compile)

    def forward(x: Tensor) -> Tensor:
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if cfg.amp == "none":
            return net(x)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return net(x).float()

    return forward


def train_stage1(
    model: SplitNet,
    data: StageData,
    cfg: Stage1Config,
    *,
    generator: torch.Generator,
    callback: Callback | None = None,
    parallel: Parallel | None = None,
    checkpoints: Stage1Checkpoints | None = None,
) -> StageResult:
    """``cfg.epochs`` epochs of the stage-1 loss, evaluating after each.

    ``checkpoints``: where the state after each epoch is saved (:mod:`trainables.resume`);
    when a valid one is there, training continues from it, bit for bit the run that wrote it
    and every epoch's callback before it is called again with the metrics it had then (a
    resumed build reports the whole curve once). Single-worker only.

    ``parallel``: data-parallel workers. All draw the same batch order from ``generator``; each
    trains on its shard of every batch with the loss scaled by its share, the gradients are
    summed (the single-worker mean over the whole batch, for losses that are per-sample means),
    and rank 0's batch-norm statistics are broadcast after every step. Augmentation draws from a
    per-rank generator, so images are decoded and augmented once, by the worker that uses them.
    """
    check_stage1(cfg)
    loss_name = "ce" if cfg.loss == POSTHOC else cfg.loss
    loss_fn = make_loss(
        loss_name,
        data.train_counts,
        focal_gamma=cfg.focal_gamma,
        cb_beta=cfg.cb_beta,
        ldam_max_m=cfg.ldam_max_m,
        ldam_s=cfg.ldam_s,
        drw_epoch=cfg.drw_epoch,
        la_tau=cfg.la_tau,
    )
    views, posthoc = _posthoc_view(data, cfg, loss_name)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    aug_gen = _augmentation_generator(generator, parallel)
    meta = _MetaReweight(model, data, cfg, aug_gen) if cfg.reweight != "none" else None
    if meta is not None and parallel is not None:
        raise ValueError("stage1.reweight (l2rw / mwn) runs single-worker with stage1.loss=ce")
    forward = stage1_forward(model, cfg)
    sel = Selector()
    history: list[dict] = []
    start = 0
    if checkpoints is not None:
        if parallel is not None:
            raise ValueError("stage-1 checkpoints are written by a single-worker stage 1")
        start = _resume_stage1(
            checkpoints, cfg.epochs, model, opt, generator, (sel, posthoc), meta, history
        )
        for done, metrics in enumerate(history if callback else ()):
            callback("stage1", done, metrics)
    for epoch in range(start, cfg.epochs):
        train_loss = _stage1_epoch(
            model, data, cfg, epoch, (opt, params, loss_fn, forward, meta), generator, aug_gen,
            parallel,
        )  # fmt: skip
        check_finite(train_loss, "the training loss", "stage 1", epoch)
        metrics, *adjusted = evaluate_views(model, data, views)
        sel.update(epoch, metrics, model)
        logged = {"train_loss": train_loss, "lr": lr_at(cfg, epoch), **flat_metrics(metrics)}
        if posthoc is not None:
            posthoc.update(epoch, adjusted[0], model)
            logged.update(flat_metrics(adjusted[0], POSTHOC_PREFIX))
        history.append(logged)
        # saved before the callback reports the epoch: a callback that stops the run (a kill
        # at that point) finds the epoch already safe
        if checkpoints is not None and checkpoints.due(epoch + 1, cfg.epochs):
            state = _stage1_state(model, opt, generator, (sel, posthoc), meta, history)
            checkpoints.save(epoch + 1, state)
        if callback:
            callback("stage1", epoch, logged)
    if posthoc is not None:
        sel.result.posthoc = posthoc.result
    return sel.result


def _augmentation_generator(generator: torch.Generator, parallel) -> torch.Generator:
    """``generator`` itself on one worker; each data-parallel worker its own, seeded from it
    and the rank but not drawn from it: the batch order must stay the single-worker one."""
    if parallel is None:
        return generator
    seed = (generator.initial_seed() * 1_000_003 + 7919 * (parallel.rank + 1)) % 2**63
    return torch.Generator(device=generator.device).manual_seed(seed)


def _posthoc_view(
    data: StageData, cfg: Stage1Config, loss_name: str
) -> tuple[tuple, Selector | None]:
    """(the evaluation views, the post-hoc reading's selector): CE training also reads every
    epoch post-hoc adjusted, selected apart; other losses have the plain view alone."""
    if loss_name != "ce" or cfg.reweight != "none":
        return (None,), None

    def adjust(logits):
        return posthoc_logit_adjustment(logits, data.train_counts, cfg.la_tau)

    return (None, adjust), Selector(keep_state=False)


def _stage1_epoch(model, data, cfg, epoch, parts, generator, aug_gen, parallel) -> float:
    """One epoch of stage-1 steps (on this worker's shards); the mean training loss over the
    whole training set."""
    opt, params, loss_fn, forward, meta = parts
    for group in opt.param_groups:
        group["lr"] = lr_at(cfg, epoch)
    model.train()
    total = torch.zeros((), device=data.train.y.device)
    for idx in iterate_batches(len(data.train), cfg.batch_size, shuffle=True, generator=generator):
        share = 1.0
        if parallel is not None:
            full = idx.numel()
            idx = idx[parallel.shard(full)]
            share = idx.numel() / full
        opt.zero_grad(set_to_none=True)
        if idx.numel() and meta is not None and epoch >= cfg.meta_start:
            x = data.prepare(data.train.x[idx], augment=True, generator=aug_gen)
            loss = meta.loss(x, data.train.y[idx], lr_at(cfg, epoch), epoch)
            loss.backward()
            total += loss.detach() * idx.numel()
        elif idx.numel():
            x = data.prepare(data.train.x[idx], augment=True, generator=aug_gen)
            loss = loss_fn(forward(x), data.train.y[idx], epoch=epoch) * share
            loss.backward()
            total += loss.detach() * (idx.numel() / share)
        if parallel is not None:
            parallel.sum_grads_(params)
        opt.step()
        if parallel is not None:
            parallel.broadcast_(list(model.buffers()))
    if parallel is not None:
        total = parallel.sum(total)
    return total.item() / len(data.train)


def _selector_state(sel: Selector | None) -> dict | None:
    if sel is None:
        return None
    r = sel.result
    return {
        "best_val": sel.best_val,
        "best_test": sel.best_test,
        "last": r.last,
        "selected": r.selected,
        "best_test_epoch": r.best_test_epoch,
        "selected_state": r.state,
    }


def _load_selector(sel: Selector | None, s: dict | None, device: torch.device) -> None:
    if sel is None:
        return
    sel.best_val, sel.best_test = s["best_val"], s["best_test"]
    r = sel.result
    r.last, r.selected, r.best_test_epoch = s["last"], s["selected"], s["best_test_epoch"]
    r.state = None
    if s["selected_state"] is not None:
        r.state = {k: v.to(device) for k, v in s["selected_state"].items()}


def _stage1_state(model, opt, generator, selectors: tuple, meta, history: list[dict]) -> dict:
    """Everything the next epoch depends on: the weights, the optimiser (momentum), every RNG
    stage 1 draws from (the trial generator also feeds augmentation and the meta batches;
    the torch default generator; CUDA's), the selections so far (raw and post-hoc adjusted)
    and the epochs' metrics. The learning rate is a function of the epoch (:func:`lr_at`),
    set at each epoch's start."""
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "selector": _selector_state(selectors[0]),
        "posthoc_selector": _selector_state(selectors[1]),
        "history": history,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if meta is not None:
        state["meta"] = meta.state()
    return state


def _resume_stage1(
    checkpoints: Stage1Checkpoints, epochs: int, model, opt, generator, selectors, meta, history
) -> int:
    """Load the newest valid checkpoint into the live objects; the number of epochs done."""
    found = checkpoints.latest()
    if found is None:
        return 0
    done, state = found
    if done > epochs:
        checkpoints.log(f"stage 1: checkpoint after epoch {done} is past {epochs} epochs; ignored")
        return 0
    device = next(model.parameters()).device
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    _load_selector(selectors[0], state["selector"], device)
    _load_selector(selectors[1], state["posthoc_selector"], device)
    if meta is not None:
        meta.load_state(state["meta"])
    history.extend(state["history"])
    checkpoints.log(f"stage 1: resuming from epoch {done} of {epochs}")
    return done


class _MetaReweight:
    """Per-batch example weights of stage 1 from L2RW or Meta-Weight-Net (meta_reweight.py),
    each step scored on a random meta batch (seeded by the augmentation generator)."""

    def __init__(self, model: nn.Module, data: StageData, cfg: Stage1Config, generator) -> None:
        from trainables.meta_reweight import MetaWeightNet

        self.model, self.data, self.cfg, self.generator = model, data, cfg, generator
        self.vnet = self.vnet_opt = self.estimator = None
        self.margins = self.cb_weights = None  # metasaug_loss=ldam
        if cfg.reweight == "metasaug":
            from trainables.meta_reweight import ClassCovariance

            if not isinstance(model.classifier, nn.Linear):
                raise ValueError("stage1.reweight=metasaug needs a linear classifier (CE)")
            self.estimator = ClassCovariance(
                data.num_classes, model.feature_dim, device=data.train.y.device
            )
            if cfg.metasaug_loss == "ldam":
                counts = torch.tensor(list(data.train_counts), dtype=torch.float64)
                m = counts.pow(-0.25)
                self.margins = (m * (0.5 / m.max())).to(data.train.y.device)
                self.cb_weights = class_balanced_weights(counts, beta=cfg.cb_beta).to(
                    data.train.y.device
                )
        if cfg.reweight == "mwn":
            device = data.train.y.device
            self.vnet = MetaWeightNet(cfg.meta_hidden).to(device)
            self.vnet_opt = _vnet_optimizer(self.vnet, cfg)

    def state(self) -> dict:
        """What the meta method carries from epoch to epoch (its generator is the loop's)."""
        out: dict = {}
        if self.vnet is not None:
            out["vnet"] = self.vnet.state_dict()
            out["vnet_opt"] = self.vnet_opt.state_dict()
        if self.estimator is not None:
            e = self.estimator
            out["estimator"] = {"count": e.count, "sum": e.sum, "outer": e.outer}
        return out

    def load_state(self, state: dict) -> None:
        if self.vnet is not None:
            self.vnet.load_state_dict(state["vnet"])
            self.vnet_opt.load_state_dict(state["vnet_opt"])
        if self.estimator is not None:
            for name, value in state["estimator"].items():
                getattr(self.estimator, name).copy_(value)

    def loss(self, x: Tensor, y: Tensor, lr: float, epoch: int) -> Tensor:
        """The batch's training loss under the meta method (to back-propagate)."""
        from trainables.meta_reweight import l2rw_weights, metasaug_loss, mwn_step

        n = len(self.data.meta)
        pick = torch.randperm(n, generator=self.generator)[: self.cfg.meta_batch]
        pick = pick.to(self.data.meta.y.device)
        meta_x = self.data.prepare(self.data.meta.x[pick], augment=True, generator=self.generator)
        meta_y = self.data.meta.y[pick]
        if self.estimator is not None:
            lam = self.cfg.isda_lambda * epoch / max(1, self.cfg.epochs)
            return metasaug_loss(
                self.model, self.estimator, x, y, meta_x, meta_y, lr=lr, lam=lam,
                meta_lr=self.cfg.meta_lr, margins=self.margins, class_weights=self.cb_weights,
            )  # fmt: skip
        if self.vnet is None:
            w = l2rw_weights(self.model, x, y, meta_x, meta_y, lr=lr)
        else:
            w = mwn_step(self.model, self.vnet, self.vnet_opt, x, y, meta_x, meta_y, lr=lr)
        return (w * F.cross_entropy(self.model(x), y, reduction="none")).sum()


def _vnet_optimizer(vnet: nn.Module, cfg: Stage1Config) -> torch.optim.Optimizer:
    """Meta-Weight-Net's optimiser as its authors' code builds it (config.MetaOptimizer)."""
    if cfg.meta_optimizer == "adam":
        return torch.optim.Adam(vnet.parameters(), lr=cfg.meta_lr, weight_decay=1e-4)
    return torch.optim.SGD(
        vnet.parameters(), lr=cfg.meta_lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )


def step_config(cfg: Stage2Config, num_classes: int) -> StepConfig:
    fw, lw = cfg.feature_weight, cfg.label_weight
    if cfg.released_mixing:
        fw, lw = released_code_mixing(num_classes)
    return StepConfig(
        cost=cfg.cost,
        feature_weight=fw,
        label_weight=lw,
        eps=cfg.eps,
        max_iter=cfg.max_iter,
        tol=cfg.tol,
        check_every=cfg.check_every,
        stop=cfg.stop,
        grad=cfg.grad,
        virtual_lr=cfg.lr,
        virtual_step=cfg.virtual_step,
        learn_weights=cfg.learn_weights,
        normalize_weight_grad=cfg.weight_normalize,
        loss_weights=cfg.loss_weights,
        meta_ce_coef=cfg.meta_ce_coef,
        weight_decay=cfg.weight_decay_w,
        impl=cfg.impl,
    )


def meta_distribution_builder(cfg: Stage2Config, k: int, generator: torch.Generator):
    """``build(z, y)``: the meta distribution Q of stage 2 (``stage2.meta_distribution``, a
    random prototype batch when ``stage2.prototype_batch``) from the meta set's features."""

    def build(z: Tensor, y: Tensor) -> MetaDistribution:
        if cfg.meta_distribution == "prototype":
            q = class_prototypes(z, y, k)
        elif cfg.meta_distribution == "whole":
            q = whole_meta_set(z, y)
        elif cfg.meta_distribution == "random_sample":
            q = random_sample_per_class(z, y, k, generator)
        else:
            raise ValueError(f"unknown meta_distribution {cfg.meta_distribution!r}")
        if cfg.prototype_batch:
            q = random_prototype_batch(q, cfg.prototype_batch, generator)
        return q

    return build


@torch.no_grad()
def _features(model: SplitNet, split: TensorSplit, data: StageData) -> TensorSplit:
    model.eval()
    zs = [
        model.features(data.prepare(split.x[i], augment=False, generator=None))
        for i in iterate_batches(len(split), model.eval_batch_size, shuffle=False)
    ]
    return TensorSplit(torch.cat(zs), split.y)


def frozen_feature_data(model: SplitNet, data: StageData) -> StageData:
    """Features of every split computed once (f1 frozen): stage 2 then never runs f1 again."""
    return StageData(
        train=_features(model, data.train, data),
        meta=_features(model, data.meta, data),
        val=_features(model, data.val, data),
        test=_features(model, data.test, data),
        num_classes=data.num_classes,
        train_counts=data.train_counts,
        source=data.source,
    )
