"""CIFAR-10/100 as raw arrays, from the original pickles or from the offline JPEG q75 copy.

Only raw uint8 HWC images and int64 labels come out: the long-tail construction and all
transforms live elsewhere, so every experiment starts from the same untouched arrays.

The pickles are read here rather than through ``torchvision.datasets.CIFAR10`` because torchvision
insists on the md5 of every batch file, which rules out small test fixtures in the real format;
torchvision fetches a missing dataset (its URL and its md5 of the archive, :func:`fetch_cifar`).
The reader refuses any pickle that references more than numpy's array reconstruction, since a
data directory is outside input.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainables.data import DatasetMissing

__all__ = [
    "CIFAR_NAMES",
    "JPEG_SOURCE",
    "ImageArrays",
    "check_cifar",
    "check_cifar10_jpeg",
    "fetch_cifar",
    "load_cifar",
    "load_cifar10_jpeg",
]

JPEG_SOURCE = "CIFAR-10 (JPEG q75 copy)"

_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
_JPEG_HINT = (
    "it is a JPEG (quality 75) re-encoding of CIFAR-10 in one .npz file, looked up by default at "
    "../shared/data/cifar10-jpeg/cifar10_jpeg_q75.npz beside the checkout; point "
    "--set data.root=PATH at a copy, or use --set data.source=cifar for the original CIFAR-10"
)


@dataclass(frozen=True)
class _CifarLayout:
    """Where one CIFAR variant keeps its files and which keys hold labels and class names."""

    source: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    url: str


_LAYOUTS: dict[str, _CifarLayout] = {
    "cifar10": _CifarLayout(
        source="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        url=_CIFAR10_URL,
    ),
    "cifar100": _CifarLayout(
        source="CIFAR-100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        url=_CIFAR100_URL,
    ),
}

CIFAR_NAMES = tuple(_LAYOUTS)


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """A train/test pair of uint8 HWC images with int64 labels; ``source`` goes into reports."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        """Number of classes, from the class names (labels may not cover all of them)."""
        return len(self.classes)


# --------------------------------------------------------------------------- CIFAR pickles

# The real batch files (Python 2 pickles) and fixtures written by numpy 1.x or 2.x reference only
# these callables; anything else in a "batch file" is refused instead of being executed.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else executable."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"CIFAR pickle references {module}.{name}; refused")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle; keys come back as ``str`` whether they were py2 str or py3 bytes."""
    with path.open("rb") as fh:
        # latin1, like torchvision: py2 str keys and names decode to str, numpy buffers stay intact
        obj = _ArrayOnlyUnpickler(fh, encoding="latin1").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_batches(folder: Path, files: tuple[str, ...], label_key: str) -> tuple[np.ndarray, ...]:
    """Concatenate batch files into uint8 [N, 32, 32, 3] (HWC) and int64 [N]."""
    xs, ys = [], []
    for name in files:
        path = folder / name
        entry = _read_pickle(path)
        if "data" not in entry or label_key not in entry:
            raise ValueError(f"{path}: missing key 'data' or {label_key!r}; keys={sorted(entry)}")
        data = np.asarray(entry["data"])
        labels = np.asarray(entry[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: 'data' is {data.dtype} {data.shape}, want uint8 [N, 3072]")
        if labels.shape != (data.shape[0],):
            raise ValueError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
        # rows are channel-planar (1024 R, 1024 G, 1024 B, each row-major): CHW -> HWC
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def _torchvision_class(key: str):
    from torchvision import datasets

    return datasets.CIFAR10 if key == "cifar10" else datasets.CIFAR100


def _absent(layout: _CifarLayout, root: Path) -> str | None:
    """What is missing of ``layout`` under ``root`` (a path to name), or None."""
    folder = root / layout.folder
    needed = (*layout.train_files, *layout.test_files, layout.meta_file)
    missing = [f for f in needed if not (folder / f).is_file()]
    if not missing:
        return None
    return str(folder if len(missing) == len(needed) else folder / missing[0])


def fetch_cifar(root: str | Path, name: str) -> None:
    """Fetch CIFAR-10/100 through torchvision (its URL, or ``OT_DATA_MIRROR``'s host; its md5
    of the archive) into ``root``: downloaded and extracted in a temporary folder, checked, then
    renamed into place. Raises :class:`DatasetMissing` in one line when that cannot be done."""
    from torchvision.datasets.utils import download_and_extract_archive

    from .fetch import first_line, mirrored, staged, unreachable

    key = name.lower().replace("-", "")
    layout = _LAYOUTS[key]
    root = Path(root).expanduser()
    target = root / layout.folder
    cls = _torchvision_class(key)
    url = mirrored(cls.url)
    if target.exists():
        raise DatasetMissing(
            f"{layout.source}: {target} exists but is incomplete ({_absent(layout, root)} is "
            "missing); remove it to fetch again, or --set data.root=DIR"
        )
    why = unreachable(url)
    if why:
        raise DatasetMissing(
            f"{layout.source} not found under {target} and {why}; fetch {cls.url} and extract "
            f"it into {root}, or --set data.root=DIR (--offline skips fetching)"
        )
    with staged(target) as tmp:
        if _absent(layout, root) is None:  # fetched by another process while this one waited
            return
        try:
            download_and_extract_archive(url, str(tmp), filename=cls.filename, md5=cls.tgz_md5)
            absent = _absent(layout, tmp)
            if absent is not None:
                raise RuntimeError(f"the archive has no {Path(absent).relative_to(tmp)}")
        except Exception as err:
            raise DatasetMissing(
                f"{layout.source}: fetching {url} failed ({first_line(err)}); nothing was kept, "
                "the next run fetches again"
            ) from None
        os.replace(tmp / layout.folder, target)


def check_cifar(root: str | Path, name: str, *, fetch: bool = False) -> None:
    """Raise :class:`DatasetMissing` (one line: what, where, how to fetch it) unless the CIFAR
    pickles are under ``root``; reads nothing else. With ``fetch``, a missing dataset is
    fetched instead (:func:`fetch_cifar`) unless the process is offline."""
    from .fetch import is_offline

    key = name.lower().replace("-", "")
    if key not in _LAYOUTS:
        raise ValueError(f"unknown CIFAR name {name!r}; expected one of {CIFAR_NAMES}")
    layout = _LAYOUTS[key]
    root = Path(root).expanduser()
    what = _absent(layout, root)
    if what is None:
        return
    if fetch and not is_offline():
        fetch_cifar(root, key)
        return
    # not fetching is the caller's choice (data.download=false, a dry run): no reason guessed
    why = " (offline: --offline or HF_HUB_OFFLINE)" if fetch else ""
    tarball = layout.url.rsplit("/", 1)[-1]
    raise DatasetMissing(
        f"{layout.source} not found under {what} and not fetched{why}; fetch {layout.url} "
        f"and extract {tarball} into {root}, or --set data.root=DIR"
    )


def check_cifar10_jpeg(path: str | Path) -> None:
    """Raise :class:`DatasetMissing` unless the JPEG copy's archive is at ``path``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetMissing(f"{JPEG_SOURCE} archive not found at {path}; {_JPEG_HINT}")


def load_cifar(root: str | Path, name: str, *, download: bool = True) -> ImageArrays:
    """Load CIFAR-10 or CIFAR-100 (``name`` "cifar10"/"cifar100") from ``root`` as raw arrays.

    ``root`` is the folder that holds ``cifar-10-batches-py/`` resp. ``cifar-100-python/``.
    Missing files are fetched (:func:`fetch_cifar`) unless ``download`` is off or the process
    is offline; then they raise :class:`DatasetMissing`.
    """
    key = name.lower().replace("-", "")
    root = Path(root).expanduser()
    check_cifar(root, key, fetch=download)
    layout = _LAYOUTS[key]
    folder = root / layout.folder

    train_x, train_y = _read_batches(folder, layout.train_files, layout.label_key)
    test_x, test_y = _read_batches(folder, layout.test_files, layout.label_key)
    meta = _read_pickle(folder / layout.meta_file)
    if layout.names_key not in meta:
        raise ValueError(f"{folder / layout.meta_file}: no {layout.names_key!r} entry")
    classes = [_as_str(c) for c in meta[layout.names_key]]
    if len(classes) != layout.num_classes:
        raise ValueError(
            f"{folder / layout.meta_file}: {len(classes)} class names, want {layout.num_classes}"
        )
    for split, y in (("train", train_y), ("test", test_y)):
        if y.size and (y.min() < 0 or y.max() >= len(classes)):
            raise ValueError(f"{layout.source} {split} labels outside 0..{len(classes) - 1}")
    return ImageArrays(train_x, train_y, test_x, test_y, classes, layout.source)


# --------------------------------------------------------------------------- JPEG q75 copy


def _first_k_per_class(labels: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the first ``k`` images of every class, in file order (deterministic, no seed)."""
    if k is None:
        return np.arange(labels.shape[0])
    if k < 0:
        raise ValueError(f"limit_per_class must be >= 0, got {k}")
    keep = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:k]] = True
    return np.flatnonzero(keep)


