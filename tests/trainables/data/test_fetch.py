"""Fetching missing sources through their own libraries, against a loopback server
(tests/_loopback.py, 127.0.0.1 only), and the offline behaviour.

The Hugging Face libraries read ``HF_ENDPOINT`` and the offline switches when they are imported,
so their tests run in a fresh interpreter pointed at the server; torchvision and torch-geometric
read the project's ``OT_DATA_MIRROR`` at call time and are tested in this process.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests._loopback import (
    LoopbackServer,
    glue_sst2_files,
    sst5_files,
    tiny_bert_files,
)
from trainables.data import DatasetMissing
from trainables.data.fetch import OFFLINE_VARS, mirrored, unreachable

REPO = Path(__file__).resolve().parents[3]


def _online(monkeypatch, srv: LoopbackServer) -> None:
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OT_DATA_MIRROR", srv.url)


def _env(srv: LoopbackServer | None, home: Path, *, offline: bool = False, url: str = "") -> dict:
    env = dict(os.environ)
    env["HF_HOME"] = str(home)
    env["TORCH_HOME"] = str(home / "torch")
    base = url or (srv.url if srv else "")
    if base:
        env["HF_ENDPOINT"] = base
        env["OT_DATA_MIRROR"] = base
    # explicit values: the `command` fixture lays this over the suite's offline environment
    env.update({var: "1" if offline else "0" for var in OFFLINE_VARS})
    return env


def _python(code: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _last_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- the helpers


def test_mirror_replaces_scheme_and_host_and_keeps_the_path(monkeypatch):
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    monkeypatch.delenv("OT_DATA_MIRROR", raising=False)
    assert mirrored(url) == url
    monkeypatch.setenv("OT_DATA_MIRROR", "http://127.0.0.1:8000/cache/")
    assert mirrored(url) == "http://127.0.0.1:8000/cache/~kriz/cifar-10-python.tar.gz"
    monkeypatch.setenv("OT_DATA_MIRROR", "127.0.0.1:8000")
    with pytest.raises(ValueError, match="OT_DATA_MIRROR"):
        mirrored(url)


def test_unreachable_says_why_and_a_listening_server_is_reachable(free_port):
    why = unreachable(f"http://127.0.0.1:{free_port}/x", timeout=2)
    assert why is not None and f"127.0.0.1:{free_port}" in why
    with LoopbackServer() as srv:
        assert unreachable(srv.url + "/anything") is None


# --------------------------------------------------------------------------- CIFAR (torchvision)


def _cifar10_archive() -> tuple[bytes, np.ndarray, np.ndarray]:
    """cifar-10-python.tar.gz in the real layout: five train batches of 3 images, a test batch
    of 4, batches.meta; pixels seeded. Returns (archive, train images HWC, test labels)."""
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, size=(19, 3072), dtype=np.uint8)
    labels = [int(i % 10) for i in range(19)]
    members = {}
    for b in range(5):
        part = slice(3 * b, 3 * b + 3)
        batch = {b"data": rows[part], b"labels": labels[part], b"batch_label": b"train"}
        members[f"data_batch_{b + 1}"] = pickle.dumps(batch, protocol=2)
    members["test_batch"] = pickle.dumps({b"data": rows[15:], b"labels": labels[15:]}, protocol=2)
    names = b"airplane automobile bird cat deer dog frog horse ship truck".split()
    members["batches.meta"] = pickle.dumps({b"label_names": names}, protocol=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    train = rows[:15].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return buf.getvalue(), train, np.asarray(labels[15:])


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if ".partial-" in p.name) if root.exists() else []


def test_cifar_is_fetched_through_torchvision_checked_and_moved_into_place(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    from trainables.data.cifar import load_cifar

    archive, train, test_labels = _cifar10_archive()
    with LoopbackServer() as srv:
        srv.add_file("/~kriz/cifar-10-python.tar.gz", archive)
        _online(monkeypatch, srv)
        # torchvision's own check: the fixture is not the real archive, so its md5 is refused
        with pytest.raises(DatasetMissing, match=r"CIFAR-10: fetching http://127\.0\.0\.1") as e:
            load_cifar(tmp_path / "data", "cifar10")
        assert "nothing was kept" in str(e.value) and len(str(e.value).splitlines()) == 1
        assert not (tmp_path / "data" / "cifar-10-batches-py").exists()
        assert _leftovers(tmp_path / "data") == []

        monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive).hexdigest())
        srv.cut("/cifar-10-python.tar.gz", times=100)  # every GET stops half-way
        with pytest.raises(DatasetMissing, match="fetching"):
            load_cifar(tmp_path / "data", "cifar10")
        assert not (tmp_path / "data" / "cifar-10-batches-py").exists()
        assert _leftovers(tmp_path / "data") == []

        srv.cut("/cifar-10-python.tar.gz", times=0)
        tries = srv.fetched("cifar-10-python.tar.gz")
        a = load_cifar(tmp_path / "data", "cifar10")  # the next run fetches again
        assert srv.fetched("cifar-10-python.tar.gz") > tries
        np.testing.assert_array_equal(a.train_x, train)
        np.testing.assert_array_equal(a.test_y, test_labels)
        assert a.classes[0] == "airplane" and a.source == "CIFAR-10"
        kept = sorted(p.name for p in (tmp_path / "data").iterdir())
        assert kept == [".cifar-10-batches-py.lock", "cifar-10-batches-py"]  # no archive left
        tries = srv.fetched("cifar-10-python.tar.gz")
        load_cifar(tmp_path / "data", "cifar10")  # present now: not fetched again
        assert srv.fetched("cifar-10-python.tar.gz") == tries


def test_cifar_with_download_off_or_offline_is_one_line(tmp_path, monkeypatch):
    from trainables.data.cifar import load_cifar

    with pytest.raises(DatasetMissing, match=r"not fetched; fetch https://") as e:
        load_cifar(tmp_path, "cifar10", download=False)
    assert "data.download" not in str(e.value)  # an option the user may never have set
    # the suite is offline (conftest): nothing is attempted
    with pytest.raises(DatasetMissing, match=r"not fetched \(offline") as e:
        load_cifar(tmp_path, "cifar100")
    assert "cifar-100-python.tar.gz" in str(e.value) and str(tmp_path) in str(e.value)


# --------------------------------------------------------------------------- ModelNet10 (PyG)


def _modelnet_zip(tree: Path) -> bytes:
    """The official archive's layout: everything under ``ModelNet10/``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted((tree / "raw").rglob("*")):
            if path.is_file():
                z.write(path, "ModelNet10/" + path.relative_to(tree / "raw").as_posix())
    return buf.getvalue()


