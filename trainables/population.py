"""The stage-2 loop on cached features: P settings trained at once (P = 1: a single trial).

Where f1 is frozen and its features cached (``stage2.train=classifier``: the offline image,
text and point-cloud experiments and the released-code preset) a stage-2 step is tiny and bound
by per-call overhead. :func:`train_population` trains P members at once: stacked classifier
heads (batched matrix products, or one ``torch.func.functional_call`` under ``vmap``), one weight
vector or weight net per member, one Sinkhorn call for all members
(:func:`trainables.reweight.ot_loss` on their stacked problems, each member with its own lambda,
iteration cap and tolerance), and per-member step sizes, momenta, cost mixing and weight
parametrisations. Every member sees the same batches, the same Q and the same draws, so member
``m`` gives what a population of its setting alone gives with the same seed; a single trial on
cached features is such a population of one (:func:`trainables.stage2.train_stage2`). The
steps are checked against other code: the stage 2 that runs f1 at every step, with f1 an
identity (``tests/trainables/test_population.py``).

Which fields may differ between members: :data:`VARYING`; every other stage-2 field, and the
rest of the experiment, is the population's own (checked by :func:`check_population`).
Members leave the population when they diverge (a non-finite loss at the end of an epoch, as a
single trial raises there) or when successive halving culls them at a rung; the others go on.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from trainables.config import POSTHOC_PREFIX, Stage2Config
from trainables.data.arrays import StageData, iterate_batches
from trainables.loop import (
    Selector,
    StageResult,
    check_finite,
    check_stage2,
    flat_metrics,
    frozen_feature_data,
    meta_distribution_builder,
    step_config,
)
from trainables.losses import posthoc_logit_adjustment
from trainables.metrics import confusion_matrices, confusion_metrics
from trainables.models import SplitNet
from trainables.reweight import (
    Parallel,
    WeightNet,
    feature_cost,
    initial_logits,
    label_cost,
    ot_loss,
)

__all__ = [
    "VARYING",
    "MemberOutcome",
    "check_population",
    "halving_rungs",
    "population_reason",
    "train_population",
]

# Stage-2 fields a member may set for itself; all else is shared by the population.
VARYING = frozenset(
    {
        "lr",
        "momentum",
        "weight_decay",
        "weight_lr",
        "weight_momentum",
        "weight_decay_w",
        "weight_param",
        "weight_optimizer",
        "weight_normalize",
        "learn_weights",
        "feature_weight",
        "label_weight",
        "released_mixing",
        "eps",
        "max_iter",
        "tol",
        "meta_ce_coef",
        "virtual_step",  # no virtual step on frozen features: it has no effect there
    }
)

Callback = Callable[[int, str, int, dict], None]


@dataclass
class MemberOutcome:
    """One member's stage-2 result. ``error``: the divergence that ended it (its result holds
    the epochs before); ``stopped_epoch``: the epoch (from 0) after which successive halving
    culled it; both None for a member that ran every epoch."""

    result: StageResult
    error: FloatingPointError | None = None
    stopped_epoch: int | None = None
    last_state: dict[str, Tensor] | None = None  # the classifier after its last epoch


def population_reason(cfg: Stage2Config) -> str | None:
    """Why ``cfg``'s stage 2 cannot run as a population member (None when it can)."""
    if cfg.method != "ot":
        return "stage2.method=none evaluates the stage-1 model: there is no stage 2 to batch"
    if cfg.train != "classifier":
        return "f1 trains in stage 2 (stage2.train=all): one setting per trial"
    if cfg.features != "cached":
        return "stage2.features=augmented runs f1 on augmented images at every step"
    return None


def check_population(cfgs: Sequence[Stage2Config], num_classes: int) -> None:
    """Raise ValueError (one line) unless ``cfgs`` can train as one population."""
    if not cfgs:
        raise ValueError("a population needs at least one member")
    for cfg in cfgs:
        reason = population_reason(cfg)
        if reason:
            raise ValueError(f"no population: {reason}")
        check_stage2(cfg, num_classes)
    for f in fields(Stage2Config):
        if f.name in VARYING:
            continue
        values = {repr(getattr(c, f.name)) for c in cfgs}
        if len(values) > 1:
            raise ValueError(
                f"stage2.{f.name} differs between members ({', '.join(sorted(values))}); "
                f"only {', '.join(sorted(VARYING))} may"
            )


