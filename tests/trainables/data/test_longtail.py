from __future__ import annotations

import numpy as np
import pytest

from trainables.data.longtail import longtail_counts, make_longtail_split

C10 = {
    200: [4990, 2769, 1537, 853, 473, 262, 145, 80, 44, 24],
    100: [4990, 2991, 1793, 1075, 644, 386, 231, 138, 83, 49],
    50: [4990, 3230, 2091, 1354, 877, 567, 367, 238, 154, 99],
    20: [4990, 3577, 2564, 1838, 1317, 944, 677, 485, 348, 249],
}


@pytest.mark.parametrize("imb", sorted(C10))
def test_cifar10_counts_match_released_code(imb):
    labels = np.repeat(np.arange(10), 5000)
    split = make_longtail_split(labels, 10, imb, meta_per_class=10, val_per_class=0)
    assert list(split.counts) == C10[imb]
    assert np.bincount(labels[split.train], minlength=10).tolist() == C10[imb]


@pytest.mark.parametrize(
    "imb,n_train,tail", [(200, 9304, 2), (100, 10626, 4), (50, 12354, 9), (20, 15594, 24)]
)
def test_cifar100_totals_match_released_code(imb, n_train, tail):
    counts = longtail_counts(490, 100, imb)
    assert sum(counts) == n_train and counts[0] == 490 and counts[-1] == tail


def test_splits_disjoint_balanced_and_seeded():
    labels = np.repeat(np.arange(5), 200)
    a = make_longtail_split(labels, 5, 10, meta_per_class=10, val_per_class=15, seed=3)
    b = make_longtail_split(labels, 5, 10, meta_per_class=10, val_per_class=15, seed=3)
    c = make_longtail_split(labels, 5, 10, meta_per_class=10, val_per_class=15, seed=4)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("train", "meta", "val"))
    assert not np.array_equal(a.train, c.train)
    sets = [set(a.train), set(a.meta), set(a.val)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert np.bincount(labels[a.meta]).tolist() == [10] * 5
    assert np.bincount(labels[a.val]).tolist() == [15] * 5
    assert a.counts[0] == 175 and a.counts[-1] == 17  # n_max = 200 - 10 - 15


def test_ldam_protocol_takes_the_tail_from_the_whole_class():
    labels = np.repeat(np.arange(10), 5000)
    split = make_longtail_split(labels, 10, 100, protocol="ldam", meta_per_class=10)
    assert list(split.counts) == longtail_counts(5000, 10, 100)
    assert sum(split.counts) == 12406  # LDAM-DRW's CIFAR-10-LT IF100 size
    assert split.meta_overlaps_train  # the head keeps all 5000: its meta images are train images
    assert np.bincount(labels[split.meta]).tolist() == [10] * 10


def test_too_small_classes_and_bad_factor_raise():
    with pytest.raises(ValueError, match="too few"):
        make_longtail_split(np.repeat(np.arange(3), 12), 3, 2, meta_per_class=10, val_per_class=5)
    with pytest.raises(ValueError, match=">= 1"):
        longtail_counts(10, 3, 0.5)
