"""One full two-stage trial of a registered experiment, runnable without Ray."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from trainables.config import POSTHOC, ExperimentConfig, to_dict
from trainables.data.arrays import StageData, TensorSplit
from trainables.data.longtail import held_per_class, smallest_head
from trainables.fingerprint import code_fingerprint
from trainables.loop import (
    Callback,
    StageResult,
    check_stage1,
    check_stage2,
    frozen_feature_data,
    train_stage1,
)
from trainables.losses import posthoc_logit_adjustment
from trainables.modalities import modality_of
from trainables.models import SplitNet
from trainables.population import check_population, train_population
from trainables.resume import DirStore, Stage1Checkpoints
from trainables.stage2 import train_stage2

__all__ = [
    "POSTHOC_SUMMARY",
    "Stage1Output",
    "add_features",
    "build_stage1",
    "check_config",
    "check_data",
    "data_and_model",
    "features_data",
    "needs_features",
    "pick_device",
    "run_population",
    "run_stage2",
    "run_trial",
    "scalar_summary",
    "stage1_identity",
    "stage1_key",
    "stage1_summary",
    "stage1_threads",
    "trial_result",
]


# a summary's block of the post-hoc logit-adjusted reading (see scalar_summary); its metrics are
# logged under trainables.config.POSTHOC_PREFIX
POSTHOC_SUMMARY = "posthoc_la"


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _scalars(block: dict) -> dict:
    out = {}
    for key, value in block.items():
        if key == "epoch":
            out[key] = value + 1  # counted from 1 wherever a user reads it
        elif isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if isinstance(v, float) or v is None}
    return out


def scalar_summary(res: StageResult) -> dict:
    """The printed part of a stage's result: scalar metrics only, three selections labelled,
    and under ``POSTHOC_SUMMARY`` the same of its post-hoc logit-adjusted reading where it has
    one (a CE stage 1, every stage 2 that trains). Epochs are counted from 1, as the per-epoch
    MLflow steps and ``stage2_epoch`` are."""
    out = {
        "last_epoch": _scalars(res.last),
        "validation_selected": _scalars(res.selected),
        "best_test_epoch (selection on test, as the released code reports)": _scalars(
            res.best_test_epoch
        ),
    }
    if res.posthoc is not None and res.posthoc.last:
        out[POSTHOC_SUMMARY] = scalar_summary(res.posthoc)
    return out


@dataclass
class Stage1Output:
    """What stage 2 needs from stage 1, as tensors and JSON only (cacheable, loadable with
    ``torch.load(weights_only=True)``).

    model_state: the model after the last stage-1 epoch. rng: the trial generator's and torch's
    global RNG state after stage 1, so stage 2 continues exactly as in one uninterrupted run.
    features: the frozen-f1 features of every split when stage 2 trains the classifier only.
    info: data facts (train counts, source, classes) and the stage-1 metrics summary.
    """

    model_state: dict[str, Tensor]
    rng: dict[str, Tensor]
    info: dict
    features: dict[str, Tensor] | None = None


# Bumped when what a cache entry holds, or how it is laid out, changes.
STAGE1_FORMAT = 4
# The folder of ``run_trial``'s output directory that holds stage 1's epoch checkpoints.
STAGE1_CHECKPOINTS = "stage1_checkpoints"
# Where the data sits, and whether it may be fetched, does not change what it is.
_NOT_DATA_IDENTITY = ("root", "download")


def stage1_identity(cfg: ExperimentConfig) -> dict:
    """Everything stage 1's result depends on (the stage-1 cache key hashes this): the data's
    identity (source and split parameters, not its path), the model, stage 0 and stage 1, the
    seed, the source of the code stage 1 runs (:func:`code_fingerprint`), the package version
    and the entry format."""
    from trainables import __version__

    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in _NOT_DATA_IDENTITY}
    return {
        "data": data,
        "model": dataclasses.asdict(cfg.model),
        "stage0": dataclasses.asdict(cfg.stage0),
        "stage1": _trained_stage1(cfg),
        "seed": cfg.seed,
        "code": code_fingerprint(__name__, "trainables.distributed"),
        "version": __version__,
        "format": STAGE1_FORMAT,
    }


def _trained_stage1(cfg: ExperimentConfig) -> dict:
    """Stage 1's fields as trained: post-hoc logit adjustment trains plain CE (every CE build
    also records its adjusted reading), so the two share one build."""
    s1 = dataclasses.asdict(cfg.stage1)
    if s1["loss"] == POSTHOC:
        s1["loss"] = "ce"
    return s1


def stage1_summary(cfg: ExperimentConfig, info: dict) -> dict:
    """The stage-1 selections of ``cfg``'s row from a build's ``info``: the post-hoc adjusted
    reading for ``stage1.loss=logit_adjustment_posthoc``, the model's own logits otherwise
    (with its adjusted reading beside them, where the build has one)."""
    summary = info["summary"]
    return summary[POSTHOC_SUMMARY] if cfg.stage1.loss == POSTHOC else summary


def stage1_key(cfg: ExperimentConfig) -> str:
    """The stage-1 cache key: SHA-256 of :func:`stage1_identity` (also what an epoch
    checkpoint must carry to be resumed)."""
    blob = json.dumps(stage1_identity(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def needs_features(cfg: ExperimentConfig) -> bool:
    """Stage 2 runs on the cached f1 features (not on images re-augmented every step)."""
    s2 = cfg.stage2
    return s2.method == "ot" and s2.train == "classifier" and s2.features == "cached"


_SPLITS = ("train", "meta", "val", "test")


def _pack_features(data: StageData) -> dict[str, Tensor]:
    out = {}
    for name in _SPLITS:
        split = getattr(data, name)
        out[f"{name}_x"] = split.x.detach().cpu().contiguous()
        out[f"{name}_y"] = split.y.detach().cpu().contiguous()
    return out


def features_data(stage1: Stage1Output, device: torch.device) -> StageData:
    """The cached features as a :class:`StageData` (f1 frozen: stage 2 runs on these only)."""
    if stage1.features is None:
        raise ValueError("this stage-1 result has no cached features")
    f = stage1.features
    splits = {n: TensorSplit(f[f"{n}_x"], f[f"{n}_y"]).to(device) for n in _SPLITS}
    return StageData(
        **splits,
        num_classes=int(stage1.info["num_classes"]),
        train_counts=tuple(stage1.info["train_counts"]),
        source=str(stage1.info["data_source"]),
    )


@contextlib.contextmanager
def stage1_threads(cfg: ExperimentConfig) -> Iterator[None]:
    """torch on ``cfg.stage1.threads`` CPU threads inside, the caller's count again after: the
    count changes stage 1's rounding, so every command builds it on the configured one
    (a field of the stage-1 key) and then goes on with its own."""
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.stage1.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_stage1(
    cfg: ExperimentConfig,
    *,
    callback: Callback | None = None,
    device: torch.device | None = None,
    with_features: bool | None = None,
    parallel=None,
    checkpoints: Stage1Checkpoints | None = None,
) -> Stage1Output:
    """Stage 1 of ``cfg`` from scratch, or from the newest valid epoch checkpoint in
    ``checkpoints`` (made with :func:`stage1_key`; see :func:`train_stage1`); every random
    choice seeded from ``cfg.seed``. Stage 0 (text) runs again on a resume.
    ``parallel``: data-parallel workers (:func:`train_stage1`); only rank 0 computes features.
    Runs on ``cfg.stage1.threads`` CPU threads (:func:`stage1_threads`)."""
    with stage1_threads(cfg):
        return _build_stage1(cfg, callback, device, with_features, parallel, checkpoints)


def _build_stage1(
    cfg: ExperimentConfig,
    callback: Callback | None,
    device: torch.device | None,
    with_features: bool | None,
    parallel,
    checkpoints: Stage1Checkpoints | None,
) -> Stage1Output:
    device = device or pick_device()
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    data, model = modality_of(cfg.data.source).start_stage1(
        cfg, device, generator=generator, callback=callback
    )
    s1 = train_stage1(
        model,
        data,
        cfg.stage1,
        generator=generator,
        callback=callback,
        parallel=parallel,
        checkpoints=checkpoints,
    )
    rng = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    feats = None
    wanted = needs_features(cfg) if with_features is None else with_features
    if wanted and (parallel is None or parallel.rank == 0):
        feats = _pack_features(frozen_feature_data(model, data))
    info = {
        "in_channels": int(data.train.x.shape[1]),
        "num_classes": data.num_classes,
        "train_counts": list(data.train_counts),
        "data_source": data.source,
        "summary": scalar_summary(s1),
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return Stage1Output(model_state=state, rng=rng, info=info, features=feats)


def add_features(cfg: ExperimentConfig, stage1: Stage1Output, device: torch.device) -> None:
    """Compute the frozen-f1 features of a cached stage-1 result that lacks them, on stage 1's
    threads (the features a build stores, whoever computes them)."""
    with stage1_threads(cfg):
        data, model = data_and_model(cfg, device, load_pretrained=False)
        model.load_state_dict(stage1.model_state)
        stage1.features = _pack_features(frozen_feature_data(model, data))


def check_config(cfg: ExperimentConfig) -> None:
    """Raise ValueError (one line) for a combination of choices the stages would refuse when
    they start (the cross-field rules of stages 1 and 2; each enumerated choice alone is checked
    when the config is built). Called by the command lines before data is loaded or a cluster
    starts."""
    check_stage1(cfg.stage1)
    check_stage2(cfg.stage2, cfg.data.num_classes)
    _check_long_tail(cfg)


def _check_long_tail(cfg: ExperimentConfig) -> None:
    """With ``data.limit_per_class`` the long tail's counts are known before any image loads:
    every class must keep a training sample at the imbalance factor asked for."""
    d = cfg.data
    if d.limit_per_class <= 0:
        return
    held = held_per_class(d.protocol, d.meta_per_class, d.val_per_class)
    need = held + smallest_head(d.num_classes, d.imbalance_factor)
    if d.limit_per_class < need:
        raise ValueError(
            f"data.limit_per_class={d.limit_per_class} leaves the long tail's last class "
            f"without a training image at data.imbalance_factor={d.imbalance_factor:g} "
            f"({held} per class held for meta and validation): set it to at least {need}"
        )


def check_data(cfg: ExperimentConfig, *, fetch: bool = True) -> None:
    """Before a cluster starts: the experiment's data and pretrained weights are there, fetched
    now when missing (``fetch``, ``data.download`` and online), or
    :class:`~trainables.data.DatasetMissing` / ``PretrainedWeightsMissing`` in one line."""
    modality_of(cfg.data.source).check_data(cfg, fetch=fetch)


def data_and_model(
    cfg: ExperimentConfig, device: torch.device, *, load_pretrained: bool
) -> tuple[StageData, SplitNet]:
    """``cfg``'s data and a fresh model on ``device``, built by its modality, without stage 0.
    ``load_pretrained=False`` when a checkpoint is loaded next."""
    return modality_of(cfg.data.source).data_and_model(cfg, device, load_pretrained=load_pretrained)


def run_stage2(
    cfg: ExperimentConfig,
    stage1: Stage1Output,
    *,
    callback: Callback | None = None,
    device: torch.device | None = None,
    on_improve: Callable[[StageResult, StageData], None] | None = None,
    parallel=None,
) -> tuple[StageResult, StageData]:
    """Stage 2 of ``cfg`` starting from a stage-1 result; returns the result and the data it
    evaluated on (images, or the cached features when f1 is frozen). ``on_improve(result,
    data)`` runs after each epoch that improves validation."""
    device = device or pick_device()
    generator, data, model, features = _stage2_start(cfg, stage1, device, needs_features(cfg))
    adjust = None
    if cfg.stage1.loss == POSTHOC:  # a baseline row: the stage-1 model, read adjusted

        def adjust(logits: Tensor) -> Tensor:
            return posthoc_logit_adjustment(logits, data.train_counts, cfg.stage1.la_tau)

    s2 = train_stage2(
        model,
        data,
        cfg.stage2,
        generator=generator,
        callback=callback,
        features=features,
        on_improve=(lambda r: on_improve(r, data)) if on_improve else None,
        parallel=parallel,
        adjust=adjust,
    )
    return s2, data


def run_population(
    cfgs: list[ExperimentConfig],
    stage1: Stage1Output,
    *,
    device: torch.device | None = None,
    **hooks,
) -> tuple[list, StageData]:
    """Stage 2 of every config in ``cfgs`` as one population
    (:func:`trainables.population.train_population`, whose hooks and ``rungs`` pass through),
    from one stage-1 result, set up as :func:`run_stage2` sets up a single trial (so member
    ``m`` starts where the single trial of ``cfgs[m]`` starts). Returns the members' outcomes
    and the cached features they ran on."""
    cfg = cfgs[0]
    check_population([c.stage2 for c in cfgs], cfg.data.num_classes)
    for c in cfgs[1:]:
        same = dataclasses.replace(c, stage2=cfg.stage2)
        if same != cfg:
            raise ValueError("population members must share everything outside stage2")
    device = device or pick_device()
    generator, data, model, _ = _stage2_start(cfg, stage1, device, True)
    outcomes = train_population(
        model, data, [c.stage2 for c in cfgs], generator=generator, features=data, **hooks
    )
    return outcomes, data


def _stage2_start(cfg: ExperimentConfig, stage1: Stage1Output, device, cached: bool):
    """(generator, data, model, features): where every stage 2 of ``cfg`` starts from
    ``stage1``: its random state, the data (the cached features when ``cached``, also returned
    as ``features``, else None) and the model with stage 1's state loaded."""
    torch.set_rng_state(stage1.rng["torch"])
    generator = torch.Generator()
    generator.set_state(stage1.rng["generator"])
    features = None
    if cached:
        if stage1.features is None:
            add_features(cfg, stage1, device)
        data = features = features_data(stage1, device)
        model, state = modality_of(cfg.data.source).feature_model(
            cfg, data, stage1.model_state, stage1.info
        )
    else:
        data, model = data_and_model(cfg, device, load_pretrained=False)
        state = stage1.model_state
    model = model.to(device)
    model.load_state_dict(state)
    return generator, data, model, features


