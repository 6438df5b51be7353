"""Point-cloud data: the ModelNet10 loader on a fixture tree of real OFF files in ModelNet's
folder layout, the missing-data message, the synthetic shapes, and the long-tail counts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from search_spaces import resolve
from trainables.data import DatasetMissing
from trainables.data.longtail import longtail_counts, make_longtail_split
from trainables.data.modelnet import MODELNET10_CLASSES, MODELNET10_URL, load_modelnet10
from trainables.data.shapes import SHAPE_CLASSES, make_shapes
from trainables.point_cloud import build_point_data


def _train_counts(root: Path) -> dict[str, int]:
    """Training meshes per class, counted in the fixture tree itself."""
    return {c: len(list((root / "raw" / c / "train").glob("*.off"))) for c in MODELNET10_CLASSES}


@pytest.fixture(scope="module")
def modelnet_root(tmp_path_factory, make_modelnet_tree) -> Path:
    return make_modelnet_tree(tmp_path_factory.mktemp("modelnet"))


def test_modelnet_loader_reads_the_off_tree(modelnet_root):
    train = _train_counts(modelnet_root)
    assert sorted(train.values()) != [train["bathtub"]] * 10  # the classes differ in size
    a = load_modelnet10(modelnet_root, num_points=64, seed=0)
    assert a.source == "ModelNet10"
    assert a.train_x.shape == (sum(train.values()), 64, 3) and a.train_x.dtype == np.float32
    assert a.test_x.shape == (20, 64, 3)
    # labels ordered by training-set size, largest first (ties by name)
    assert a.classes[:3] == ("chair", "sofa", "monitor") and a.classes[-1] == "bathtub"
    assert np.bincount(a.train_y).tolist() == [train[c] for c in a.classes]
    assert np.bincount(a.test_y).tolist() == [2] * 10
    # NormalizeScale: centred, largest |coordinate| 1
    np.testing.assert_allclose(a.train_x.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.abs(a.train_x).max(axis=(1, 2)), 1, atol=1e-5)


def test_modelnet_sampling_is_seeded_and_independent_of_file_names(
    modelnet_root, tmp_path, make_modelnet_tree
):
    a = load_modelnet10(modelnet_root, num_points=32, seed=0)
    b = load_modelnet10(modelnet_root, num_points=32, seed=0)
    c = load_modelnet10(modelnet_root, num_points=32, seed=1)
    assert np.array_equal(a.train_x, b.train_x) and not np.array_equal(a.train_x, c.train_x)
    other = make_modelnet_tree(tmp_path / "renamed", shuffle_names=True)
    d = load_modelnet10(other, num_points=32, seed=0)
    assert np.array_equal(a.train_x, d.train_x) and np.array_equal(a.train_y, d.train_y)


def test_missing_modelnet_says_what_to_fetch_and_where(tmp_path):
    with pytest.raises(DatasetMissing) as err:
        load_modelnet10(tmp_path, num_points=16)
    msg = str(err.value)
    assert MODELNET10_URL in msg and str(tmp_path / "raw") in msg and "\n" not in msg
    (tmp_path / "ModelNet10" / "chair").mkdir(parents=True)
    with pytest.raises(DatasetMissing, match="rename it to"):
        load_modelnet10(tmp_path, num_points=16)


def test_modelnet_long_tail_is_capped_per_class(modelnet_root):
    cfg = resolve("pointcloud_modelnet10", smoke=True)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(modelnet_root)))
    data = build_point_data(cfg.data, cfg.seed)
    counts = _train_counts(modelnet_root).values()
    pools = sorted((n - 4 for n in counts), reverse=True)  # 2 meta + 2 val per class
    profile = longtail_counts(pools[0], 10, cfg.data.imbalance_factor)
    want = [min(p, q) for p, q in zip(profile, pools, strict=True)]
    assert list(data.train_counts) == want
    assert np.bincount(data.train.y.numpy()).tolist() == want
    assert np.bincount(data.meta.y.numpy()).tolist() == [2] * 10
    assert data.train.x.shape[1:] == (cfg.data.num_points, 3) and data.point_augment


def test_cap_to_pool_hand_computed():
    labels = np.repeat([0, 1, 2], [100, 20, 30])
    split = make_longtail_split(labels, 3, 10.0, meta_per_class=0, cap_to_pool=True)
    # profile from the largest pool: 100, int(100 * 0.1 ** 0.5) = 31, 10; class 1 has 20
    assert split.counts == (100, 20, 10)
    with pytest.raises(ValueError, match="exceeds"):
        make_longtail_split(labels, 3, 10.0, meta_per_class=0, n_max=101, cap_to_pool=True)
    # without the cap the profile is scaled to the smallest pool
    assert make_longtail_split(labels, 3, 10.0, meta_per_class=0).counts == (20, 6, 2)


def test_shapes_are_seeded_normalised_and_distinct():
    x, y = make_shapes(3, 128, 0)
    assert x.shape == (3 * len(SHAPE_CLASSES), 128, 3) and np.bincount(y).tolist() == [3] * 10
    np.testing.assert_allclose(np.abs(x).max(axis=(1, 2)), 1, atol=1e-5)
    np.testing.assert_allclose(x.mean(axis=1), 0, atol=1e-5)
    x2, _ = make_shapes(3, 128, 0)
    x3, _ = make_shapes(3, 128, 1)
    assert np.array_equal(x, x2) and not np.array_equal(x, x3)
    assert not x.flags.writeable  # cached: callers must not change it
    # a sphere's points sit at nearly the same radius; a box's do not
    radii = np.linalg.norm(x, axis=2)
    sphere, box = SHAPE_CLASSES.index("sphere"), SHAPE_CLASSES.index("box")
    spread = lambda c: (radii[y == c].std(axis=1) / radii[y == c].mean(axis=1)).mean()  # noqa: E731
    assert spread(box) > spread(sphere)


def test_shapes_long_tail_counts():
    cfg = resolve("pointcloud_shapes")
    data = build_point_data(
        dataclasses.replace(cfg.data, limit_per_class=40, test_per_class=3, num_points=16), 0
    )
    assert list(data.train_counts) == longtail_counts(40 - 30, 10, 50.0)
    assert np.bincount(data.train.y.numpy(), minlength=10).tolist() == list(data.train_counts)
    assert len(data.val) == 200 and len(data.meta) == 100 and len(data.test) == 30
    assert data.source == "shapes (synthetic, trimesh)"
