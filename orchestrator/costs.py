"""Measured per-epoch costs, for ``reproduce --dry-run``'s estimate of device hours.

Each entry: seconds per stage-1 epoch and per stage-2 (OT) epoch of an experiment at its own
default size, the device they were measured on, and where the number comes from. An experiment
without an entry is reported as "not measured", never guessed. Epoch costs scale with the number
of training samples (CIFAR-LT at another imbalance factor has fewer).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from trainables.config import ExperimentConfig
from trainables.data.longtail import longtail_counts

__all__ = [
    "COSTS",
    "FIXED",
    "META_STAGE1",
    "EpochCost",
    "FixedCosts",
    "Plan",
    "estimate_plan",
    "estimate_seconds",
]


@dataclass(frozen=True)
class EpochCost:
    """Seconds per epoch. Stage 2 has two costs that differ by orders of magnitude: training f1
    (``stage2.train=all``: the virtual step and the meta forward through the network) and the
    classifier alone on cached features (``stage2.train=classifier``). None: not measured."""

    device: str
    stage1_epoch_s: float
    stage2_epoch_s: float | None  # stage 2 training f1
    n_train: int  # training samples at the measured size
    source: str
    stage2_cached_epoch_s: float | None = None  # stage 2 on cached features (f1 frozen)


_CIFAR10_IF100 = sum(longtail_counts(4970, 10, 100.0))

COSTS: dict[str, EpochCost] = {
    # Issue #8 (measured on one H100, eager torch): a ResNet-32 CIFAR-LT-10 IF 100 stage 1 of
    # 200 epochs took 5.5-5.9 min; a stage-2 step costs a CE step (13.3 ms) plus the unrolled
    # 200-iteration OT loss and gradient (54 ms) at batch 16.
    "image_cifar10_lt": EpochCost(
        "H100", 5.7 * 60 / 200, _CIFAR10_IF100 / 16 * 0.0673, _CIFAR10_IF100, "issue #8, H100"
    ),
    # Measured on this project's 2-core CPU machines (no GPU):
    # reproduce offline_image --seeds 3: stage 1 0.51-0.61 s per epoch (MLflow metric times of 4
    # builds), stage 2 (OT, classifier on cached features) median 0.22 s per epoch (12 runs).
    "image_mnist_lt": EpochCost(
        "2-core CPU", 0.55, None, 913, "reproduce offline_image", stage2_cached_epoch_s=0.22
    ),
    # bench/pointcloud_shapes_ot_vs_ce.py: PointNet stage 1, 25 epochs in 24.4 s alone; DGCNN
    # 25 epochs in 373-413 s with another job on the same cores.
    "pointcloud_shapes": EpochCost("2-core CPU", 24.4 / 25, None, 556, "shapes benchmark"),
    "pointcloud_shapes:dgcnn": EpochCost("2-core CPU", 400.0 / 25, None, 556, "shapes benchmark"),
    # bench/text_tweets_ot_vs_ce.py: stages 0-1 (1 + 2 epochs) 100-130 s per seed, counted
    # here as 2 stage-1 epochs; one stage-2 epoch on cached features 1.26 s.
    "text_tweets": EpochCost(
        "2-core CPU", 115.0 / 2, None, 1100, "tweets benchmark", stage2_cached_epoch_s=1.26
    ),
}
COSTS["image_cifar100_lt"] = COSTS["image_cifar10_lt"]  # same network and input size

# A stage-1 epoch of a meta re-weighting baseline (stage1.reweight, from stage1.meta_start on)
# as a multiple of the plain stage-1 epoch of the same experiment: the virtual step and the meta
# forward per batch. Measured with `reproduce offline_image --seeds 1 --methods l2rw
# meta_weight_net metasaug_ce metasaug_ldam` on an idle 2-core CPU (MLflow durations of the
# 30-epoch stage-1 builds less the fixed cost below, against image_mnist_lt's 0.55 s plain
# epoch): l2rw and mwn 116 s (30 meta epochs), metasaug 46-48 s (10 meta epochs after 20 plain).
META_STAGE1 = {"l2rw": 6.9, "mwn": 6.9, "metasaug": 6.8}


@dataclass(frozen=True)
class FixedCosts:
    """Seconds a command spends besides its epochs. ``invocation_s``: imports, the store, Ray and
    Tune start-up, the closing report and figures; ``build_s``: each stage-1 build (the Ray
    task, data loading, per-epoch evaluation, the cache write, its MLflow run); ``run_s``: each
    run's slot (the trial actor, data loading, its MLflow run and artifacts)."""

    device: str
    invocation_s: float
    build_s: float
    run_s: float
    source: str