def run_trial(
    cfg: ExperimentConfig,
    *,
    out_dir: Path | None = None,
    callback: Callback | None = None,
    device: torch.device | None = None,
) -> dict:
    """Stage 1 then stage 2; returns a JSON-ready dict and writes it (and the stage-1
    checkpoint) under ``out_dir`` when given. Every random choice is seeded from ``cfg.seed``.
    With ``out_dir``, stage 1 saves an epoch checkpoint in ``out_dir/stage1_checkpoints/``
    after each epoch and continues from the newest valid one when it is there; they are
    deleted once ``result.json`` is written."""
    device = device or pick_device()
    checkpoints = None
    if out_dir is not None:
        store = DirStore(out_dir / STAGE1_CHECKPOINTS)
        checkpoints = Stage1Checkpoints(store, stage1_key(cfg))
    stage1 = build_stage1(cfg, callback=callback, device=device, checkpoints=checkpoints)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(stage1.model_state, out_dir / "stage1.pt")
    s2, data = run_stage2(cfg, stage1, callback=callback, device=device)
    result = trial_result(cfg, stage1, s2, data)
    if out_dir is not None:
        full = {
            **result,
            "config": to_dict(cfg),
            "stage2_test_per_class_acc": s2.selected.get("test", {}).get("per_class_acc"),
            "stage2_test_confusion": s2.selected.get("test", {}).get("confusion"),
            "stage2_weight_mass": s2.weight_mass,
        }
        (out_dir / "result.json").write_text(json.dumps(full, indent=1))
        checkpoints.clear()
        with contextlib.suppress(OSError):  # a folder someone else put files in stays
            (out_dir / STAGE1_CHECKPOINTS).rmdir()
    return result


def trial_result(cfg: ExperimentConfig, stage1: Stage1Output, s2: StageResult, data) -> dict:
    return {
        "experiment": cfg.name,
        "data_source": data.source,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "train_counts": list(data.train_counts),
        "stage1": stage1_summary(cfg, stage1.info),
        "stage2": scalar_summary(s2),
    }
