"""Stage 1 built once per content hash, on the cluster (:func:`ensure_stage1`): a Ray task, or
a Ray Train run for data-parallel workers, that writes the cache entry
(:mod:`~orchestrator.stage_cache`) every later trial loads."""

from __future__ import annotations

import ray
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer

from trainables.config import POSTHOC_PREFIX, ExperimentConfig, flatten
from trainables.distributed import DataParallel
from trainables.loop import flat_metrics
from trainables.resume import Stage1Checkpoints
from trainables.trial import (
    POSTHOC_SUMMARY,
    add_features,
    build_stage1,
    needs_features,
    pick_device,
    stage1_identity,
)

from . import names, tracking
from .stage_cache import (
    CacheEntry,
    CorruptEntry,
    checkpoint_store,
    entry_rel,
    invalidate,
    partial_rel,
    read_entry,
    stage1_hash,
    verify_entry,
    write_entry,
)
from .storage import Storage

__all__ = [
    "add_entry_features",
    "build_entry",
    "ensure_stage1",
    "flat_summary",
    "stage1_cpus",
    "stage1_worker",
]


def build_entry(
    cfg: ExperimentConfig,
    storage_uri: str,
    spec: tracking.TrackingSpec | None,
    *,
    sweep_run_id: str = "",
    parallel=None,
    device: torch.device | None = None,
) -> CacheEntry | None:
    """Run stage 1 and store it (the body of the Ray task, or of each Ray Train worker when
    ``parallel``: rank 0 writes the entry and the MLflow run); one MLflow run per build.
    Stage 1 runs on ``cfg.stage1.threads`` threads, whatever the task was granted.
    A single-worker build saves an epoch checkpoint after each epoch in :func:`partial_rel`
    and continues from the newest valid one an interrupted build left there; its MLflow run
    then gets the epochs before it again (from the checkpoint), so it holds the whole curve
    once. The partial folder is deleted once the entry is written."""
    device = device or pick_device()
    if parallel is not None and parallel.rank != 0:
        build_stage1(cfg, device=device, parallel=parallel)
        return None
    storage = Storage(storage_uri)
    key = stage1_hash(cfg)
    c = run_id = None
    if spec is not None:
        c = tracking.client(spec.uri)
        run_id = c.create_run(
            spec.experiment_id,
            run_name=f"stage1-{key[:12]}",
            tags={
                names.KIND: "stage1_build",
                names.STAGE1_HASH: key,
                names.EXPERIMENT: cfg.name,
                names.TRIGGERED_BY: sweep_run_id,
                names.WORKERS: str(cfg.stage1.workers),
            },
        ).info.run_id
        identity_params = {
            k: v
            for k, v in flatten(cfg).items()
            if k.split(".")[0] in ("data", "model", "stage0", "stage1", "seed")
        }
        tracking.log_params(c, run_id, identity_params)

    def log_epoch(stage: str, epoch: int, metrics: dict) -> None:
        if c is not None:
            if stage != "stage1":  # stage 0 (text) keeps its own keys
                metrics = {f"{stage}/{k}": v for k, v in metrics.items()}
            tracking.log_metrics(c, run_id, metrics, step=epoch + 1)  # epochs from 1

    checkpoints = None
    if parallel is None:  # a data-parallel build starts again from its first epoch
        checkpoints = Stage1Checkpoints(checkpoint_store(storage, partial_rel(key)), key)
        if c is not None and storage.list_files(partial_rel(key)):
            # resuming: the build that left these checkpoints died with its process, its run
            # still RUNNING; it is closed as interrupted (this run gets its epochs again)
            tags = {names.KIND: "stage1_build", names.STAGE1_HASH: key}
            earlier = tracking.runs_with_tags(c, spec.experiment_id, tags)
            stale = [r for r in earlier if r.info.run_id != run_id]
            tracking.close_running(c, stale, tag=names.INTERRUPTED, status="KILLED")
    try:
        out = build_stage1(
            cfg, callback=log_epoch, device=device, parallel=parallel, checkpoints=checkpoints
        )
        entry = write_entry(storage, key, stage1_identity(cfg), out)
        storage.delete_dir(partial_rel(key))
    except BaseException as err:
        if c is not None:
            c.set_tag(run_id, names.ERROR, str(err)[:5000])
            c.set_terminated(run_id, status="FAILED")
        raise
    if c is not None:
        c.log_dict(run_id, out.info, "stage1_info.json")
        summary = out.info.get("summary", {})
        step = int(summary.get("last_epoch", {}).get("epoch", 0))
        tracking.log_metrics(c, run_id, flat_summary(summary), step=step)
        c.set_terminated(run_id, status="FINISHED")
    return entry


def add_entry_features(cfg: ExperimentConfig, storage_uri: str) -> CacheEntry:
    """Compute the features of an entry built without them (a later sweep freezes f1), on
    ``cfg.stage1.threads`` threads."""
    storage = Storage(storage_uri)
    key = stage1_hash(cfg)
    out = read_entry(storage.child_uri(entry_rel(key)), features=False)
    add_features(cfg, out, pick_device())
    return write_entry(storage, key, stage1_identity(cfg), out)