def test_modelnet10_is_fetched_through_pyg_and_equals_the_local_tree(
    tmp_path, monkeypatch, make_modelnet_tree
):
    from trainables.data.modelnet import load_modelnet10

    local = make_modelnet_tree(tmp_path / "local")
    archive = _modelnet_zip(local)
    root = tmp_path / "fetched"
    with LoopbackServer() as srv:
        srv.add_file("/projects/2014/3DShapeNets/ModelNet10.zip", archive)
        _online(monkeypatch, srv)
        srv.cut("/ModelNet10.zip", times=100)
        with pytest.raises(DatasetMissing, match=r"ModelNet10: fetching .* failed") as e:
            load_modelnet10(root, num_points=16, seed=0)
        assert len(str(e.value).splitlines()) == 1
        assert not (root / "raw").exists() and _leftovers(root) == []

        srv.cut("/ModelNet10.zip", times=0)
        tries = srv.fetched("ModelNet10.zip")
        got = load_modelnet10(root, num_points=16, seed=0)  # the next run fetches again
        assert srv.fetched("ModelNet10.zip") > tries
    want = load_modelnet10(local, num_points=16, seed=0, download=False)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(got, key), getattr(want, key))
    assert got.classes == want.classes
    assert sorted(p.name for p in root.iterdir()) == [".raw.lock", "processed", "raw"]


