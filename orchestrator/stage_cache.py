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

import torch

from trainables.config import ExperimentConfig
from trainables.resume import CheckpointStore, DirStore
from trainables.trial import Stage1Output, stage1_key

from .storage import Storage

__all__ = [
    "CACHE_DIR",
    "CacheEntry",
    "CorruptEntry",
    "StorageStore",
    "checkpoint_store",
    "entry_rel",
    "invalidate",
    "partial_rel",
    "read_entry",
    "stage1_hash",
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


def entry_rel(key: str, name: str = "") -> str:
    """An entry's folder (or file ``name`` in it), relative to the run storage."""
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
        storage.write_bytes(entry_rel(key, name), data)
    manifest = {
        "key": key,
        "identity": identity,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "files": {name: {"sha256": _sha(d), "bytes": len(d)} for name, d in files.items()},
    }
    storage.write_bytes(entry_rel(key, "manifest.json"), json.dumps(manifest, indent=1).encode())
    return CacheEntry(key, storage.child_uri(entry_rel(key)), out.features is not None)


def _manifest(storage: Storage, key: str) -> dict:
    rel = entry_rel(key, "manifest.json")
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
    rel = entry_rel(key, name)
    if not storage.exists(rel):
        raise CorruptEntry(f"stage-1 entry {key[:12]}: {name} is missing")
    data = storage.read_bytes(rel)
    if len(data) != meta["bytes"] or _sha(data) != meta["sha256"]:
        raise CorruptEntry(f"stage-1 entry {key[:12]}: {name} does not match its checksum")
    return data


def verify_entry(storage: Storage, key: str) -> CacheEntry | None:
    """The entry when it is complete and every file matches its checksum; None when absent.
    Raises :class:`CorruptEntry` for a partial or corrupt one."""
    if not storage.is_dir(entry_rel(key)):
        return None
    manifest = _manifest(storage, key)
    for name in manifest["files"]:
        _checked(storage, key, manifest, name)
    return CacheEntry(key, storage.child_uri(entry_rel(key)), "features.pt" in manifest["files"])


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
    storage.delete_dir(entry_rel(key))
