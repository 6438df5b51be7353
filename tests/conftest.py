"""Fixtures shared across the test packages (test modules never import each other)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# No test reaches beyond 127.0.0.1: every library's offline switch is on for the suite and the
# commands it starts; only the loopback tests (tests/_loopback.py) turn them off, in a
# subprocess pointed at a server on 127.0.0.1.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.pop("OT_DATA_MIRROR", None)

# training meshes per class in the ModelNet10 fixture: chair the largest, bathtub the smallest
MODELNET_TRAIN_COUNTS = (6, 9, 12, 7, 7, 10, 8, 11, 8, 9)


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (commands run there, as a user would)."""
    return REPO


@pytest.fixture(scope="session")
def cifar10_jpeg() -> Path:
    """The optional CIFAR-10 JPEG q75 archive at its default place (beside the checkout, see
    README "Experiments"); a test that reads it is skipped, saying why, only where it is absent.
    """
    from trainables.image import DEFAULT_CIFAR10_JPEG

    if not DEFAULT_CIFAR10_JPEG.is_file():
        pytest.skip(
            f"needs the optional CIFAR-10 JPEG q75 archive, absent at {DEFAULT_CIFAR10_JPEG} "
            "(README, Experiments: where it comes from and --set data.root=PATH)"
        )
    return DEFAULT_CIFAR10_JPEG


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(module: str, *args: str, env: dict | None = None, timeout: int = 400):
    cmd = [sys.executable, "-m", f"orchestrator.{module}", *args]
    return subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def command() -> Callable[..., subprocess.CompletedProcess]:
    """``command("sweep", *args, env=..., timeout=...)``: ``python -m orchestrator.<module>``
    in a fresh interpreter in the repository root, output captured."""
    return _command


def _modelnet_mesh(c: int, i: int):
    import trimesh.creation as tc

    size = [1.0 + 0.1 * i, 1.0 + 0.05 * c, 0.5 + 0.2 * (i % 3)]
    if c % 3 == 0:
        return tc.box(extents=size)
    if c % 3 == 1:
        return tc.cylinder(radius=0.3 + 0.02 * i, height=1.0 + 0.1 * c, sections=8)
    return tc.cone(radius=0.5 + 0.03 * i, height=1.0 + 0.1 * c, sections=6)


def _make_modelnet_tree(root: Path, *, shuffle_names: bool = False, quirk: bool = True) -> Path:
    from trainables.data.modelnet import MODELNET10_CLASSES

    rng = np.random.default_rng(5)
    counts = dict(zip(MODELNET10_CLASSES, MODELNET_TRAIN_COUNTS, strict=True))
    for c, name in enumerate(MODELNET10_CLASSES):
        for split, count in (("train", counts[name]), ("test", 2)):
            folder = root / "raw" / name / split
            folder.mkdir(parents=True, exist_ok=True)
            numbers = list(range(1, count + 1))
            if shuffle_names:
                numbers = list(rng.permutation(numbers) + 100)
            for i, number in enumerate(numbers):
                text = _modelnet_mesh(c, i + (50 if split == "test" else 0)).export(file_type="off")
                if quirk and c == 0 and i == 0:
                    text = text.replace("OFF\n", "OFF", 1)
                (folder / f"{name}_{number:04d}.off").write_text(text)
    (root / "raw" / "README.txt").write_text("ModelNet10 fixture\n")
    return root


@pytest.fixture(scope="session")
def make_modelnet_tree() -> Callable[..., Path]:
    """``make_modelnet_tree(root, shuffle_names=False, quirk=True)``: ``root/raw/<class>/
    {train,test}/<class>_NNNN.off`` written as the real archive's files are (ASCII OFF; one
    file with the archive's known defect of no newline after ``OFF``), small meshes of three
    shapes; ``MODELNET_TRAIN_COUNTS`` training meshes per class, 2 test meshes."""
    return _make_modelnet_tree