# --------------------------------------------------------------------------- ImageNet weights


def test_pretrained_weights_are_fetched_through_torch_hub_which_checks_their_hash(
    tmp_path, monkeypatch
):
    from trainables.data import PretrainedWeightsMissing
    from trainables.models.resnet_tv import pretrained_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PretrainedWeightsMissing, match=r"resnet50 weights not found .* offline"):
        pretrained_weights("resnet50")  # the suite is offline
    with LoopbackServer() as srv:
        srv.add_file("/models/resnet50-0676ba61.pth", b"not the published weights")
        _online(monkeypatch, srv)
        with pytest.raises(PretrainedWeightsMissing, match=r"fetching .* failed") as e:
            pretrained_weights("resnet50")
        assert srv.fetched("/models/resnet50-0676ba61.pth") == 1  # torchvision's file name
    assert "nothing was kept" in str(e.value)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert not folder.exists() or list(folder.iterdir()) == []  # the hash refused it


# --------------------------------------------------------------------------- Hugging Face


_LOAD = """
import json, sys
from search_spaces import resolve
from trainables.text import _load, encoder_name
from trainables.models.bert_fcn import load_pretrained
cfg = resolve(sys.argv[1], smoke=True)
pool, test = _load(cfg.data)
tok = load_pretrained(encoder_name(cfg), "tokenizer")
model = load_pretrained(encoder_name(cfg), "model")
print(json.dumps({"pool": len(pool), "test": len(test), "first": pool.texts[0],
                  "labels": pool.labels[:6].tolist(), "test_first": test.texts[0],
                  "hidden": model.config.hidden_size, "ids": tok("hello world")["input_ids"]}))
"""


def _load_cmd(source: str) -> str:
    return _LOAD.replace("sys.argv[1]", repr(source))


def _hub(srv: LoopbackServer) -> None:
    srv.add_repo("dataset", "SetFit/sst5", sst5_files(40, 4))
    srv.add_repo("dataset", "nyu-mll/glue", glue_sst2_files(60))
    srv.add_repo("model", "bert-base-uncased", tiny_bert_files())


def test_sst_and_the_encoder_come_through_the_hub_then_from_its_cache_offline(tmp_path):
    with LoopbackServer() as srv:
        _hub(srv)
        res = _python(_load_cmd("text_sst5"), _env(srv, tmp_path))
        assert res.returncode == 0, res.stderr[-3000:]
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert got["pool"] == 200 and got["test"] == 20
        assert got["first"] == "train sentence number 0 ." and got["labels"] == [0, 1, 2, 3, 4, 0]
        assert got["test_first"] == "test sentence number 0 ."
        assert got["hidden"] == 16 and got["ids"] == [101, 7592, 2088, 102]
        assert srv.fetched("/datasets/SetFit/sst5/resolve/") >= 2  # train and test files
        assert srv.fetched("/bert-base-uncased/resolve/") >= 2  # weights and tokenizer

        res = _python(_load_cmd("text_sst2"), _env(srv, tmp_path))
        assert res.returncode == 0, res.stderr[-3000:]
        sst2 = json.loads(res.stdout.strip().splitlines()[-1])
        # GLUE's validation split is the test set; the sentences come from its "sentence" column
        assert sst2["pool"] == 120 and sst2["test"] == 120
        assert sst2["first"] == "train review 0" and sst2["test_first"] == "validation review 0"

        before = len(srv.requests)
        res = _python(_load_cmd("text_sst5"), _env(srv, tmp_path, offline=True))
        assert res.returncode == 0, res.stderr[-3000:]
        assert json.loads(res.stdout.strip().splitlines()[-1]) == got
        assert len(srv.requests) == before  # offline: the server was not asked anything