def halving_rungs(epochs: int, grace: int, reduction: int) -> list[int]:
    """The epochs (counted from 1) after which successive halving culls: ``grace * r^i`` below
    ``epochs`` (ASHA's rungs for the same settings)."""
    rungs, t = [], max(1, grace)
    while t < epochs and reduction > 1:
        rungs.append(t)
        t *= reduction
    return rungs


_ACTIVATIONS = {nn.ReLU: torch.relu, nn.Tanh: torch.tanh}


def _direct_layers(module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The layers of a linear classifier, an FCN (``nn.Sequential`` of linear layers and
    ReLU/tanh) or a weight net, which the stacked parameters run as batched matrix products;
    None for any other module (called through ``vmap``)."""
    if isinstance(module, nn.Linear):
        return [("", module)]
    if isinstance(module, WeightNet):
        return [("proj.", module.proj), ("", nn.Tanh()), ("att.", module.att)]
    if isinstance(module, nn.Sequential) and all(
        isinstance(m, (nn.Linear, *_ACTIVATIONS)) for m in module
    ):
        return [(f"{n}.", m) for n, m in module.named_children()]
    return None


class _Stacked:
    """P copies of a module as stacked parameters: linear layers as one batched matrix product
    for all members (``x [B, D] @ W [P, D, K]``: a call per layer, not per member), anything
    else through ``vmap``."""

    def __init__(self, module: nn.Module, p: int) -> None:
        if list(module.buffers()) or any(
            isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm)) for m in module.modules()
        ):
            raise ValueError(
                "stage 2 on cached features trains stacked parameters: the classifier must "
                "have no buffers or dropout (stage2.train=all trains it as one module)"
            )
        copies = [copy.deepcopy(module) for _ in range(p)]
        params, _ = stack_module_state(copies)
        self.params = {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
        self.base = copy.deepcopy(module).to("meta")
        self.layers = _direct_layers(module)
        self.batch_softmax = isinstance(module, WeightNet)  # its forward: softmax over the batch

        def one(ps: dict, x: Tensor) -> Tensor:
            return functional_call(self.base, ps, (x,))

        self._call = vmap(one, in_dims=(0, None))

    def __call__(self, x: Tensor) -> Tensor:
        """x ``[B, ...]`` (shared) -> ``[P, B, ...]``."""
        if self.layers is None:
            return self._call(self.params, x)
        for prefix, layer in self.layers:
            if not isinstance(layer, nn.Linear):
                x = _ACTIVATIONS[type(layer)](x)
                continue
            # (W x^T)^T rather than x W^T: the weight's gradient comes out contiguous
            w = self.params[f"{prefix}weight"]
            x = torch.matmul(w, x.transpose(-1, -2)).transpose(-1, -2)
            bias = self.params.get(f"{prefix}bias")
            if bias is not None:
                x = x + bias.unsqueeze(-2)
        if self.batch_softmax:
            return torch.softmax(x.squeeze(-1), dim=-1)
        return x

    def keep(self, idx: Tensor) -> None:
        self.params = {
            n: t.detach()[idx].clone().requires_grad_(True) for n, t in self.params.items()
        }

    def member_state(self, m: int, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}{n}": t.detach()[m].clone() for n, t in self.params.items()}


# 1 MB of float32: below it a stacked tensor stays in cache between tensor operations
COMPILED_MIN_ELEMENTS = 1 << 18


def _col(values: Sequence[float], like: Tensor) -> Tensor:
    return torch.tensor(list(values), dtype=like.dtype, device=like.device)


class _Optim:
    """Per-member SGD (torch.optim.SGD's update, dampening 0) or Adam (torch.optim.Adam's
    defaults) on stacked tensors ``[P, ...]``, each member with its own step size and
    momentum; ``adam[m]`` picks the rule; ``mask`` (per parameter, ``[P]``) leaves a member's
    tensor untouched."""

    def __init__(self, lr, momentum, weight_decay, nesterov: bool, adam, like: Tensor):
        self.lr, self.mom, self.wd = _col(lr, like), _col(momentum, like), _col(weight_decay, like)
        self.adam = torch.tensor(list(adam), dtype=torch.bool, device=like.device)
        self.nesterov = nesterov
        self._flags()
        self.state: dict[str, dict[str, Tensor]] = {}
        self.steps = 0
        # on the CPU, stacked tensors of at least this many elements take one compiled pass
        # (None: never; tests compare both); smaller ones stay in cache between the tensor
        # operations, which round as torch.optim does
        self.compiled_min: int | None = COMPILED_MIN_ELEMENTS

    def _flags(self) -> None:
        # (any weight decay, any momentum, any Adam, all Adam): work a population skips
        self.flags = (
            bool((self.wd != 0).any()), bool((self.mom != 0).any()),
            bool(self.adam.any()), bool(self.adam.all()),
        )  # fmt: skip
        self.cols = None  # the per-member values as NumPy arrays (the compiled pass)

    def keep(self, idx: Tensor) -> None:
        self.lr, self.mom, self.wd, self.adam = (
            t[idx] for t in (self.lr, self.mom, self.wd, self.adam)
        )
        self.state = {n: {k: v[idx] for k, v in s.items()} for n, s in self.state.items()}
        self._flags()

    @staticmethod
    def _b(v: Tensor, like: Tensor) -> Tensor:
        return v.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(
        self, params: dict[str, Tensor], grads: dict[str, Tensor], masks: dict[str, Tensor | None]
    ) -> None:
        """One step of every member, in place: a large stacked tensor on the CPU in one compiled
        pass (:mod:`trainables.compiled_optim`; as tensor operations it would make 4-5 passes,
        each out of cache), the rest as tensor operations (any device). ``masks[name]``: the
        members whose tensor steps (``[P]`` bool), or None for every member."""
        self.steps += 1
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                continue
            st = self.state.setdefault(name, {})
            mask = masks[name]
            least = self.compiled_min
            if p.device.type == "cpu" and least is not None and p.numel() >= least:
                from trainables.compiled_optim import stacked_step

                if self.cols is None:
                    self.cols = [t.numpy() for t in (self.lr, self.mom, self.wd, self.adam)]
                every = mask if mask is not None else torch.ones(p.shape[0], dtype=torch.bool)
                stacked_step(
                    p, g, st, *self.cols, every.numpy(), steps=self.steps,
                    nesterov=self.nesterov,
                )  # fmt: skip
            else:
                self._tensor_step(p, g, st, mask, *self.flags)

    def _tensor_step(self, p, g, st, mask, any_wd, any_mom, any_adam, all_adam) -> None:
        """One stacked tensor's step as tensor operations. Work a uniform population does not
        need is skipped (weight decay when every member has none, the momentum buffer when no
        member has momentum, the SGD rule when every member uses Adam, the mask when it keeps
        every member): the stacked tensors are P times a single trial's, and each pass over
        them counts."""
        lr = self._b(self.lr, p)
        every = mask is None  # no member masked: update p in place
        new = None
        if not all_adam:  # SGD: torch.optim.SGD's update (dampening 0)
            d = g.addcmul(self._b(self.wd, p), p) if any_wd else g
            if any_mom:
                mom = self._b(self.mom, p)
                if "buf" not in st:
                    st["buf"] = d.clone()
                else:  # a member without momentum: 0 * buf + d = d
                    st["buf"].mul_(mom).add_(d)
                d = d.addcmul(mom, st["buf"]) if self.nesterov else st["buf"]
            if every and not any_adam:
                p.addcmul_(lr, d, value=-1)
                return
            new = p.addcmul(lr, d, value=-1)
        if any_adam:  # torch.optim.Adam's defaults
            b1, b2, eps = 0.9, 0.999, 1e-8
            m1 = st.setdefault("exp_avg", torch.zeros_like(p))
            m2 = st.setdefault("exp_avg_sq", torch.zeros_like(p))
            m1.lerp_(g, 1 - b1)
            m2.mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1, bc2 = 1 - b1**self.steps, 1 - b2**self.steps
            denom = (m2.sqrt() / math.sqrt(bc2)).add_(eps)
            if every and all_adam:
                p.addcmul_(lr / bc1, m1.div(denom), value=-1)
                return
            adam = p.addcmul(lr / bc1, m1.div(denom), value=-1)
            new = adam if new is None else torch.where(self._b(self.adam, p), adam, new)
        p.copy_(new if every else torch.where(self._b(mask, p), new, p))


class _Weights:
    """The members' weights: per-sample logits (``sample``), per-class logits (``class``) or
    both (``class_residual``), or a weight net per member (``net``)."""

    def __init__(self, cfgs, work_data: StageData, model: SplitNet, k: int, device) -> None:
        cfg = cfgs[0]
        self.p = len(cfgs)
        self.net = cfg.weights == "net"
        self.mode, self.raw = cfg.weight_mode, cfg.loss_weights == "raw"
        y = work_data.train.y
        if self.net:
            self.heads = _Stacked(
                WeightNet(model.feature_dim, cfg.weight_net_hidden).to(device), self.p
            )
            self.params = self.heads.params
            self.masks = {
                n: torch.ones(self.p, dtype=torch.bool, device=device) for n in self.params
            }
            return
        n = len(work_data.train)
        dtype = torch.get_default_dtype()
        per_class, start = initial_logits(cfg.weight_init, y, k, raw=self.raw)
        self.labels = y
        self.initial = start.to(device)
        kinds = [c.weight_param for c in cfgs]
        self.is_sample = torch.tensor([w == "sample" for w in kinds], device=device)
        # only the parametrisations some member uses (each is a [P, N] or [P, K] tensor that
        # every step would otherwise index, differentiate and step for nobody)
        used = set(kinds)
        self.params = {}
        if "sample" in used:
            self.params["sample_logits"] = start.to(device).repeat(self.p, 1)
        if used != {"sample"}:
            self.params["class_logits"] = per_class.to(device).repeat(self.p, 1)
        if "class_residual" in used:
            self.params["residual"] = torch.zeros(self.p, n, dtype=dtype, device=device)
        for t in self.params.values():
            t.requires_grad_(True)
        masks = {
            "sample_logits": [w == "sample" for w in kinds],
            "class_logits": [w != "sample" for w in kinds],
            "residual": [w == "class_residual" for w in kinds],
        }
        self.masks = {n: torch.tensor(masks[n], device=device) for n in self.params}

    def keep(self, idx: Tensor) -> None:
        self.masks = {k: v[idx] for k, v in self.masks.items()}
        if self.net:
            self.heads.keep(idx)
            self.params = self.heads.params
            return
        self.is_sample = self.is_sample[idx]
        self.params = {
            k: v.detach()[idx].clone().requires_grad_(True) for k, v in self.params.items()
        }

    def logits(self, idx: Tensor | None = None) -> Tensor:
        """``[P, N]``: each member's per-sample logits (as ``WeightVector.logits``), or only
        those of the samples ``idx``."""
        ps = self.params
        sample, per = ps.get("sample_logits"), None
        if "class_logits" in ps:
            labels = self.labels if idx is None else self.labels[idx]
            per = ps["class_logits"][:, labels]
            if "residual" in ps:
                per = per + (ps["residual"] if idx is None else ps["residual"][:, idx])
        if sample is not None and idx is not None:
            sample = sample[:, idx]
        if per is None or sample is None:
            return sample if per is None else per
        return torch.where(self.is_sample[:, None], sample, per)

    def reset_(self, idx: Tensor) -> None:
        if "sample_logits" in self.params:
            with torch.no_grad():
                self.params["sample_logits"][:, idx] = self.initial[idx]

    def batch(self, idx: Tensor, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """(the OT measure ``[P, B]``, the batch's logits ``[P, B]`` or None for the net)."""
        if self.net:
            return self.heads(z), None  # WeightNet.forward: the softmax over the batch
        lb = self.logits(idx)
        return torch.softmax(lb, dim=1), lb

    @torch.no_grad()
    def loss_weights(self, idx: Tensor, z: Tensor) -> Tensor:
        if self.net:
            return self.heads(z)
        lb = self.logits(idx)
        return lb.clone() if self.raw else torch.softmax(lb, dim=1)

    @torch.no_grad()
    def per_sample(self, train_x: Tensor, *, raw: bool = False) -> Tensor:
        """``[P, N]``: every member's normalised weights over the whole training set (the
        weight net applied to every training feature at once), or its raw logits."""
        if self.net:
            return self.heads(train_x)
        lg = self.logits().detach()
        return lg.clone() if raw else torch.softmax(lg, dim=1)


def train_population(
    model: SplitNet,
    data: StageData,
    cfgs: Sequence[Stage2Config],
    *,
    generator: torch.Generator,
    features: StageData | None = None,
    callback: Callback | None = None,
    on_member_end: Callable[[int, MemberOutcome], None] | None = None,
    on_improve: Callable[[int, StageResult], None] | None = None,
    epoch_end: Callable[[int], None] | None = None,
    rungs: Sequence[int] = (),
    reduction: int = 3,
    parallel: Parallel | None = None,
) -> list[MemberOutcome]:
    """Stage 2 of every setting in ``cfgs`` at once (see the module docstring).

    ``features``: the cached f1 features (as for :func:`trainables.loop.train_stage2`).
    ``callback(member, "stage2", epoch, metrics)``: each member's epoch, with the metrics a
    single trial reports. ``on_member_end(member, outcome)``: as soon as a member is done
    (diverged, culled or finished). ``on_improve(member, result)``: after an epoch that improved
    a member's validation (``result`` is the member's live result). ``epoch_end(epoch)``: after
    every member's callback of the epoch and the culling at a rung. ``rungs``: epochs (from 1)
    after which the members below the top ``1 / reduction`` (by best validation balanced
    accuracy so far) are culled. ``parallel``: data-parallel workers, as for a single trial
    (:func:`trainables.reweight.reweight_step`: the weight step on the whole batch, rank 0's
    weights broadcast, the classifier step on this worker's shard with the gradients summed);
    each member's metrics then also carry ``shard_samples``.
    """
    k = data.num_classes
    check_population(cfgs, k)
    cfg = cfgs[0]
    work_data = features if features is not None else frozen_feature_data(model, data)
    run = _Members(model, work_data, cfgs, k)
    build_q = meta_distribution_builder(cfg, k, generator)
    outcomes: list[MemberOutcome | None] = [None] * len(cfgs)

    def end(m: int, outcome: MemberOutcome) -> None:
        outcomes[m] = outcome
        if on_member_end:
            on_member_end(m, outcome)

    for epoch in range(cfg.epochs):
        losses, shard_samples = run.train_epoch(build_q, generator, parallel)
        for m, err in run.drop_diverged(losses, epoch):
            end(m, MemberOutcome(run.selectors[m].result, error=err))
        if not run.members:
            break
        extra = {} if parallel is None else {"shard_samples": shard_samples}
        run.evaluate(epoch, losses, extra, callback, on_improve)
        if epoch + 1 in rungs and epoch + 1 < cfg.epochs and len(run.members) > 1:
            for m in run.cull(reduction):
                end(m, MemberOutcome(run.selectors[m].result, stopped_epoch=epoch))
        if epoch_end:
            epoch_end(epoch)
    for pos, m in enumerate(run.members):
        last = run.heads.member_state(pos, "")
        end(m, MemberOutcome(run.selectors[m].result, last_state=last))
    return [o for o in outcomes if o is not None]


class _Members:
    """The population between epochs: the stacked heads and weights with their optimisers,
    the active members (by original index) and every member's selection."""

    def __init__(self, model: SplitNet, work_data: StageData, cfgs, k: int) -> None:
        self.cfg, self.data, self.k = cfgs[0], work_data, k
        p_all = len(cfgs)
        self.steps_cfg = [step_config(c, k) for c in cfgs]
        self.heads = _Stacked(model.classifier, p_all)
        self.like = next(iter(self.heads.params.values()))
        self.model_opt = _Optim(
            [c.lr for c in cfgs], [c.momentum for c in cfgs], [c.weight_decay for c in cfgs],
            self.cfg.nesterov, [False] * p_all, self.like,
        )  # fmt: skip
        self.head_masks: dict[str, Tensor | None] = dict.fromkeys(self.heads.params)  # all step
        device = work_data.train.y.device
        self.weights = _Weights(cfgs, work_data, model, k, device)
        self.weight_opt = _Optim(
            [c.weight_lr for c in cfgs], [c.weight_momentum for c in cfgs], [0.0] * p_all,
            False, [c.weight_optimizer == "adam" for c in cfgs],
            next(iter(self.weights.params.values())),
        )  # fmt: skip
        self.members = list(range(p_all))  # active members, by original index
        self.selectors = [Selector() for _ in range(p_all)]
        # each member's post-hoc logit-adjusted reading, selected apart (result.posthoc)
        posthoc = [Selector(keep_state=False) for _ in range(p_all)]
        for sel, adjusted in zip(self.selectors, posthoc, strict=True):
            sel.result.posthoc = adjusted.result
        self.posthoc = posthoc
        for m, w in enumerate(self.weights.per_sample(work_data.train.x)):
            self.selectors[m].result.start_mass, _ = _class_mass(w, work_data.train.y, k)

    def keep(self, pos: list[int]) -> None:
        """Only the members at positions ``pos`` go on."""
        idx = torch.tensor(pos, dtype=torch.long, device=self.like.device)
        self.members = [self.members[i] for i in pos]
        self.heads.keep(idx)
        self.model_opt.keep(idx)
        self.weights.keep(idx)
        self.weight_opt.keep(idx)
        self.like = next(iter(self.heads.params.values()))

    def train_epoch(self, build_q, generator, parallel) -> tuple[list[tuple[float, float]], int]:
        """One epoch of steps for every active member: ((mean OT loss, mean weighted loss) per
        member, the samples of this worker's shards)."""
        data, cfg = self.data, self.cfg
        fixed_q = cfg.meta_distribution == "prototype" and not cfg.prototype_batch
        q = build_q(data.meta.x, data.meta.y) if fixed_q else None
        ot_sum = torch.zeros(len(self.members), device=self.like.device, dtype=self.like.dtype)
        loss_sum = torch.zeros_like(ot_sum)
        steps = shard_samples = 0
        # the meta set is drawn once per epoch, as the released code does
        meta_all = torch.arange(len(data.meta))
        meta_x = data.prepare(data.meta.x[meta_all], augment=True, generator=generator)
        plan = _Plan.of([self.steps_cfg[m] for m in self.members], self.weights, self.like)
        for idx in iterate_batches(len(data.train), cfg.batch_size, shuffle=True,
                                   generator=generator):  # fmt: skip
            idx_dev = idx.to(self.like.device)
            x = data.prepare(data.train.x[idx_dev], augment=True, generator=generator)
            y = data.train.y[idx_dev]
            step_q = q if q is not None else build_q(meta_x, data.meta.y)
            ot, loss = _step(
                x, y, idx_dev, step_q, meta_x, data.meta.y, plan, self.heads, self.model_opt,
                self.head_masks, self.weights, self.weight_opt, self.k, parallel,
            )  # fmt: skip
            if parallel is not None:
                shard_samples += len(range(parallel.rank, idx.numel(), parallel.world))
            ot_sum += ot
            loss_sum += loss
            steps += 1
        sums = zip(ot_sum.tolist(), loss_sum.tolist(), strict=True)
        means = [(o / steps, x / steps) for o, x in sums]
        return means, shard_samples

    def drop_diverged(self, losses: list, epoch: int) -> list[tuple[int, FloatingPointError]]:
        """The members whose epoch loss is not finite, as (member, error), taken out of the
        population (and of ``losses``), as a single trial raises there."""
        ended, alive = [], []
        for pos, m in enumerate(self.members):
            try:
                check_finite(losses[pos][0], "the OT loss", "stage 2", epoch)
                check_finite(losses[pos][1], "the weighted training loss", "stage 2", epoch)
            except FloatingPointError as err:
                ended.append((m, err))
                continue
            alive.append(pos)
        if ended:
            losses[:] = [losses[i] for i in alive]
            self.keep(alive)
        return ended

    def evaluate(self, epoch: int, losses: list, extra: dict, callback, on_improve) -> None:
        """Every member's epoch: its metrics, selection, weight masses and reports."""
        data, k = self.data, self.k
        preds, adjusted = _predict(self.heads, data, self.cfg.la_tau)
        w_all = self.weights.per_sample(data.train.x)
        raw = not self.weights.net and self.weights.raw
        raw_all = self.weights.per_sample(None, raw=True) if raw else None
        views = [_confusions(p, data, k) for p in (preds, adjusted)]
        for pos, m in enumerate(self.members):
            metrics, posthoc = (
                {split: confusion_metrics(cms[split][pos], data.train_counts) for split in cms}
                for cms in views
            )
            sel = self.selectors[m]
            improved = sel.update(epoch, metrics, _View(self.heads, pos))
            self.posthoc[m].update(epoch, posthoc, None)
            mass, per_sample = _class_mass(w_all[pos], data.train.y, k)
            sel.result.weight_mass.append(mass)
            sel.result.sample_weights = per_sample
            if raw_all is not None:
                mass, per_sample = _class_mass(raw_all[pos], data.train.y, k)
                sel.result.raw_mass.append(mass)
                sel.result.raw_sample_weights = per_sample
            if improved and on_improve:
                on_improve(m, sel.result)
            if callback:
                ot_mean, loss_mean = losses[pos]
                epoch_losses = {"ot_loss": ot_mean, "train_loss": loss_mean}
                adjusted_flat = flat_metrics(posthoc, POSTHOC_PREFIX)
                flat = {**epoch_losses, **extra, **flat_metrics(metrics), **adjusted_flat}
                callback(m, "stage2", epoch, flat)

    def cull(self, reduction: int) -> list[int]:
        """Successive halving: keep the top ``1 / reduction`` by best validation so far (ties:
        the lower index); returns the members culled."""
        scores = [self.selectors[m].best_val for m in self.members]
        n_keep = max(1, math.ceil(len(self.members) / reduction))
        order = sorted(range(len(self.members)), key=lambda i: (-scores[i], self.members[i]))
        culled = [self.members[pos] for pos in order[n_keep:]]
        self.keep(sorted(order[:n_keep]))
        return culled


def _class_mass(w: Tensor, y: Tensor, k: int) -> tuple[list[float], list[float]]:
    mass = torch.zeros(k, dtype=w.dtype, device=w.device).index_add(0, y, w)
    return mass.tolist(), w.tolist()


class _View:
    """One member's classifier as a ``state_dict`` (what ``Selector`` copies)."""

    def __init__(self, heads: _Stacked, pos: int) -> None:
        self.heads, self.pos = heads, pos

    def state_dict(self) -> dict[str, Tensor]:
        return self.heads.member_state(self.pos, "classifier.")


def _confusions(preds: dict[str, Tensor], data: StageData, k: int) -> dict[str, Tensor]:
    return {split: confusion_matrices(p, getattr(data, split).y, k) for split, p in preds.items()}


@torch.no_grad()
def _predict(heads: _Stacked, data: StageData, tau: float) -> tuple[dict, dict]:
    """Every member's predicted classes on val and test ``{split: [P, N]}``: from its logits,
    and from them post-hoc logit-adjusted with ``tau`` (one forward pass)."""
    out: tuple[dict, dict] = ({}, {})
    for split in ("val", "test"):
        s = getattr(data, split)
        preds: tuple[list, list] = ([], [])
        for i in iterate_batches(len(s), SplitNet.eval_batch_size, shuffle=False):
            z = heads(s.x[i])  # [P, B, K]
            adjusted = posthoc_logit_adjustment(z, data.train_counts, tau)
            for view, logits in zip(preds, (z, adjusted), strict=True):
                # over the [P, K, B] layout; max's indices (the first maximum, as argmax)
                # cost a fifth of argmax's here (0.66 against 3.5 ms for 32 x 10 x 1000)
                view.append(logits.transpose(1, 2).max(1).indices)
        for view, p in zip(out, preds, strict=True):
            view[split] = torch.cat(p, dim=1) if p else torch.empty(0, dtype=torch.long)
    return out


@dataclass
class _Plan:
    """The members' settings as a step uses them, built once per epoch (members leave only
    between epochs): per-member columns, and which optional work any member needs."""

    cfg: Stage2Config  # the population's shared fields
    fw: Tensor  # [P, 1, 1] feature-cost weight
    lw: Tensor  # [P, 1, 1] label-cost weight
    decay: Tensor | None  # [P] L2 on the weight logits; None when no member has any
    coef: Tensor | None  # [P] meta cross-entropy coefficient; None when no member has any
    learn: bool  # some member learns its weights
    normalize: Tensor | None  # [P] bool: members whose weight step is normalised; None: none
    masks: dict[str, Tensor | None]  # per weight parameter, the members it steps (None: all)
    eps: list[float]
    max_iter: list[int]
    tol: list[float | None]

    @classmethod
    def of(cls, sc: Sequence, weights: _Weights, like: Tensor) -> _Plan:
        device = like.device
        learn = torch.tensor([s.learn_weights for s in sc], device=device)
        masks: dict[str, Tensor | None] = {}
        for n, m in weights.masks.items():
            m = m & learn
            masks[n] = None if bool(m.all()) else m
        decay = _col([s.weight_decay for s in sc], like)
        coef = _col([s.meta_ce_coef for s in sc], like)
        normalize = [s.normalize_weight_grad for s in sc]
        return cls(
            cfg=sc[0],
            fw=_col([s.feature_weight for s in sc], like)[:, None, None],
            lw=_col([s.label_weight for s in sc], like)[:, None, None],
            decay=decay if bool((decay != 0).any()) else None,
            coef=coef if bool((coef != 0).any()) else None,
            learn=bool(learn.any()),
            normalize=torch.tensor(normalize, device=device) if any(normalize) else None,
            masks=masks,
            eps=[s.eps for s in sc],
            max_iter=[s.max_iter for s in sc],
            tol=[s.tol for s in sc],
        )


def _step(
    x, y, idx, q, meta_x, meta_y, plan: _Plan, heads, model_opt, head_masks, weights, weight_opt, k,
    parallel,
):  # fmt: skip
    """Steps (b) and (c) of Algorithm 1 for every member on one batch (f1 frozen: no (a))."""
    p = plan.fw.shape[0]
    cfg0 = plan.cfg
    if not weights.net and weights.mode == "scratch":
        weights.reset_(idx)
    with torch.set_grad_enabled(plan.learn):
        measure, lb = weights.batch(idx, x)
        base_dtype = q.b.dtype
        kind = cfg0.cost
        if kind == "label":
            cost = plan.lw * label_cost(y, q.y, k, dtype=base_dtype)
        else:
            feat = feature_cost(x, q.z)
            cost = plan.fw * feat
            if kind == "combined":
                cost = cost + plan.lw * label_cost(y, q.y, k, dtype=feat.dtype)
        cost = cost.expand(p, -1, -1).to(measure.dtype)
        ot = ot_loss(
            cost,
            measure,
            q.b.to(measure.dtype).expand(p, -1),
            eps=plan.eps,
            max_iter=plan.max_iter,
            tol=plan.tol,
            grad=cfg0.grad,
            stop=cfg0.stop,
            check_every=cfg0.check_every,
            impl=cfg0.impl,
        )
    if plan.learn:
        objective = ot
        if lb is not None and plan.decay is not None:
            objective = objective + 0.5 * plan.decay * (lb**2).sum(1)
        names = list(weights.params)
        grads = torch.autograd.grad(
            objective.sum(), [weights.params[n] for n in names], allow_unused=True
        )
        grads = {
            n: torch.zeros_like(weights.params[n]) if g is None else g
            for n, g in zip(names, grads, strict=True)
        }
        if plan.normalize is not None:
            # each member's step is weight_lr long: its gradient over every weight parameter
            # it learns, divided by its norm (members that do not normalise keep theirs)
            sq = sum(
                ((g * _rows(weights.masks[n], g)).double() ** 2).flatten(1).sum(1)
                for n, g in grads.items()
            )
            norm = torch.sqrt(sq)
            use = plan.normalize & (norm > 0)
            for n, g in grads.items():
                grads[n] = torch.where(_rows(use, g), g / _rows(norm, g).to(g.dtype), g)
        weight_opt.step(weights.params, grads, plan.masks)
        if parallel is not None:  # rank 0's weights: the replicas never drift
            parallel.broadcast_(list(weights.params.values()))
    w_new = weights.loss_weights(idx, x)
    loss = _model_loss(heads, x, y, w_new, plan.coef, meta_x, meta_y, parallel)
    names = list(heads.params)
    grads = torch.autograd.grad(loss.sum(), [heads.params[n] for n in names])
    if parallel is not None:
        parallel.sum_(grads)
        loss = parallel.sum(loss)
    model_opt.step(heads.params, dict(zip(names, grads, strict=True)), head_masks)
    return ot.detach(), loss.detach()


def _model_loss(heads, x, y, w_new, coef, meta_x, meta_y, parallel) -> Tensor:
    """``[P]``: step (c)'s loss of every member, the w-weighted CE plus the meta set's CE; on
    this worker's shard of the batch (the meta term divided among the workers, whose
    gradients are summed)."""
    if parallel is not None:
        pos = parallel.shard(x.shape[0], device=x.device)
        x, y, w_new = x[pos], y[pos], w_new[:, pos]
        coef = None if coef is None else coef / parallel.world
    loss = (w_new * _cross_entropy(heads(x), y)).sum(1)  # heads: [P, B, K]
    if coef is not None:
        loss = loss + coef * _cross_entropy(heads(meta_x), meta_y).mean(1)
    return loss


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """``[P, B]``: each member's cross-entropy per sample, from ``logits [P, B, K]``, over the
    class axis of the ``[P, K, B]`` layout the stacked heads produce (a view; no copy). On a
    CPU torch's log-softmax over a last axis of a few classes costs about 20x the same over a
    leading one (53 against 2.5 us for 512 samples x 10 classes; float32 values the same)."""
    lsm = torch.log_softmax(logits.transpose(1, 2), dim=1)
    return -lsm.gather(1, y.expand(logits.shape[0], 1, -1)).squeeze(1)


def _rows(v: Tensor, like: Tensor) -> Tensor:
    """``[P]`` viewed to broadcast over ``like``'s trailing dimensions."""
    return v.view(-1, *([1] * (like.dim() - 1)))
