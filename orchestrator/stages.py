"""The stage-1 cache: stage 1 runs once per content hash, every later trial loads it.

An entry lives at ``<storage>/stage_cache/<hash>/``: ``checkpoint.pt`` (model state and the RNG
states after stage 1), ``features.pt`` (frozen-f1 features of every split, when stage 2 trains
the classifier only), ``info.json``, and ``manifest.json`` written last with the SHA-256 of
each file. An entry without a manifest is partial; one whose files do not match it is corrupt;
both are rebuilt, never used. Tensors are read with ``torch.load(weights_only=True)``.
While an entry is built, its stage 1's epoch checkpoints live beside it in
``<storage>/stage_cache/<hash>.partial/`` (:func:`partial_rel`), so an interrupted build
continues where it stopped; the folder goes once the entry is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer

from trainables.config import POSTHOC_PREFIX, ExperimentConfig, flatten
from trainables.distributed import DataParallel
from trainables.loop import flat_metrics
from trainables.resume import CheckpointStore, DirStore, Stage1Checkpoints
from trainables.trial import (
    POSTHOC_SUMMARY,
    Stage1Output,
    add_features,
    build_stage1,
    needs_features,
    pick_device,
    stage1_identity,
    stage1_key,
)

from . import names, tracking
from .storage import Storage

__all__ = [
    "CACHE_DIR",
    "CacheEntry",
    "CorruptEntry",
    "StorageStore",
    "build_entry",
    "checkpoint_store",
    "ensure_stage1",
    "flat_summary",
    "invalidate",
    "partial_rel",
    "read_entry",
    "stage1_cpus",
    "stage1_hash",
    "stage1_worker",
    "verify_entry",
    "write_entry",
]

CACHE_DIR = "stage_cache"


class CorruptEntry(RuntimeError):
    """A cache entry that is partial or does not match its manifest."""


def stage1_hash(cfg: ExperimentConfig) -> str:
    """SHA-256 over (data, model, stage-1 config, seed, package version)."""
    return stage1_key(cfg)


@dataclass(frozen=True)
class CacheEntry:
    """Where one stage-1 result lives: ``uri`` is all a trial receives."""

    key: str
    uri: str
    has_features: bool


def _rel(key: str, name: str = "") -> str:
    return f"{CACHE_DIR}/{key[:24]}" + (f"/{name}" if name else "")


def partial_rel(key: str) -> str:
    """Where the epoch checkpoints of an entry being built live, beside it; removed once the
    entry is complete."""
    return f"{CACHE_DIR}/{key[:24]}.partial"


class StorageStore:
    """Epoch checkpoints in a folder of the run storage that is not a local path (an object
    store publishes each PUT whole, so a write is atomic there)."""

    def __init__(self, storage: Storage, rel: str) -> None:
        self.storage, self.rel = storage, rel

    def names(self) -> list[str]:
        return self.storage.list_files(self.rel)

    def read(self, name: str) -> bytes:
        return self.storage.read_bytes(f"{self.rel}/{name}")

    def write(self, name: str, data: bytes) -> None:
        self.storage.write_bytes(f"{self.rel}/{name}", data)

    def delete(self, name: str) -> None:
        self.storage.delete_file(f"{self.rel}/{name}")


def checkpoint_store(storage: Storage, rel: str) -> CheckpointStore:
    """A local storage gets fsync'd writes (:class:`DirStore`); any other, :class:`StorageStore`."""
    if storage.local:
        return DirStore(Path(storage.root) / rel)
    return StorageStore(storage, rel)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_bytes(obj: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_entry(storage: Storage, key: str, identity: dict, out: Stage1Output) -> CacheEntry:
    """Write the files, then the manifest that makes the entry valid."""
    files = {
        "checkpoint.pt": _tensor_bytes({"model": out.model_state, **out.rng}),
        "info.json": json.dumps(out.info, indent=1, sort_keys=True).encode(),
    }
    if out.features is not None:
        files["features.pt"] = _tensor_bytes(out.features)
    for name, data in files.items():
        storage.write_bytes(_rel(key, name), data)
    manifest = {
        "key": key,
        "identity": identity,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "files": {name: {"sha256": _sha(d), "bytes": len(d)} for name, d in files.items()},
    }
    storage.write_bytes(_rel(key, "manifest.json"), json.dumps(manifest, indent=1).encode())
    return CacheEntry(key, storage.child_uri(_rel(key)), out.features is not None)


def _manifest(storage: Storage, key: str) -> dict:
    rel = _rel(key, "manifest.json")
    if not storage.exists(rel):
        raise CorruptEntry(f"stage-1 entry {key[:12]} is partial (no manifest)")
    try:
        manifest = json.loads(storage.read_bytes(rel))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptEntry(f"stage-1 entry {key[:12]}: unreadable manifest ({err})") from None
    if manifest.get("key") != key or not isinstance(manifest.get("files"), dict):
        raise CorruptEntry(f"stage-1 entry {key[:12]}: manifest does not describe this entry")
    return manifest


def _checked(storage: Storage, key: str, manifest: dict, name: str) -> bytes:
    meta = manifest["files"].get(name)
    if meta is None:
        raise CorruptEntry(f"stage-1 entry {key[:12]}: {name} is not in the manifest")
    rel = _rel(key, name)
    if not storage.exists(rel):
        raise CorruptEntry(f"stage-1 entry {key[:12]}: {name} is missing")
    data = storage.read_bytes(rel)
    if len(data) != meta["bytes"] or _sha(data) != meta["sha256"]:
        raise CorruptEntry(f"stage-1 entry {key[:12]}: {name} does not match its checksum")
    return data


def verify_entry(storage: Storage, key: str) -> CacheEntry | None:
    """The entry when it is complete and every file matches its checksum; None when absent.
    Raises :class:`CorruptEntry` for a partial or corrupt one."""
    if not storage.is_dir(_rel(key)):
        return None
    manifest = _manifest(storage, key)
    for name in manifest["files"]:
        _checked(storage, key, manifest, name)
    return CacheEntry(key, storage.child_uri(_rel(key)), "features.pt" in manifest["files"])


def read_entry(entry_uri: str, *, features: bool) -> Stage1Output:
    """Load a verified entry from its URI (what a trial does); checksums are checked again."""
    parent, _, dirname = entry_uri.rstrip("/").rpartition("/")
    storage = Storage(parent.rsplit("/", 1)[0])
    key_dir = f"{CACHE_DIR}/{dirname}"
    manifest_rel = f"{key_dir}/manifest.json"
    if not storage.exists(manifest_rel):
        raise CorruptEntry(f"stage-1 entry {entry_uri} is partial (no manifest)")
    key = json.loads(storage.read_bytes(manifest_rel)).get("key", "")
    if not key.startswith(dirname):
        raise CorruptEntry(f"stage-1 entry {entry_uri}: manifest does not describe this entry")
    manifest = _manifest(storage, key)

    def load(name: str) -> dict:
        data = _checked(storage, key, manifest, name)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    ckpt = load("checkpoint.pt")
    info = json.loads(_checked(storage, key, manifest, "info.json"))
    feats = load("features.pt") if features and "features.pt" in manifest["files"] else None
    rng = {k: ckpt[k] for k in ("generator", "torch")}
    return Stage1Output(model_state=ckpt["model"], rng=rng, info=info, features=feats)


def invalidate(storage: Storage, key: str) -> None:
    storage.delete_dir(_rel(key))


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
    out = read_entry(storage.child_uri(_rel(key)), features=False)
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