def test_an_interrupted_hub_download_is_not_kept_and_the_next_run_fetches_again(tmp_path):
    with LoopbackServer() as srv:
        _hub(srv)
        srv.cut("/train.jsonl", times=1000)  # every try of these files stops half-way
        srv.cut("/model.safetensors", times=1000)
        res = _python(_load_cmd("text_sst5"), _env(srv, tmp_path))
        assert res.returncode != 0
        assert "DatasetMissing: SST-5: fetching SetFit/sst5 from" in _last_line(res)
        tries = srv.fetched("/train.jsonl")
        assert tries >= 1

        srv.cut("/train.jsonl", times=0)  # the data comes through, the weights do not
        res = _python(_load_cmd("text_sst5"), _env(srv, tmp_path))
        assert res.returncode != 0
        line = _last_line(res)
        assert "PretrainedWeightsMissing: encoder 'bert-base-uncased': fetching from" in line
        assert srv.fetched("/train.jsonl") > tries
        weight_tries = srv.fetched("/model.safetensors")
        assert weight_tries >= 1

        srv.cut("/model.safetensors", times=0)
        res = _python(_load_cmd("text_sst5"), _env(srv, tmp_path))
        assert res.returncode == 0, res.stderr[-3000:]
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert got["pool"] == 200 and got["hidden"] == 16  # all rows, the whole checkpoint
        assert srv.fetched("/model.safetensors") > weight_tries


# --------------------------------------------------------------------------- the commands


@pytest.fixture
def sst5_dir(tmp_path) -> Path:
    """SST-5 as local JSON lines (the encoder is then the only thing to fetch)."""
    d = tmp_path / "sst5"
    d.mkdir()
    for name, blob in sst5_files(40, 4).items():
        if name.endswith(".jsonl"):
            (d / name).write_bytes(blob)
    return d


def _offline_cases(tmp_path: Path, sst5_dir: Path) -> list[tuple[list[str], str]]:
    empty = str(tmp_path / "empty")
    return [
        (["text_sst5"], "SST-5 not found under data/sst5 nor in the Hugging Face datasets cache"),
        (["text_sst2"], "SST-2 not found under data/SST-2 nor in the Hugging Face datasets"),
        (
            ["text_sst5", "--set", f"data.root={sst5_dir}"],
            "encoder 'bert-base-uncased' is not in the Hugging Face cache",
        ),
        (
            ["image_cifar10_lt", "--set", "data.source=cifar", "--set", f"data.root={empty}"],
            "CIFAR-10 not found under",
        ),
        (
            ["pointcloud_modelnet10", "--set", f"data.root={empty}"],
            "ModelNet10 not found under",
        ),
        (["image_imagenet_lt", "--set", f"data.root={empty}"], "ImageNet-LT"),
    ]


def test_offline_every_source_stops_in_one_line_with_exit_2(tmp_path, sst5_dir, command):
    for args, message in _offline_cases(tmp_path, sst5_dir):
        res = command(
            "run", *args, "--smoke", "--offline", env=_env(None, tmp_path / "home"), timeout=120
        )
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        assert res.returncode == 2, (args, res.stderr[-2000:])
        assert len(lines) == 1 and message in lines[0], (args, lines)
        assert "offline" in lines[0] or "ImageNet-LT" in message, lines
        assert "--set " in lines[0], lines  # how to point at a local copy


def test_an_unreachable_host_stops_in_one_line_without_offline(
    tmp_path, sst5_dir, free_port, command
):
    url = f"http://127.0.0.1:{free_port}"  # nothing listens: connection refused
    for args, _ in _offline_cases(tmp_path, sst5_dir)[:5]:
        res = command("run", *args, "--smoke", env=_env(None, tmp_path / "h", url=url))
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        assert res.returncode == 2, (args, res.stderr[-2000:])
        assert len(lines) == 1 and f"cannot reach 127.0.0.1:{free_port}" in lines[0], lines


