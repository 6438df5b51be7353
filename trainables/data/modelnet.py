"""ModelNet10 through torch-geometric's ``ModelNet`` dataset: OFF meshes sampled to point clouds.

Expected layout (PyG's): ``<root>/raw/<class>/{train,test}/<class>_NNNN.off`` for the ten
classes, i.e. the ``ModelNet10`` folder of the official archive renamed to ``raw``. PyG writes
its processed meshes to ``<root>/processed`` on first use. A missing tree is fetched by PyG's own
``ModelNet`` download (its URL, or ``OT_DATA_MIRROR``'s host) into a temporary folder, then moved
into place (:func:`fetch_modelnet10`); offline it raises :class:`DatasetMissing` saying what to
fetch and where to put it. PyG has no checksum for this archive: the extracted tree is checked
for the ten classes' train and test folders instead.

Classes are relabelled by training-set size, largest first, so that the long-tail construction
(class 0 = head) keeps as many meshes as each class has. Meshes are put in a content order
(size, then coordinates) that does not depend on the file system's listing order, and every
mesh is sampled to ``num_points`` points (area-weighted, PyG's ``SamplePoints``) under a
seeded generator, then normalised (``NormalizeScale``: centred, largest |coordinate| 1).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.data import DatasetMissing

__all__ = [
    "MODELNET10_CLASSES",
    "MODELNET10_URL",
    "PointArrays",
    "check_tree",
    "fetch_modelnet10",
    "load_modelnet10",
]

MODELNET10_URL = "http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip"
MODELNET10_CLASSES = (
    "bathtub",
    "bed",
    "chair",
    "desk",
    "dresser",
    "monitor",
    "night_stand",
    "sofa",
    "table",
    "toilet",
)


@dataclass(frozen=True, eq=False)
class PointArrays:
    """Clouds ``[N, P, 3]`` float32 with int64 labels; ``classes[label]`` names a label."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    source: str


def _missing_classes(root: Path) -> list[str]:
    raw = root / "raw"
    return [
        c
        for c in MODELNET10_CLASSES
        if not (raw / c / "train").is_dir() or not (raw / c / "test").is_dir()
    ]


def check_tree(root: Path, *, fetch: bool = False) -> None:
    """Raise :class:`DatasetMissing` unless ``root/raw`` holds ModelNet10; with ``fetch`` a
    missing tree is fetched instead (:func:`fetch_modelnet10`) unless the process is offline."""
    from .fetch import is_offline

    missing = _missing_classes(root)
    if not missing:
        return
    raw = root / "raw"
    hint = ""
    if (root / "ModelNet10").is_dir():
        hint = f" (found {root / 'ModelNet10'}: rename it to {raw})"
    elif fetch and not raw.exists() and not is_offline():
        fetch_modelnet10(root)
        return
    why = (
        ""
        if hint
        else " and not fetched"  # not fetching: the caller's choice (data.download, a dry run)
        + (" (offline: --offline or HF_HUB_OFFLINE)" if fetch else "")
    )
    raise DatasetMissing(
        f"ModelNet10 not found under {raw}{hint}{why}: download {MODELNET10_URL}, unzip it and "
        f"move its ModelNet10 folder to {raw}, so that {raw}/chair/train/chair_0001.off exists "
        f"(missing: {', '.join(missing)}), or --set data.root=DIR for a copy elsewhere"
    )


def fetch_modelnet10(root: str | Path) -> None:
    """Let torch-geometric's ``ModelNet`` download, extract and process ModelNet10 in a
    temporary folder beside ``root/raw``; move ``raw`` and ``processed`` into place once all ten
    classes are there. Raises :class:`DatasetMissing` in one line when that cannot be done."""
    with warnings.catch_warnings():  # PyG's import warns that torch.jit.script is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        from torch_geometric.datasets import ModelNet

    from .fetch import first_line, mirrored, staged, unreachable

    root = Path(root)
    url = mirrored(ModelNet.urls["10"])
    why = unreachable(url)
    if why:
        raise DatasetMissing(
            f"ModelNet10 not found under {root / 'raw'} and {why}; download {MODELNET10_URL}, "
            f"unzip it and move its ModelNet10 folder to {root / 'raw'}, or --set data.root=DIR "
            "(--offline skips fetching)"
        )
    mirror = type("ModelNet", (ModelNet,), {"urls": {**ModelNet.urls, "10": url}})
    with staged(root / "raw") as tmp:
        if not _missing_classes(root):  # fetched by another process while this one waited
            return
        try:
            mirror(str(tmp), name="10", train=True)
            missing = _missing_classes(tmp)
            if missing:
                raise RuntimeError(f"the archive has no {', '.join(missing)}")
        except Exception as err:
            raise DatasetMissing(
                f"ModelNet10: fetching {url} failed ({first_line(err)}); nothing was kept, the "
                "next run fetches again"
            ) from None
        if (root / "processed").exists():
            shutil.rmtree(root / "processed")  # processed from another raw tree: stale
        os.replace(tmp / "processed", root / "processed")
        os.replace(tmp / "raw", root / "raw")


def _content_order(meshes: list) -> list[int]:
    """Order by label, then by a digest of the mesh itself: only identical meshes tie, and
    their order does not change the result."""

    def key(i: int) -> tuple:
        m = meshes[i]
        digest = hashlib.sha256(m.pos.numpy().tobytes() + m.face.numpy().tobytes()).hexdigest()
        return int(m.y), digest

    return sorted(range(len(meshes)), key=key)


def _sample(meshes: list, order: list[int], num_points: int, seed: int) -> np.ndarray:
    import torch_geometric.transforms as T

    transform = T.Compose([T.SamplePoints(num_points), T.NormalizeScale()])
    out = np.empty((len(order), num_points, 3), dtype=np.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for row, i in enumerate(order):
            out[row] = transform(meshes[i].clone()).pos.numpy()
    return out


def load_modelnet10(
    root: str | Path, *, num_points: int = 1024, seed: int = 0, download: bool = True
) -> PointArrays:
    """Train and test clouds of ModelNet10, labels ordered by training-set size (largest
    first, ties by name); the point sampling is seeded by ``seed``. A missing tree is fetched
    unless ``download`` is off or the process is offline."""
    root = Path(root)
    check_tree(root, fetch=download)
    from torch_geometric.datasets import ModelNet

    splits = {}
    for name, train in (("train", True), ("test", False)):
        ds = ModelNet(str(root), name="10", train=train)
        meshes = [ds[i] for i in range(len(ds))]
        if not meshes:
            raise DatasetMissing(f"ModelNet10: no {name} meshes under {root / 'raw'}")
        splits[name] = meshes
    # PyG numbers the class folders in sorted order, which is MODELNET10_CLASSES.
    counts = np.bincount([int(m.y) for m in splits["train"]], minlength=10)
    if counts.shape[0] != 10 or (counts == 0).any():
        raise ValueError(f"ModelNet10: every class needs training meshes, got {counts.tolist()}")
    by_size = sorted(range(10), key=lambda c: (-counts[c], MODELNET10_CLASSES[c]))
    relabel = np.empty(10, dtype=np.int64)
    relabel[by_size] = np.arange(10)
    arrays = {}
    for offset, (name, meshes) in enumerate(splits.items()):
        order = _content_order(meshes)
        arrays[f"{name}_x"] = _sample(meshes, order, num_points, seed * 2 + offset)
        arrays[f"{name}_y"] = relabel[np.array([int(meshes[i].y) for i in order])]
    return PointArrays(
        **arrays, classes=tuple(MODELNET10_CLASSES[c] for c in by_size), source="ModelNet10"
    )
