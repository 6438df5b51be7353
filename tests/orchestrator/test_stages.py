"""The stage-1 cache: content hash, checksums, partial and corrupt entries, safe loading."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle

import pytest
import torch

from orchestrator.stage_cache import (
    CorruptEntry,
    read_entry,
    stage1_hash,
    verify_entry,
    write_entry,
)
from orchestrator.storage import Storage
from search_spaces import resolve
from trainables.config import apply_overrides
from trainables.trial import Stage1Output, stage1_identity


def _output(with_features: bool = True) -> Stage1Output:
    g = torch.Generator().manual_seed(3)
    feats = None
    if with_features:
        feats = {
            f"{s}_{k}": (torch.randn(4, 5, generator=g) if k == "x" else torch.arange(4))
            for s in ("train", "meta", "val", "test")
            for k in ("x", "y")
        }
    return Stage1Output(
        model_state={"w": torch.randn(3, 2, generator=g), "b": torch.zeros(3)},
        rng={"generator": g.get_state(), "torch": torch.get_rng_state()},
        info={"num_classes": 3, "train_counts": [4, 2, 1], "data_source": "x", "in_channels": 1},
        features=feats,
    )


@pytest.fixture
def cfg():
    return resolve("image_mnist_lt", smoke=True)


def test_hash_covers_stage1_inputs_only(cfg):
    key = stage1_hash(cfg)
    assert len(key) == 64 and key == stage1_hash(dataclasses.replace(cfg))
    # stage-2 knobs (what a sweep searches) do not change stage 1
    assert stage1_hash(apply_overrides(cfg, ["stage2.eps=0.5", "stage2.lr=0.3"])) == key
    for change in ("seed=1", "stage1.lr=0.01", "data.imbalance_factor=20", "model.arch=resnet32"):
        assert stage1_hash(apply_overrides(cfg, [change])) != key, change


def test_round_trip(tmp_path, cfg):
    storage = Storage(str(tmp_path))
    key = stage1_hash(cfg)
    out = _output()
    entry = write_entry(storage, key, stage1_identity(cfg), out)
    assert entry.has_features and entry.uri.startswith(str(tmp_path))
    assert verify_entry(storage, key) == entry
    back = read_entry(entry.uri, features=True)
    assert torch.equal(back.model_state["w"], out.model_state["w"])
    assert torch.equal(back.rng["generator"], out.rng["generator"])
    assert torch.equal(back.features["val_x"], out.features["val_x"])
    assert back.info == out.info
    assert read_entry(entry.uri, features=False).features is None
    manifest = json.loads((tmp_path / "stage_cache" / key[:24] / "manifest.json").read_text())
    assert manifest["identity"]["seed"] == cfg.seed and set(manifest["files"]) == {
        "checkpoint.pt",
        "features.pt",
        "info.json",
    }


def test_absent_partial_and_corrupt(tmp_path, cfg):
    storage = Storage(str(tmp_path))
    key = stage1_hash(cfg)
    assert verify_entry(storage, key) is None
    entry = write_entry(storage, key, stage1_identity(cfg), _output(with_features=False))
    assert not entry.has_features
    d = tmp_path / "stage_cache" / key[:24]
    ckpt = d / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CorruptEntry, match="checksum"):
        verify_entry(storage, key)
    with pytest.raises(CorruptEntry, match="checksum"):
        read_entry(entry.uri, features=False)
    ckpt.unlink()
    with pytest.raises(CorruptEntry, match="missing"):
        verify_entry(storage, key)
    (d / "manifest.json").unlink()
    with pytest.raises(CorruptEntry, match="partial"):
        verify_entry(storage, key)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptEntry, match="unreadable"):
        verify_entry(storage, key)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_checkpoints_load_weights_only(tmp_path, cfg):
    """A checkpoint holding arbitrary pickled objects is refused even with a valid checksum."""
    storage = Storage(str(tmp_path))
    key = stage1_hash(cfg)
    entry = write_entry(storage, key, stage1_identity(cfg), _output(with_features=False))
    d = tmp_path / "stage_cache" / key[:24]
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1)}, "evil": _Evil()}, buf)
    payload = buf.getvalue()
    (d / "checkpoint.pt").write_bytes(payload)
    manifest = json.loads((d / "manifest.json").read_text())
    import hashlib

    manifest["files"]["checkpoint.pt"] = {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert verify_entry(storage, key) is not None  # checksums match ...
    with pytest.raises(pickle.UnpicklingError):  # ... but nothing is unpickled blindly
        read_entry(entry.uri, features=False)


def test_storage_writes_are_whole(tmp_path):
    storage = Storage(str(tmp_path / "s"))
    storage.write_bytes("a/b/c.bin", b"xyz")
    assert storage.read_bytes("a/b/c.bin") == b"xyz"
    assert not [p for p in (tmp_path / "s" / "a" / "b").iterdir() if ".tmp-" in p.name]
    assert storage.list_dirs("a") == ["b"] and storage.list_dirs("nope") == []


def test_features_are_added_to_an_entry_built_without_them(tmp_path, cfg):
    """A later sweep that freezes f1 adds the features to the cached stage 1 (no rebuild)."""
    from orchestrator.stages import add_entry_features, build_entry

    trains_all = apply_overrides(cfg, ["stage2.train=all"])
    assert stage1_hash(trains_all) == stage1_hash(cfg)  # the same stage 1
    storage = Storage(str(tmp_path))
    entry = build_entry(trains_all, storage.uri, None)
    assert not entry.has_features
    before = read_entry(entry.uri, features=False)
    added = add_entry_features(cfg, storage.uri)
    assert added.has_features and verify_entry(storage, entry.key) == added
    after = read_entry(added.uri, features=True)
    key = "classifier.weight"
    assert torch.equal(after.model_state[key], before.model_state[key])
    n_train = sum(after.info["train_counts"])
    assert after.features["train_x"].shape == (n_train, 64)  # small_cnn's pooled feature