def test_run_text_sst5_fetches_on_first_use_then_runs_the_same_offline(tmp_path, command):
    """``orchestrator.run text_sst5`` as typed on a connected machine (the hub on 127.0.0.1):
    SST-5 through ``datasets``, the encoder through the hub, a whole smoke trial; then the same
    command with ``--offline`` from the caches gives the same numbers and asks the server
    nothing."""
    with LoopbackServer() as srv:
        _hub(srv)
        res = command("run", "text_sst5", "--smoke", "--quiet", env=_env(srv, tmp_path))
        assert res.returncode == 0, res.stderr[-3000:]
        first = json.loads(res.stdout)
        assert srv.fetched("/datasets/SetFit/sst5/resolve/") >= 2
        before = len(srv.requests)
        res = command(
            "run", "text_sst5", "--smoke", "--quiet", "--offline", env=_env(srv, tmp_path)
        )
        assert res.returncode == 0, res.stderr[-3000:]
        again = json.loads(res.stdout)
        assert len(srv.requests) == before
    first.pop("wall_s")
    again.pop("wall_s")
    assert again == first
    # the smoke split of the served SST-5: 24 per class, 6 for the minority class 1
    assert first["data_source"] == "SST-5" and first["train_counts"] == [24, 6, 24, 24, 24]


_IN_STORAGE = """
import argparse, hashlib, json, os, sys
from orchestrator import cli
cli.apply_fetch_settings(argparse.Namespace(storage=STORAGE, cache_in_storage=True, offline=False))
from torchvision.datasets import CIFAR10
CIFAR10.tgz_md5 = MD5  # the fixture is not the real archive
from search_spaces import resolve
from trainables import image
cifar = image._load(resolve("image_cifar10_lt", smoke=True, overrides=["data.source=cifar"]).data)
print(json.dumps({"cifar": int(cifar.train_x.shape[0]), "env": {v: os.environ[v] for v in VARS}}))
"""


def test_cache_in_storage_puts_every_fetch_under_the_storage(tmp_path):
    """``--cache-in-storage``: CIFAR (by URL) under ``<storage>/cache/data``, SST-5 and the
    encoder in the Hugging Face caches under ``<storage>/cache/huggingface``; nothing in the
    caches the environment named before; a storage that is not a path is refused."""
    from trainables.data.fetch import CACHE_VARS

    storage, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    archive, train, _ = _cifar10_archive()
    code = (
        _IN_STORAGE.replace("STORAGE", repr(str(storage)))
        .replace("MD5", repr(hashlib.md5(archive).hexdigest()))
        .replace("VARS", repr(CACHE_VARS))
    )
    sst = _LOAD.replace(
        "import json, sys\n",
        "import argparse, json, sys\nfrom orchestrator import cli\n"
        "cli.apply_fetch_settings("
        f"argparse.Namespace(storage={str(storage)!r}, cache_in_storage=True))\n",
    ).replace("sys.argv[1]", repr("text_sst5"))
    with LoopbackServer() as srv:
        srv.add_file("/~kriz/cifar-10-python.tar.gz", archive)
        _hub(srv)
        res = _python(code, _env(srv, elsewhere))
        assert res.returncode == 0, res.stderr[-3000:]
        got = json.loads(res.stdout.strip().splitlines()[-1])
        res = _python(sst, _env(srv, elsewhere))
        assert res.returncode == 0, res.stderr[-3000:]
        assert json.loads(res.stdout.strip().splitlines()[-1])["pool"] == 200
    cache = storage.resolve() / "cache"
    assert got["cifar"] == len(train)
    assert got["env"] == {
        "OT_DATA_HOME": str(cache / "data"),
        "HF_HOME": str(cache / "huggingface"),
        "TORCH_HOME": str(cache / "torch"),
    }
    assert (cache / "data" / "cifar10" / "cifar-10-batches-py" / "data_batch_1").is_file()
    hub = cache / "huggingface" / "hub"
    assert any(hub.glob("models--bert-base-uncased/snapshots/*/model.safetensors"))
    assert any(hub.glob("datasets--SetFit--sst5/snapshots/*/*"))
    assert not elsewhere.exists()  # the environment's own HF_HOME / TORCH_HOME: untouched

    from orchestrator import cli

    with pytest.raises(cli.CommandError, match="--cache-in-storage needs a storage path"):
        remote = argparse.Namespace(storage="s3://bucket/runs", cache_in_storage=True)
        cli.apply_fetch_settings(remote)