def _decode_torchvision(chunks: list[bytes]) -> list[np.ndarray] | None:
    """Batch-decode with torchvision (about 3x faster than Pillow); None where it is unavailable.

    torchvision 0.29 deprecated its image codecs in favour of TorchCodec; the warning is silenced
    here because the Pillow path below takes over once they are gone.
    """
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    tensors = [torch.frombuffer(bytearray(c), dtype=torch.uint8) for c in chunks]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        images = decode_jpeg(tensors, mode=ImageReadMode.RGB)  # a list of [3, H, W] uint8
    return [im.permute(1, 2, 0).numpy() for im in images]


def _decode_pillow(chunks: list[bytes]) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for c in chunks:
        with Image.open(io.BytesIO(c)) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


def _decode_split(
    blob: np.ndarray, offsets: np.ndarray, index: np.ndarray, where: str, backend: str = "auto"
) -> np.ndarray:
    """Decode the selected JPEGs of one split to uint8 [n, H, W, 3] (``backend`` for tests)."""
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != blob.shape[0]:
        raise ValueError(f"{where}: offsets do not span the JPEG byte array")
    if np.any(np.diff(offsets) <= 0):
        raise ValueError(f"{where}: offsets are not strictly increasing")
    if index.size == 0:
        return np.zeros((0, 32, 32, 3), dtype=np.uint8)
    raw = blob.tobytes()
    chunks = [raw[offsets[i] : offsets[i + 1]] for i in index]
    images = _decode_torchvision(chunks) if backend in ("auto", "torchvision") else None
    if images is None:
        if backend == "torchvision":
            raise RuntimeError("torchvision.io.decode_jpeg is not available")
        images = _decode_pillow(chunks)
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{where}: JPEGs of different sizes {sorted(shapes)[:3]}")
    return np.stack(images)


