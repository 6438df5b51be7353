"""ImageNet-LT and Places-LT: image folders indexed by the OLTR split files.

The long-tailed subsets are defined only by the published split files (``ImageNet_LT_train.txt``
etc., one ``relative/path.jpg label`` per line), so the datasets here read exactly those files
and open images lazily; nothing is resampled or re-labelled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from trainables.data import DatasetMissing

__all__ = [
    "SPLITS",
    "FileListDataset",
    "imagenet_lt_splits",
    "places_lt_splits",
    "read_split_file",
]

SPLITS = ("train", "val", "test")

# split name -> transform, for the *_splits helpers
_Transforms = Mapping[str, Callable[[Image.Image], Any] | None] | None

_OLTR = "https://github.com/zhmiao/OpenLongTailRecognition-OLTR"
_WHERE_TO_GET = {
    "ImageNet-LT": (
        f"split files ImageNet_LT_{{train,val,test}}.txt from the OLTR project ({_OLTR}); "
        "images: ImageNet 2012 (ILSVRC2012) train/val from https://image-net.org"
    ),
    "Places-LT": (
        f"split files Places_LT_{{train,val,test}}.txt from the OLTR project ({_OLTR}); "
        "images: Places365-Standard from http://places2.csail.mit.edu"
    ),
}


def _hint(dataset_name: str) -> str:
    where = _WHERE_TO_GET.get(dataset_name, f"split files and images as described by {_OLTR}")
    return f"{where}; put both in one folder DIR and --set data.root=DIR"


def read_split_file(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Parse a ``relative/path label`` split file into paths and int64 labels.

    Blank lines are skipped; any other line that is not exactly a path and an integer raises
    ``ValueError`` with the file and 1-based line number, so a truncated download cannot pass.
    """
    path = Path(path)
    paths: list[str] = []
    labels: list[int] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 2:
                    raise ValueError(f"{len(fields)} fields")
                label = int(fields[1])
                if label < 0:
                    raise ValueError("negative label")
            except ValueError as err:
                raise ValueError(
                    f"{path}:{lineno}: expected 'relative/path label', got {line.strip()!r} ({err})"
                ) from None
            paths.append(fields[0])
            labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64)


class FileListDataset(Dataset):
    """Images under ``root`` listed by a split file; items are ``(image, label)``.

    The image is an RGB PIL image, passed through ``transform`` when one is given. Only the root,
    the split file and the first listed image are checked up front (cheap, and they catch a wrong
    root); an image missing later raises :class:`DatasetMissing` when it is read.
    """

    def __init__(
        self,
        root: str | Path,
        split_file: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        dataset_name: str,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split_file = Path(split_file).expanduser()
        self.transform = transform
        self.dataset_name = dataset_name
        if not self.root.is_dir():
            self._missing(f"image root {self.root}")
        if not self.split_file.is_file():
            self._missing(f"split file {self.split_file}")
        self.paths, self.labels = read_split_file(self.split_file)
        if self.paths and not self._full_path(0).is_file():
            self._missing(f"image {self._full_path(0)} (first entry of {self.split_file.name})")

    def _missing(self, what: str) -> NoReturn:
        raise DatasetMissing(f"{self.dataset_name} {what} not found; {_hint(self.dataset_name)}")

    def _full_path(self, i: int) -> Path:
        # some copies of the split files carry a leading "/"; they are still relative to root
        return self.root / self.paths[i].lstrip("/")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path = self._full_path(i)
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except FileNotFoundError:
            self._missing(f"image {path} (listed in {self.split_file.name})")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])

    @property
    def num_classes(self) -> int:
        """Largest label + 1; the split files number classes 0..C-1."""
        return int(self.labels.max()) + 1 if self.labels.size else 0


def _splits(
    root: str | Path, split_dir: str | Path, prefix: str, dataset_name: str, transforms: _Transforms
) -> dict[str, FileListDataset]:
    split_dir = Path(split_dir).expanduser()
    if not split_dir.is_dir():
        raise DatasetMissing(
            f"{dataset_name} split folder {split_dir} not found; {_hint(dataset_name)}"
        )
    transforms = transforms or {}
    unknown = set(transforms) - set(SPLITS)
    if unknown:
        raise ValueError(f"transforms for unknown splits {sorted(unknown)}; splits are {SPLITS}")
    return {
        s: FileListDataset(
            root, split_dir / f"{prefix}_{s}.txt", transforms.get(s), dataset_name=dataset_name
        )
        for s in SPLITS
    }


def imagenet_lt_splits(
    root: str | Path, split_dir: str | Path, *, transforms: _Transforms = None
) -> dict[str, FileListDataset]:
    """ImageNet-LT train/val/test from ``split_dir/ImageNet_LT_{split}.txt`` over ``root``.

    ``transforms`` maps split name to its transform (training and evaluation usually differ).
    """
    return _splits(root, split_dir, "ImageNet_LT", "ImageNet-LT", transforms)


def places_lt_splits(
    root: str | Path, split_dir: str | Path, *, transforms: _Transforms = None
) -> dict[str, FileListDataset]:
    """Places-LT train/val/test from ``split_dir/Places_LT_{split}.txt`` over ``root``.

    ``transforms`` maps split name to its transform (training and evaluation usually differ).
    """
    return _splits(root, split_dir, "Places_LT", "Places-LT", transforms)