def stage1_cpus(cfg: ExperimentConfig, max_cpus: float) -> float:
    """The CPUs a stage-1 task, or each of its ``stage1.workers`` data-parallel workers, asks
    Ray for: its threads (``stage1.threads``), all of them together at most ``max_cpus`` (the
    largest node's). More threads than that are not cut to fit, which would change the stage 1
    the key names: they share the CPUs granted, slower, with the same rounding."""
    return min(float(cfg.stage1.threads), max(max_cpus, 1) / cfg.stage1.workers)


def _close_interrupted_build(spec: tracking.TrackingSpec, key: str, sweep_run_id: str) -> None:
    """The driver stopped (Ctrl-C, SIGTERM, a failure of its own) while its build of ``key``
    ran: the task goes with the driver and cannot close its own run, so the driver closes it
    (KILLED, ``ot.interrupted``). The epoch checkpoints stay for the next build to continue."""
    c = tracking.client(spec.uri)
    tags = {names.KIND: "stage1_build", names.STAGE1_HASH: key}
    builds = tracking.runs_with_tags(c, spec.experiment_id, tags)
    ours = [r for r in builds if r.data.tags.get(names.TRIGGERED_BY) == sweep_run_id]
    tracking.close_running(c, ours, tag=names.INTERRUPTED, status="KILLED")


def ensure_stage1(
    cfg: ExperimentConfig,
    storage: Storage,
    spec: tracking.TrackingSpec | None,
    *,
    max_cpus: float = 1,
    num_gpus: float = 0,
    sweep_run_id: str = "",
    log=print,
) -> tuple[CacheEntry, bool]:
    """The verified cache entry for ``cfg``'s stage 1, built on the cluster (a Ray task) when
    absent, partial or corrupt. Returns (entry, built). ``max_cpus``: the most CPUs one task
    may ask for (the largest node's; :func:`stage1_cpus`)."""
    num_cpus = stage1_cpus(cfg, max_cpus)
    if num_cpus < cfg.stage1.threads:
        log(
            f"stage 1: {cfg.stage1.threads} threads (stage1.threads) per process on "
            f"{num_cpus:g} CPUs: they share them"
        )
    key = stage1_hash(cfg)
    try:
        entry = verify_entry(storage, key)
    except CorruptEntry as err:
        log(f"stage 1: {err}; rebuilding it")
        invalidate(storage, key)
        entry = None
    if entry is not None and needs_features(cfg) and not entry.has_features:
        log(f"stage 1: cached ({key[:12]}); adding the frozen-f1 features stage 2 needs")
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(add_entry_features)
        entry = ray.get(task.remote(cfg, storage.uri))
        return entry, False
    if entry is not None:
        log(f"stage 1: cached ({key[:12]}), no stage-1 work")
        return entry, False
    workers = cfg.stage1.workers
    where = f"{workers} Ray Train workers" if workers > 1 else "a Ray task"
    log(f"stage 1: building {key[:12]} on the cluster, {where} ({cfg.stage1.epochs} epochs)")
    try:
        if workers > 1:
            _build_data_parallel(cfg, storage, spec, num_cpus, num_gpus, sweep_run_id)
        else:
            task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(build_entry)
            ray.get(task.remote(cfg, storage.uri, spec, sweep_run_id=sweep_run_id))
    except BaseException:
        if spec is not None:
            _close_interrupted_build(spec, key, sweep_run_id)
        raise
    entry = verify_entry(storage, key)  # what trials will read, checked once more
    if entry is None:
        raise CorruptEntry(f"stage-1 entry {key[:12]} is missing after its build")
    return entry, True


def stage1_worker(loop_config: dict) -> None:
    """One Ray Train worker of a data-parallel stage-1 build."""
    build_entry(
        loop_config["cfg"],
        loop_config["storage_uri"],
        loop_config["spec"],
        sweep_run_id=loop_config["sweep_run_id"],
        parallel=DataParallel.from_process_group(),
        device=ray.train.torch.get_device(),
    )


def _build_data_parallel(
    cfg: ExperimentConfig,
    storage: Storage,
    spec: tracking.TrackingSpec | None,
    num_cpus: float,
    num_gpus: float,
    sweep_run_id: str,
) -> None:
    workers = cfg.stage1.workers
    per_worker = {"CPU": num_cpus}
    if num_gpus:
        per_worker["GPU"] = 1.0
    key = stage1_hash(cfg)
    TorchTrainer(
        stage1_worker,
        train_loop_config={
            "cfg": cfg,
            "storage_uri": storage.uri,
            "spec": spec,
            "sweep_run_id": sweep_run_id,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=bool(num_gpus), resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"stage1-{key[:12]}", storage_path=storage.child_uri("ray_train")
        ),
    ).fit()


def flat_summary(summary: dict, prefix: str = "") -> dict:
    """``{names.summary_metric(selection, split, metric, prefix): value}`` from a
    :func:`trainables.trial.scalar_summary`."""
    flat = {}
    for sel_long, block in summary.items():
        if sel_long == POSTHOC_SUMMARY:  # the adjusted reading: "posthoc_la/<group>/..."
            flat.update(flat_summary(block, prefix + POSTHOC_PREFIX))
            continue
        selection = sel_long.split(" ")[0]  # "best_test_epoch (selection on test ...)"
        group = names.summary_group(selection, prefix)
        flat.update(flat_metrics({s: block[s] for s in ("val", "test") if s in block}, group))
        if "epoch" in block:
            flat[group + "epoch"] = block["epoch"]
    return flat