# `reproduce offline_image --smoke` on an idle 2-core CPU took 101.5 s: 17.7 s to the first
# build, 7 builds one after another (each asks for the whole node), 7 s of Tune start-up, 8
# runs 2 at a time in 13 s, 9 s of closing report and figures.
FIXED = FixedCosts("2-core CPU", 34.0, 2.4, 3.0, "reproduce offline_image --smoke, idle")


def _n_train(cfg: ExperimentConfig, ref: EpochCost) -> int:
    d = cfg.data
    if d.source in ("cifar", "cifar10_jpeg") and not d.limit_per_class:
        pool = 5000 if d.num_classes == 10 else 500
        head = d.meta_per_class + d.val_per_class
        return sum(longtail_counts(pool - head, d.num_classes, d.imbalance_factor))
    return ref.n_train


def estimate_seconds(cfg: ExperimentConfig, *, stage1: bool, stage2: bool) -> tuple[float, str]:
    """(seconds, device) for one run's stage 1 and / or stage 2; raises KeyError, whose
    argument says what is missing, when that part has no measured cost."""
    ref = COSTS.get(f"{cfg.name}:{cfg.model.arch}") or COSTS.get(cfg.name)
    if ref is None:
        raise KeyError(cfg.name)
    scale = _n_train(cfg, ref) / ref.n_train
    total = 0.0
    if stage1:
        epochs, meta = cfg.stage1.epochs, 0
        if cfg.stage1.reweight != "none":  # plain epochs before meta_start, meta epochs after
            meta = max(0, epochs - cfg.stage1.meta_start)
        plain = epochs - meta
        factor = META_STAGE1.get(cfg.stage1.reweight, 1.0)
        total += (plain + meta * factor) * ref.stage1_epoch_s * scale
    if stage2 and cfg.stage2.method != "none":
        cached = cfg.stage2.train == "classifier"
        per_epoch = ref.stage2_cached_epoch_s if cached else ref.stage2_epoch_s
        if per_epoch is None:
            what = "on cached features" if cached else "training f1"
            raise KeyError(f"{cfg.name} (stage 2 {what})")
        total += cfg.stage2.epochs * per_epoch * scale
    return total, ref.device


@dataclass
class Plan:
    """A command's estimate: device seconds per device (epochs only), the wall-clock estimate
    (epochs and fixed costs, builds one after another, runs ``concurrency`` at a time), and
    what has no measured cost (the wall clock then leaves it out)."""

    device_s: dict[str, float]
    wall_s: float
    unmeasured: set[str]


def estimate_plan(
    runs: list[tuple[ExperimentConfig, str]],
    concurrency: int,
    cached: Collection[str] = (),
    groups: Sequence[Sequence[int]] | None = None,
) -> Plan:
    """``runs``: (config, stage-1 key) of every run left; the first run of a key builds it,
    unless the key is ``cached``. ``groups``: indices of the runs that train as one population
    (one trial: one slot and its fixed cost; each member's stage 2 counted at its single-trial
    cost, since no saving was measured for the small populations of a table); default, one run
    per group. ``concurrency`` counts groups at a time."""
    device: dict[str, float] = {}
    unmeasured: set[str] = set()
    builds = run_slots = 0.0
    seen: set[str] = set(cached)
    group_of = list(range(len(runs)))
    for g, members in enumerate(groups or []):
        for i in members:
            group_of[i] = len(runs) + g
    slotted: set[int] = set()
    for i, (cfg, key) in enumerate(runs):
        first = key not in seen
        seen.add(key)
        for part in ("stage1", "stage2"):
            if part == "stage1" and not first:
                continue
            try:
                sec, dev = estimate_seconds(cfg, stage1=part == "stage1", stage2=part == "stage2")
            except KeyError as err:
                unmeasured.add(str(err.args[0]) if err.args else cfg.name)
                continue
            device[dev] = device.get(dev, 0.0) + sec
            if part == "stage1":
                builds += FIXED.build_s + sec
            else:
                run_slots += sec + (0.0 if group_of[i] in slotted else FIXED.run_s)
                slotted.add(group_of[i])
    wall = (FIXED.invocation_s + builds + run_slots / max(1, concurrency)) if runs else 0.0
    return Plan(device, wall, unmeasured)