def load_cifar10_jpeg(path: str | Path, *, limit_per_class: int | None = None) -> ImageArrays:
    """Load the offline CIFAR-10 JPEG q75 archive (``cifar10_jpeg_q75.npz``) as raw arrays.

    ``limit_per_class`` keeps the first k train and first k test images of every class, for small
    CI runs. Results on this copy must be reported as "CIFAR-10 (JPEG q75 copy)".
    """
    path = Path(path).expanduser()
    check_cifar10_jpeg(path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    needed = [f"{s}_{a}" for s in ("train", "test") for a in ("jpeg", "offsets", "labels")]
    absent = [k for k in (*needed, "classes") if k not in arrays]
    if absent:
        raise ValueError(f"{path}: arrays {absent} missing; found {sorted(arrays)}")
    classes = [str(c) for c in arrays["classes"]]

    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        where = f"{path} ({split})"
        labels = arrays[f"{split}_labels"].astype(np.int64)
        offsets = arrays[f"{split}_offsets"].astype(np.int64)
        if offsets.shape != (labels.shape[0] + 1,):
            raise ValueError(f"{where}: {offsets.shape[0]} offsets for {labels.shape[0]} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"{where}: labels outside 0..{len(classes) - 1}")
        index = _first_k_per_class(labels, limit_per_class)
        out[f"{split}_x"] = _decode_split(arrays[f"{split}_jpeg"], offsets, index, where)
        out[f"{split}_y"] = labels[index]
    return ImageArrays(
        out["train_x"], out["train_y"], out["test_x"], out["test_y"], classes, JPEG_SOURCE
    )
